"""Hostile clients on the real server: floods of form, requests that never finish, and
replayed tokens and webhooks cost the calls nothing and get nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.doubles.realtime import RealtimeDouble
from tests.doubles.twilio_rest import FakeTwilioRest
from tests.faults.http_client import closed_by_server, flood, unfinished_requests
from tests.fixtures import audio
from tests.servers import RunningServer, serve
from tests.test_outbound import API_TOKEN, stream_of
from tests.test_security import VOICE, close_code_for
from tests.twilio import answer_call, post_webhook
from voicebridge.http_limits import MAX_BODY_BYTES, MAX_FORM_FIELDS
from voicebridge.main import create_app
from voicebridge.server import RequestTimeoutProtocol
from voicebridge.settings import Settings
from voicebridge.simulator import CallerSimulator, new_sid
from voicebridge.telephony.signatures import InvalidToken, StreamTokens

WEBHOOKS = ["/twilio/voice", "/twilio/stream-ended", "/twilio/status", "/twilio/amd"]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SIGNED = {**FORM, "X-Twilio-Signature": "c2lnbmVkIGJ5IG5vYm9keQ=="}  # checked after the form


def red_team_form(megabytes: int = 10) -> Iterator[bytes]:
    """The red team's form: ~240,000 tiny fields per megabyte, in 64 KiB chunks."""
    chunk = b"a=1&" * (16 * 1024)
    for _ in range(megabytes * 16):
        yield chunk


@contextlib.contextmanager
def peak_allocation() -> Iterator[list[int]]:
    """Python memory allocated at the block's peak above what was live before it (the
    server runs in this process, in the test's event loop)."""
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    peak: list[int] = []
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] - start)
        tracemalloc.stop()


async def healthy(server: RunningServer) -> bool:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{server.http_url}/healthz")).status_code == 200


