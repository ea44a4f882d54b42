"""A whole call through the real app in uvicorn: Twilio caller simulator ⇄ bridge ⇄
Realtime double, with real speech audio played in real time."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PUBLIC_BASE_URL, agent_line
from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.servers import RunningServer, serve
from tests.twilio import answer_call, post_webhook
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.simulator import CallerSimulator, new_sid


async def call(server: RunningServer) -> CallerSimulator:
    """A caller simulator for a call the app answered through its voice webhook."""
    call_sid = new_sid("CA")
    parameters = await answer_call(server, call_sid)
    return CallerSimulator(server.ws_url, call_sid=call_sid, custom_parameters=parameters)


def saved_transcripts(settings: Settings) -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text())
        for path in sorted(Path(settings.transcripts_dir).rglob("*.json"))
    ]


async def test_voice_webhook_answers_twiml_that_opens_the_stream(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings())) as server:
        response = await post_webhook(
            server,
            "/twilio/voice",
            {
                "CallSid": "CA123",
                "From": "+15550001111",
                "To": "+15550002222",
                "Direction": "inbound",
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert [child.tag for child in root] == ["Connect"], "nothing may follow </Connect>"
    stream = root.find("Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://voice.example.com/media-stream"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters["from"] == "+15550001111"
    assert parameters["to"] == "+15550002222"
    assert parameters["direction"] == "inbound"
    assert parameters["token"]
    assert connect_action(root) == f"{PUBLIC_BASE_URL}/twilio/stream-ended"


def connect_action(root: ET.Element) -> str | None:
    connect = root.find("Connect")
    return None if connect is None else connect.get("action")


async def test_greeting_then_a_caller_turn_gets_a_reply_and_a_transcript(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.response_latency_s = 0.3
    settings = make_settings()
    async with serve(create_app(settings)) as server:
        async with await call(server) as caller:
            greeting = await caller.wait_for_agent_audio(timeout=5)
            await caller.wait_until_agent_quiet(timeout=15)
            assert greeting.played_ms >= audio.duration_ms("agent_greeting") - 40

            await caller.say(audio.load("caller_book_table"))
            reply = await caller.wait_for_agent_audio(timeout=5)
            await caller.wait_until_agent_quiet(timeout=20)
            assert not reply.interrupted
            assert reply.played_ms >= audio.duration_ms("agent_long_reply") - 40
            await caller.hang_up()

        session = realtime.sessions[0]
        await realtime.wait_for(lambda: session.closed, timeout=2)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{server.http_url}/metrics")).text
        assert session.model == "gpt-realtime"
        assert session.headers["authorization"] == "Bearer sk-test-key"
        assert "openai-beta" not in session.headers
        assert caller.violations == []

    (record,) = saved_transcripts(settings)
    assert record["call_sid"] == caller.call_sid
    assert record["stream_sid"] == caller.stream_sid
    assert (record["from"], record["to"], record["direction"]) == (
        "+15550001111",
        "+15550002222",
        "inbound",
    )
    assert record["started_at"].endswith("Z") and record["ended_at"] >= record["started_at"]
    assert [(t["role"], t["text"]) for t in record["turns"]] == [
        ("agent", audio.text("agent_greeting")),
        ("caller", audio.text("caller_book_table")),
        ("agent", audio.text("agent_long_reply")),
    ]
    starts = [t["start_ms"] for t in record["turns"]]
    assert starts == sorted(starts)
    reply = record["turns"][2]
    assert 300 <= reply["latency_ms"] < 2000  # the double thinks for 300 ms
    assert 0 < reply["bridge_ms"] < 50
    assert record["latency"] == {
        "turns": 1,
        "p50_ms": reply["latency_ms"],
        "max_ms": reply["latency_ms"],
    }
    assert record["usage"]["output_tokens"] > 0
    assert record["cost"]["model"] == "gpt-realtime"
    assert record["cost"]["estimated_usd"] > 0
    assert record["outcome"] == "completed"
    assert 'voicebridge_calls_total{outcome="completed"} 1.0' in metrics
    assert "voicebridge_turn_latency_seconds_count 1.0" in metrics
    assert 'voicebridge_audio_frames_total{direction="in"}' in metrics
    assert "voicebridge_estimated_cost_usd_total" in metrics


# Our server hands the audio to the call directly; under a stock ASGI server (here
# uvicorn's own WebSocket protocol) the same call runs over plain ASGI.
SERVERS = pytest.mark.parametrize(
    "server_options", [{}, {"ws": "websockets-sansio"}], ids=["voicebridge", "stock-uvicorn"]
)


@SERVERS
async def test_barge_in_clears_playback_and_truncates_to_what_was_heard(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    server_options: dict[str, Any],
) -> None:
    realtime.agent_lines = [agent_line("agent_long_reply"), agent_line("agent_short_reply")]
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings), **server_options) as server:
        async with await call(server) as caller:
            await caller.say(audio.load("caller_book_table"))
            await caller.wait_for_agent_audio(timeout=5)
            await caller.pause(1.5)  # let the agent talk for a while, then talk over it
            caller.enqueue_speech(audio.load("caller_interrupt"))
            clear = await caller.wait_for_clear(timeout=5)
            assert clear.was_playing
            await caller.wait_for_agent_audio(timeout=10)  # the agent answers the new turn
            await caller.wait_until_agent_quiet(timeout=15)
            await caller.hang_up()

        (session,) = realtime.sessions
        (truncation,) = session.truncations
        item_id, audio_end_ms, truncated_at = truncation
        assert abs(audio_end_ms - clear.utterance_played_ms) <= 100
        assert audio_end_ms < realtime.produced_ms(item_id)
        assert realtime.truncate_errors == []
        assert abs(clear.time - truncated_at) < 0.25, "clear and truncate go out together"

    (record,) = saved_transcripts(settings)
    roles = [(t["role"], t.get("interrupted", False)) for t in record["turns"]]
    assert roles == [("caller", False), ("agent", True), ("caller", False), ("agent", False)]
    cut = record["turns"][1]
    assert cut["heard_ms"] == audio_end_ms
    assert cut["text"] == audio.text("agent_long_reply")
    assert record["turns"][2]["text"] == audio.text("caller_interrupt")


async def test_hang_up_closes_the_openai_socket_within_a_second(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    async with serve(create_app(make_settings(agent_greeting=""))) as server:
        async with await call(server) as caller:
            await realtime.wait_for(lambda: realtime.sessions, timeout=5)
            await caller.pause(0.2)
            await caller.hang_up()
        await realtime.wait_for(lambda: realtime.sessions[0].closed, timeout=1.0)
