"""A deploy never cuts a caller off: SIGTERM drains live calls before the server exits."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import AUTH_TOKEN, PUBLIC_BASE_URL, agent_line
from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.servers import serve_process
from tests.twilio import answer_call, post_webhook
from voicebridge.simulator import CallerSimulator, new_sid


def server_env(realtime: RealtimeDouble, tmp_path: Path, drain_timeout: float) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_REALTIME_URL": realtime.url,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TRANSCRIPTS_DIR": str(tmp_path / "transcripts"),
        "DRAIN_TIMEOUT": str(drain_timeout),
        "LOG_LEVEL": "INFO",
    }


async def test_sigterm_lets_the_live_call_finish_then_exits_cleanly(
    realtime: RealtimeDouble, tmp_path: Path
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    async with serve_process(server_env(realtime, tmp_path, drain_timeout=30)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await caller.say(audio.load("caller_book_table"))
            await caller.wait_for_agent_audio(timeout=5)
            await caller.wait_until_agent_quiet(timeout=10)

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with httpx.AsyncClient() as client:
                for _ in range(50):
                    health = await client.get(f"{server.http_url}/healthz")
                    if health.status_code == 503:
                        break
                    await asyncio.sleep(0.05)
            assert health.status_code == 503
            refused = await post_webhook(
                server,
                "/twilio/voice",
                {"CallSid": new_sid("CA"), "From": "+1555", "To": "+1666", "Direction": "inbound"},
            )
            assert "<Say>" in refused.text and "<Stream" not in refused.text

            heard_before = caller.heard_ms
            await caller.say(audio.load("caller_interrupt"))  # the call goes on, both ways
            await caller.wait_for_agent_audio(timeout=5)
            await caller.wait_until_agent_quiet(timeout=10)
            assert caller.heard_ms - heard_before >= audio.duration_ms("agent_short_reply") - 40
            assert caller.close_code is None
            await caller.hang_up()

        code = await asyncio.wait_for(server.process.wait(), timeout=10)
        assert code == 0
        assert time.monotonic() - signalled < 30
    (path,) = (tmp_path / "transcripts").rglob(f"{call_sid}.json")
    record = json.loads(path.read_text())
    assert [t["role"] for t in record["turns"]] == ["caller", "agent", "caller", "agent"]


async def test_near_the_drain_deadline_the_agent_says_goodbye(
    realtime: RealtimeDouble, tmp_path: Path
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    async with serve_process(server_env(realtime, tmp_path, drain_timeout=8)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            server.process.send_signal(signal.SIGTERM)
            goodbye = await caller.wait_for_agent_audio(timeout=6)
            await caller.wait_closed(timeout=10)
        assert goodbye.played_ms >= audio.duration_ms("agent_short_reply") - 40
        assert caller.closed_by == "server"
        assert await asyncio.wait_for(server.process.wait(), timeout=10) == 0
    (path,) = (tmp_path / "transcripts").rglob(f"{call_sid}.json")
    record = json.loads(path.read_text())
    assert record["turns"][-1]["role"] == "agent"
    assert "time_limit" in [event["type"] for event in record["events"]]
