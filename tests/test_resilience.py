"""The call survives the network: Realtime drops, stalls and session limits are bridged
over inside the same call, with the conversation carried to the new session."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import agent_line
from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.servers import RunningServer, serve
from tests.test_security import start_frame
from tests.twilio import answer_call
from voicebridge.call.bridge import CallBridge
from voicebridge.main import create_app
from voicebridge.realtime import events as rt
from voicebridge.settings import Settings
from voicebridge.simulator import CallerSimulator, new_sid


async def call(server: RunningServer, **options: Any) -> CallerSimulator:
    call_sid = new_sid("CA")
    parameters = await answer_call(server, call_sid)
    return CallerSimulator(
        server.ws_url, call_sid=call_sid, custom_parameters=parameters, **options
    )


def transcript_of(settings: Settings, call_sid: str) -> dict[str, Any]:
    (path,) = Path(settings.transcripts_dir).rglob(f"{call_sid}.json")
    return dict(json.loads(path.read_text()))


def seeded_texts(realtime: RealtimeDouble, session: int) -> list[tuple[str, str]]:
    items = [e["item"] for e in realtime.sessions[session].events_of("conversation.item.create")]
    return [(item["role"], item["content"][0]["text"]) for item in items]


async def test_a_dropped_realtime_socket_is_replaced_inside_the_call(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await caller.say(audio.load("caller_book_table"))
        await caller.wait_for_agent_audio(timeout=5)
        await caller.wait_until_agent_quiet(timeout=10)
        await realtime.drop(1011)
        await realtime.wait_for(lambda: realtime.connections == 2, timeout=5)
        await caller.say(audio.load("caller_interrupt"))
        await caller.wait_for_agent_audio(timeout=5)
        await caller.wait_until_agent_quiet(timeout=10)
        await caller.hang_up()

    assert seeded_texts(realtime, 1) == [
        ("user", audio.text("caller_book_table")),
        ("assistant", audio.text("agent_short_reply")),
    ]
    record = transcript_of(settings, caller.call_sid)
    assert [(t["role"], t["text"]) for t in record["turns"]] == [
        ("caller", audio.text("caller_book_table")),
        ("agent", audio.text("agent_short_reply")),
        ("caller", audio.text("caller_interrupt")),
        ("agent", audio.text("agent_short_reply")),
    ]
    lost, reconnected = record["events"]
    assert lost["type"] == "realtime_lost" and "1011" in lost["reason"]
    assert reconnected["type"] == "realtime_reconnected"
    print(f"reconnect gap: {reconnected['gap_ms']} ms")  # reported with -s
    assert reconnected["gap_ms"] < 5000


async def test_when_reconnecting_keeps_failing_the_call_ends_cleanly(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(agent_greeting="", realtime_reconnect_timeout_s=1.0)
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
        realtime.reject_status = 503
        await realtime.drop(1011)
        code = await caller.wait_closed(timeout=5)
    assert caller.closed_by == "server" and code == 1000  # Twilio then runs <Connect action>
    assert realtime.rejected >= 2, "it retried before giving up"
    events = [e["type"] for e in transcript_of(settings, caller.call_sid)["events"]]
    assert events == ["realtime_lost", "realtime_unavailable"]


async def test_openai_refusing_the_key_ends_the_call_at_once(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.reject_status = 401
    settings = make_settings()
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await caller.wait_closed(timeout=3)
    assert realtime.rejected == 1, "a refused key is not retried"
    assert caller.closed_by == "server"


async def test_a_stalled_session_is_detected_and_replaced(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.stall = True
    settings = make_settings(realtime_stall_timeout_s=1.0)
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
        realtime.stall = False
        greeting = await caller.wait_for_agent_audio(timeout=5)
        assert greeting.start - (caller.started_at or 0) < 4
        await caller.hang_up()
    assert realtime.connections == 2


async def test_rollover_moves_the_call_to_a_fresh_session_at_a_pause(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    settings = make_settings(agent_greeting="", realtime_session_max_s=1.0)
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await caller.say(audio.load("caller_book_table"))
        await caller.wait_for_agent_audio(timeout=5)
        await caller.wait_until_agent_quiet(timeout=10)
        await realtime.wait_for(lambda: realtime.connections >= 2, timeout=5)
        await caller.say(audio.load("caller_interrupt"))
        await caller.wait_for_agent_audio(timeout=5)
        await caller.hang_up()
    # the first session lived through the whole first exchange: no one was cut off
    first = realtime.sessions[0]
    assert [r.status for r in first.responses] == ["completed"]
    assert ("user", audio.text("caller_book_table")) in seeded_texts(realtime, 1)
    events = transcript_of(settings, caller.call_sid)["events"]
    assert events[0] == {**events[0], "type": "realtime_lost", "reason": "rollover"}


async def test_omitted_silence_is_filled_so_the_turn_ends(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    app = create_app(make_settings(agent_greeting=""))
    async with serve(app) as server, await call(server, send_silence=False) as caller:
        await caller.say(audio.load("caller_book_table"))
        await caller.pause(1.0)  # Twilio omits these frames: only a timestamp gap
        await caller.say(b"\xfe" * 160)  # one near-silent frame after the gap
        await caller.wait_for_agent_audio(timeout=5)
    assert realtime.sessions[0].turns[0].audio_end_ms is not None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_killed_streams_leak_nothing(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        for _ in range(3):
            sockets = []
            for _ in range(10):
                call_sid = new_sid("CA")
                parameters = await answer_call(server, call_sid)
                ws = await connect(server.ws_url)
                await ws.send(start_frame(call_sid, parameters))
                sockets.append(ws)
            await realtime.wait_for(
                lambda: sum(not s.closed for s in realtime.sessions) == 10, timeout=5
            )
            for ws in sockets:  # no stop, no close frame: the TCP connection just dies
                ws.transport.abort()
            await realtime.wait_for(lambda: all(s.closed for s in realtime.sessions), timeout=5)
        await realtime.wait_for(
            lambda: len(asyncio.all_tasks()) <= tasks_before and open_fds() <= fds_before,
            timeout=5,
        )
        assert server.app.state.services.active == {}
    assert len(list(Path(settings.transcripts_dir).rglob("*.json"))) == 30


async def test_a_bug_met_in_one_call_ends_that_call_and_no_other(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken_sid = new_sid("CA")
    handle = CallBridge.realtime_event

    def buggy_for_one_call(bridge: CallBridge, event: rt.ServerEvent) -> None:
        call = bridge.transcript.call if bridge.transcript else None
        if call and call.call_sid == broken_sid and isinstance(event, rt.AudioDelta):
            raise RuntimeError("a bug the agent's audio runs into")
        handle(bridge, event)

    monkeypatch.setattr(CallBridge, "realtime_event", buggy_for_one_call)
    settings = make_settings()  # the agent greets both callers
    async with serve(create_app(settings)) as server:
        parameters = await answer_call(server, broken_sid)
        broken = CallerSimulator(server.ws_url, call_sid=broken_sid, custom_parameters=parameters)
        async with await call(server) as healthy, broken:
            code = await broken.wait_closed(timeout=5)
            greeting = await healthy.wait_for_agent_audio(timeout=5)
            await healthy.wait_until_agent_quiet(timeout=15)
            await healthy.hang_up()

    assert broken.closed_by == "server" and code == 1000
    assert greeting.played_ms >= audio.duration_ms("agent_greeting") - 40
    assert transcript_of(settings, broken_sid)["outcome"] == "failed"
    assert transcript_of(settings, healthy.call_sid)["outcome"] == "completed"
