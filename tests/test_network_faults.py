"""The OpenAI side over a network that misbehaves: a TCP proxy between the app and the
Realtime double delays FINs, stalls, cuts mid-message; the double closes cleanly, goes
quiet, dies at once. Every case ends in a new session or, when none works, the apology."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import agent_line
from tests.doubles.realtime import RealtimeDouble
from tests.faults.tcp_proxy import FaultyLink
from tests.fixtures import audio
from tests.servers import serve
from tests.test_resilience import call, transcript_of
from voicebridge.main import create_app
from voicebridge.settings import Settings


@pytest.fixture
async def link(realtime: RealtimeDouble) -> AsyncIterator[FaultyLink]:
    async with FaultyLink(realtime.host, realtime.port) as proxy:
        yield proxy


@pytest.mark.parametrize("fin_delay_s", [0.02, 0.06, 0.3])
async def test_a_clean_close_followed_late_by_its_fin_is_a_reconnect(
    realtime: RealtimeDouble,
    link: FaultyLink,
    make_settings: Callable[..., Settings],
    fin_delay_s: float,
) -> None:
    link.fin_delay_s = fin_delay_s
    realtime.agent_lines = [agent_line("agent_short_reply")]
    settings = make_settings(agent_greeting="", openai_realtime_url=link.url(realtime.url))
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
        await caller.pause(0.3)
        await realtime.drop(1000, "")
        await realtime.wait_for(lambda: realtime.connections == 2, timeout=5)
        await caller.say(audio.load("caller_book_table"))
        await caller.wait_for_agent_audio(timeout=5)
        await caller.hang_up()
    record = transcript_of(settings, caller.call_sid)
    assert record["outcome"] == "completed"
    assert [e["type"] for e in record["events"]] == ["realtime_lost", "realtime_reconnected"]


async def test_a_connection_reset_mid_call_is_a_reconnect(
    realtime: RealtimeDouble, link: FaultyLink, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    settings = make_settings(agent_greeting="", openai_realtime_url=link.url(realtime.url))
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
        await link.reset_all()
        await realtime.wait_for(lambda: realtime.connections == 2, timeout=5)
        await caller.say(audio.load("caller_book_table"))
        await caller.wait_for_agent_audio(timeout=5)
        await caller.hang_up()
    assert transcript_of(settings, caller.call_sid)["outcome"] == "completed"


async def test_an_answer_cut_off_mid_message_is_asked_for_again(
    realtime: RealtimeDouble, link: FaultyLink, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [agent_line("agent_long_reply")]
    realtime.realtime_factor = 1.0  # the reply streams in real time: there is a middle
    settings = make_settings(agent_greeting="", openai_realtime_url=link.url(realtime.url))
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await caller.say(audio.load("caller_book_table"))
        await caller.wait_for_agent_audio(timeout=5)
        link.cut_after_bytes = 300  # inside the next audio delta
        await realtime.wait_for(lambda: realtime.connections == 2, timeout=5)
        second = realtime.sessions[1]
        await realtime.wait_for(lambda: second.responses, timeout=5)
        await caller.hang_up()
    assert second.events_of("response.create"), "the new session was asked for the answer"
    events = [e["type"] for e in transcript_of(settings, caller.call_sid)["events"]]
    assert events == ["realtime_lost", "realtime_reconnected"]


async def test_a_handshake_that_is_never_answered_ends_in_the_apology(
    realtime: RealtimeDouble, link: FaultyLink, make_settings: Callable[..., Settings]
) -> None:
    link.blackhole = True
    settings = make_settings(
        openai_realtime_url=link.url(realtime.url), realtime_reconnect_timeout_s=1.5
    )
    async with serve(create_app(settings)) as server, await call(server) as caller:
        code = await caller.wait_closed(timeout=5)  # then Twilio asks /twilio/stream-ended
    assert caller.closed_by == "server" and code == 1000
    record = transcript_of(settings, caller.call_sid)
    assert record["outcome"] == "realtime_unavailable"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"stall": True}, id="accepts-and-never-answers"),
        pytest.param({"answer_events": 1}, id="answers-only-session-created"),
        pytest.param({"close_after_events": 1}, id="dies-after-its-first-event"),
    ],
)
async def test_openai_that_never_works_ends_in_the_apology_not_dead_air(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings], fault: dict[str, Any]
) -> None:
    for knob, value in fault.items():
        setattr(realtime, knob, value)
    settings = make_settings(realtime_stall_timeout_s=1.0, realtime_reconnect_timeout_s=3.0)
    async with serve(create_app(settings)) as server, await call(server) as caller:
        code = await caller.wait_closed(timeout=10)
    assert caller.closed_by == "server" and code == 1000
    assert 1 <= realtime.connections <= 8, "attempts back off: no storm of sessions"
    record = transcript_of(settings, caller.call_sid)
    assert record["outcome"] == "realtime_unavailable"
    assert record["events"][-1]["type"] == "realtime_unavailable"


async def test_a_session_gone_quiet_after_the_greeting_is_found_and_replaced(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [agent_line("agent_greeting"), agent_line("agent_short_reply")]
    settings = make_settings(realtime_stall_timeout_s=1.0)
    async with serve(create_app(settings)) as server, await call(server) as caller:
        await caller.wait_for_agent_audio(timeout=5)
        await caller.wait_until_agent_quiet(timeout=10)
        realtime.mute()  # pings still answered: only the events stop
        await caller.say(audio.load("caller_book_table"))
        await realtime.wait_for(lambda: realtime.connections == 2, timeout=10)
        reply = await caller.wait_for_agent_audio(timeout=5)
        await caller.hang_up()
    assert reply.start > 0
    (ask,) = realtime.sessions[1].events_of("response.create")
    assert "repeat" in ask["response"]["instructions"], "the agent owns up to the gap"
    events = transcript_of(settings, caller.call_sid)["events"]
    assert [(e["type"], e.get("reason")) for e in events] == [
        ("realtime_lost", "stalled"),
        ("realtime_reconnected", None),
    ]