@pytest.mark.parametrize("path", WEBHOOKS)
async def test_a_form_flood_is_refused_within_its_bound_while_a_call_talks(
    path: str, realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    async with serve(create_app(make_settings())) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            greeting = await caller.wait_for_agent_audio(timeout=5)
            with peak_allocation() as held:
                unsigned = await flood(server.port, path, red_team_form(), FORM)
                chunked = await flood(server.port, path, red_team_form(), SIGNED)
                announced = await flood(
                    server.port, path, red_team_form(), {**SIGNED, "Content-Length": "10485760"}
                )
                fields = await flood(server.port, path, [b"a=1&" * (MAX_FORM_FIELDS + 1)], SIGNED)
            assert await healthy(server)
            await caller.wait_until_agent_quiet(timeout=15)
            assert not caller.closed.is_set()
    # The greeting played on, whole, through the floods.
    assert greeting.played_ms >= audio.duration_ms("agent_greeting") - 40
    assert (unsigned.status, chunked.status, announced.status, fields.status) == (
        403,
        413,
        413,
        400,
    )
    for refusal in (unsigned, chunked, announced, fields):
        assert refusal.headers["connection"] == "close"  # the rest is never read
    # What the server held of 4 x 10 MB of hostile form at its peak: about the bound,
    # where the unbounded parse held ~450 MB.
    assert held[0] < 40 * MAX_BODY_BYTES
    assert realtime.connections == 1


async def test_a_post_calls_flood_is_refused(
    realtime: RealtimeDouble, settings_with_rest: Callable[..., Settings]
) -> None:
    settings = settings_with_rest(api_token=API_TOKEN, outbound_allowed_prefixes="+1")
    async with serve(create_app(settings)) as server:
        answer = await flood(
            server.port,
            "/calls",
            red_team_form(),
            {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        )
    assert answer.status == 413


async def test_refusals_are_logged_at_a_bounded_rate(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(create_app(make_settings())) as server, httpx.AsyncClient() as client:
        for _ in range(20):
            response = await client.post(f"{server.http_url}/twilio/voice", data=VOICE)
            assert response.status_code == 403
    lines = [r for r in caplog.records if "rejected a webhook" in r.getMessage()]
    assert 1 <= len(lines) < 20


PARTIAL_BODY = (
    b"POST /twilio/status HTTP/1.1\r\nHost: x\r\nX-Twilio-Signature: c2ln\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 90\r\n\r\nCallSid="
)


class QuickTimeout(RequestTimeoutProtocol):
    REQUEST_TIMEOUT_S = 0.5


async def test_connections_that_never_finish_a_request_are_closed_while_calls_go_on(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(make_settings())
    async with (
        serve(app, http=QuickTimeout) as server,
        unfinished_requests(server.port, 10) as heads,
        unfinished_requests(server.port, 5, b"") as silent,
        unfinished_requests(server.port, 5, PARTIAL_BODY) as bodies,
    ):
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await caller.wait_for_agent_audio(timeout=5)
            async with asyncio.timeout(10):  # a guard, not a target: closed after 0.5 s
                answers = await asyncio.gather(*map(closed_by_server, heads + silent + bodies))
            assert answers == [b""] * 20
            # The call's own connection outlived the timeout: it is a WebSocket now.
            await caller.wait_until_agent_quiet(timeout=15)
            assert not caller.closed.is_set()
            assert await healthy(server)
    assert realtime.connections == 1
    closures = [r for r in caplog.records if "whose request took" in r.getMessage()]
    assert 1 <= len(closures) < 20  # rate-limited
    assert [r for r in caplog.records if r.exc_info] == []


async def test_an_inbound_token_replayed_after_its_call_is_refused(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await caller.wait_for_agent_audio(timeout=5)
            await caller.hang_up()
        transcript = await saved(settings.transcripts_dir, call_sid)
        first = transcript.read_text()
        assert await close_code_for(server, call_sid, parameters) == 1008
    assert realtime.connections == 1
    assert transcript.read_text() == first


async def test_an_outbound_token_works_only_for_the_call_twilio_created(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    settings = settings_with_rest(api_token=API_TOKEN, outbound_allowed_prefixes="+1")
    async with serve(create_app(settings)) as server, httpx.AsyncClient() as client:
        placed = await client.post(
            f"{server.http_url}/calls",
            json={"to": "+15551234567"},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        (create,) = twilio_rest.requests_to("POST", "/Calls.json")
        _, parameters = stream_of(create.form["Twiml"])
        assert await close_code_for(server, new_sid("CA"), parameters) == 1008
        assert realtime.connections == 0
        call_sid = placed.json()["call_sid"]
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as callee:
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            await callee.hang_up()
    assert realtime.connections == 1


async def test_a_replayed_voice_webhook_gets_no_token(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings())) as server:
        first = await post_webhook(server, "/twilio/voice", VOICE)
        replay = await post_webhook(server, "/twilio/voice", VOICE)
    assert "<Stream" in first.text
    assert replay.status_code == 200
    assert "<Hangup" in replay.text and "<Stream" not in replay.text


async def test_a_token_with_a_5000_digit_expiry_is_refused_cleanly(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(create_app(make_settings())) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        parameters["token"] = "9" * 5000 + "." + "0" * 32
        assert await close_code_for(server, call_sid, parameters) == 1008
    assert realtime.connections == 0
    assert "malformed stream token" in caplog.text
    assert [r for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize(("trusted", "logged"), [(None, "203.0.113.9"), ("10.0.0.1", "127.0.0.1")])
async def test_x_forwarded_for_is_believed_only_from_configured_proxies(
    trusted: str | None,
    logged: str,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(**({"forwarded_allow_ips": trusted} if trusted else {}))
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    async with serve(create_app(settings)) as server, httpx.AsyncClient() as client:
        await client.get(f"{server.http_url}/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
    (line,) = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert line.startswith(f"{logged}:")


def test_used_tokens_are_remembered_until_they_expire_in_bounded_memory() -> None:
    tokens = StreamTokens(b"key", ttl_s=60, memory=2)
    issued = [(sid, tokens.issue(sid, now=0)) for sid in ("CA1", "CA2", "CA3")]
    for sid, token in issued[:2]:
        tokens.redeem(token, sid, sid, now=1)
    with pytest.raises(InvalidToken, match="already used"):
        tokens.redeem(issued[0][1], "CA1", "CA1", now=2)
    with pytest.raises(InvalidToken, match="too many streams"):  # full: refuse, never forget
        tokens.redeem(issued[2][1], "CA3", "CA3", now=2)
    with pytest.raises(InvalidToken, match="expired"):  # forgotten only once it cannot work
        tokens.redeem(issued[0][1], "CA1", "CA1", now=62)
    fresh = tokens.issue("CA4", now=62)
    tokens.redeem(fresh, "CA4", "CA4", now=62)


async def saved(directory: Path, call_sid: str) -> Path:
    async with asyncio.timeout(10):
        while not (found := list(directory.rglob(f"{call_sid}.json"))):
            await asyncio.sleep(0.02)
    return found[0]
