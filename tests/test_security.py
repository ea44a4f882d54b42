"""Only Twilio, for calls we answered, can use the line: webhooks are signed, and every
media stream must carry a token bound to its CallSid before any OpenAI session opens."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import PUBLIC_BASE_URL
from tests.doubles.realtime import RealtimeDouble
from tests.servers import RunningServer, serve
from tests.twilio import answer_call, post_webhook, signature
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.simulator import CallerSimulator, new_sid
from voicebridge.telephony.signatures import StreamTokens

VOICE = {"CallSid": "CA1", "From": "+15550001111", "To": "+15550002222", "Direction": "inbound"}


async def test_unsigned_or_forged_webhooks_are_refused(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings())) as server, httpx.AsyncClient() as client:
        unsigned = await client.post(f"{server.http_url}/twilio/voice", data=VOICE)
        forged = await post_webhook(server, "/twilio/voice", VOICE, token="not-our-token")
        tampered = await client.post(
            f"{server.http_url}/twilio/voice",
            data={**VOICE, "From": "+19990000000"},
            headers={"X-Twilio-Signature": signature(f"{PUBLIC_BASE_URL}/twilio/voice", VOICE)},
        )
        action = await client.post(f"{server.http_url}/twilio/stream-ended", data=VOICE)
    assert [r.status_code for r in (unsigned, forged, tampered, action)] == [403] * 4


async def test_signed_webhook_passes_behind_a_proxy_that_rewrites_host(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings())) as server, httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.http_url}/twilio/voice",
            data=VOICE,
            headers={
                "X-Twilio-Signature": signature(f"{PUBLIC_BASE_URL}/twilio/voice", VOICE),
                "Host": "10.0.0.7:8080",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "internal.fly.dev",
            },
        )
        action = await post_webhook(server, "/twilio/stream-ended", VOICE)
    assert response.status_code == 200
    assert "<Stream" in response.text
    assert action.status_code == 200
    assert "<Say>" in action.text and "<Hangup" in action.text


def start_frame(call_sid: str, parameters: dict[str, str]) -> str:
    stream_sid = new_sid("MZ")
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "accountSid": new_sid("AC"),
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": parameters,
            },
        }
    )


async def close_code_for(
    server: RunningServer,
    call_sid: str,
    parameters: dict[str, str],
    headers: dict[str, str] | None = None,
) -> int | None:
    async with connect(server.ws_url, additional_headers=headers) as ws:
        with contextlib.suppress(ConnectionClosed):  # a bad handshake is closed at once
            await ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
            await ws.send(start_frame(call_sid, parameters))
        await ws.wait_closed()
        return ws.close_code


@pytest.mark.parametrize("case", ["forged", "expired", "other_call", "missing", "handshake"])
async def test_streams_without_a_valid_token_are_closed_before_openai_is_called(
    case: str, realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        headers = None
        if case == "forged":
            parameters["token"] = StreamTokens(b"guessed secret").issue(call_sid)
        elif case == "expired":
            tokens = StreamTokens(settings.stream_signing_key(), settings.stream_token_ttl_s)
            parameters["token"] = tokens.issue(call_sid, now=time.time() - 3600)
        elif case == "other_call":
            call_sid = new_sid("CA")  # a token replayed for a different call
        elif case == "missing":
            del parameters["token"]
        else:
            headers = {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}
        code = await close_code_for(server, call_sid, parameters, headers)
    assert code == 1008
    assert realtime.connections == 0


async def test_a_correctly_signed_handshake_is_accepted(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    async with serve(create_app(make_settings(agent_greeting=""))) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        stream_url = f"{PUBLIC_BASE_URL.replace('https', 'wss')}/media-stream"
        headers = {"X-Twilio-Signature": signature(stream_url, {})}
        sim = CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters, extra_headers=headers
        )
        async with sim:
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            await sim.pause(0.1)


async def test_a_second_stream_for_the_same_call_is_refused(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    async with serve(create_app(make_settings(agent_greeting=""))) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(server.ws_url, call_sid=call_sid, custom_parameters=parameters):
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            assert await close_code_for(server, call_sid, parameters) == 1008
        assert realtime.connections == 1


async def test_a_socket_that_never_starts_is_closed(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings())
    app.state.services.start_timeout_s = 0.3
    async with serve(app) as server, connect(server.ws_url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.wait_closed()
        assert ws.close_code == 1008
    assert realtime.connections == 0


async def test_over_the_concurrency_limit_callers_hear_lines_busy(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    async with serve(create_app(make_settings(max_concurrent_calls=1))) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(server.ws_url, call_sid=call_sid, custom_parameters=parameters):
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            busy = await post_webhook(server, "/twilio/voice", {**VOICE, "CallSid": "CA2"})
        assert "busy" in busy.text and "<Hangup" in busy.text and "<Stream" not in busy.text
    assert realtime.connections == 1


async def test_signature_checks_can_be_turned_off_for_local_experiments(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(twilio_validate_signatures=False, twilio_auth_token=None)
    async with serve(create_app(settings)) as server:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{server.http_url}/twilio/voice", data=VOICE)
        assert response.status_code == 200
        async with CallerSimulator(server.ws_url) as sim:
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            await sim.pause(0.1)
    assert "TWILIO_VALIDATE_SIGNATURES=false" in caplog.text
