"""An agent that acts: hangs up after its goodbye is heard, transfers, hears the keypad,
and calls the user's own tools."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import agent_line
from tests.doubles.realtime import AgentLine, RealtimeDouble
from tests.doubles.twilio_rest import FakeTwilioRest, RecordedRequest
from tests.fixtures import audio
from tests.servers import RunningServer, serve
from tests.twilio import answer_call
from voicebridge.call.tools import load_tools
from voicebridge.main import create_app
from voicebridge.settings import Settings, SettingsError
from voicebridge.simulator import CallerSimulator, new_sid

EXAMPLE_TOOLS = "tests.tools_example.restaurant"


async def call(server: RunningServer, twilio_rest: FakeTwilioRest) -> CallerSimulator:
    call_sid = new_sid("CA")
    twilio_rest.add_call(call_sid)
    parameters = await answer_call(server, call_sid)
    return CallerSimulator(server.ws_url, call_sid=call_sid, custom_parameters=parameters)


async def call_updated(
    realtime: RealtimeDouble, twilio_rest: FakeTwilioRest, call_sid: str
) -> list[RecordedRequest]:
    """The REST updates of a call (hang-up, redirect), once there is one."""
    updates: list[RecordedRequest] = await realtime.wait_for(
        lambda: twilio_rest.requests_to("POST", f"/Calls/{call_sid}.json"), timeout=10
    )
    return updates


def transcript_of(settings: Settings, call_sid: str) -> dict[str, Any]:
    (path,) = Path(settings.transcripts_dir).rglob(f"{call_sid}.json")
    return dict(json.loads(path.read_text()))


def goodbye_then(name: str, arguments: str = "{}") -> AgentLine:
    line = agent_line("agent_short_reply")
    return AgentLine(text=line.text, audio=line.audio, function_call=(name, arguments))


async def test_end_call_hangs_up_only_after_the_goodbye_was_heard(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    realtime.agent_lines = [goodbye_then("end_call")]
    settings = settings_with_rest()
    async with serve(create_app(settings)) as server:
        async with await call(server, twilio_rest) as caller:
            await caller.say(audio.load("caller_interrupt"))
            goodbye = await caller.wait_for_agent_audio(timeout=5)
            await call_updated(realtime, twilio_rest, caller.call_sid)
        (hang_up,) = await call_updated(realtime, twilio_rest, caller.call_sid)
        assert hang_up.form == {"Status": "completed"}
        last_mark = max(echo.time for echo in caller.marks_echoed if not echo.cleared)
        assert hang_up.at >= last_mark, "hung up before the goodbye had played"
        assert goodbye.played_ms >= audio.duration_ms("agent_short_reply") - 40
    record = transcript_of(settings, caller.call_sid)
    assert [e["name"] for e in record["events"] if e["type"] == "tool_call"] == ["end_call"]
    assert record["outcome"] == "ended_by_agent"


async def test_end_call_on_a_call_that_is_already_over_is_fine(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    realtime.agent_lines = [AgentLine(function_call=("end_call", "{}"))]
    app = create_app(settings_with_rest())
    async with serve(app) as server, await call(server, twilio_rest) as caller:
        twilio_rest.forget_call(caller.call_sid)
        await caller.say(audio.load("caller_interrupt"))
        await call_updated(realtime, twilio_rest, caller.call_sid)
        await caller.wait_closed(timeout=5)  # after a hang-up the stream is ended too
    assert "already ended" in caplog.text
    assert "could not" not in caplog.text


async def test_transfer_redirects_the_call_to_a_human_with_dial(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    realtime.agent_lines = [goodbye_then("transfer_call", '{"reason": "wants a human"}')]
    settings = settings_with_rest(transfer_number="+15557654321")
    async with serve(create_app(settings)) as server:
        async with await call(server, twilio_rest) as caller:
            await caller.say(audio.load("caller_interrupt"))
            await call_updated(realtime, twilio_rest, caller.call_sid)
            await caller.hang_up()  # Twilio's stop after the redirect
        (redirect,) = await call_updated(realtime, twilio_rest, caller.call_sid)
        assert "<Dial>+15557654321</Dial>" in redirect.form["Twiml"]
    tools = realtime.sessions[0].config["tools"]
    assert {tool["name"] for tool in tools} == {"end_call", "transfer_call"}
    assert transcript_of(settings, caller.call_sid)["outcome"] == "transferred"


async def test_keypad_digits_reach_the_model_and_the_transcript(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            await caller.send_dtmf("4")
            await caller.wait_for_agent_audio(timeout=5)
            await caller.hang_up()
    (item,) = [e["item"] for e in realtime.sessions[0].events_of("conversation.item.create")]
    assert item["content"][0]["text"] == "The caller pressed 4 on the keypad."
    turns = transcript_of(settings, call_sid)["turns"]
    assert turns[0] == {**turns[0], "role": "caller", "dtmf": "4"}


async def test_custom_tools_run_and_their_results_go_back_to_the_model(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    realtime.agent_lines = [
        AgentLine(
            function_call=(
                "check_availability",
                '{"party_size": 3, "time": "19:00", "area": "terrace"}',
            )
        ),
        agent_line("agent_short_reply"),
        AgentLine(function_call=("cancel_booking", '{"booking_id": "X1"}')),
        agent_line("agent_short_reply"),
    ]
    settings = make_settings(agent_greeting="", agent_tools=EXAMPLE_TOOLS)
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await caller.say(audio.load("caller_book_table"))
            await caller.wait_for_agent_audio(timeout=10)  # after the tool's result
            await caller.wait_until_agent_quiet(timeout=10)
            await caller.say(audio.load("caller_interrupt"))
            await realtime.wait_for(lambda: len(realtime.responses) >= 4, timeout=10)
            await caller.hang_up()

    outputs = [
        json.loads(e["item"]["output"])
        for e in realtime.sessions[0].events_of("conversation.item.create")
    ]
    assert outputs == [
        {"result": "a table for 3 is free at 19:00 (terrace)"},
        {"error": "cancel_booking failed: no booking X1"},
    ]
    schema = {t["name"]: t for t in realtime.sessions[0].config["tools"]}["check_availability"]
    assert schema["parameters"]["properties"]["area"]["enum"] == ["inside", "terrace"]
    assert schema["parameters"]["required"] == ["party_size", "time", "area"]
    assert schema["description"].startswith("Check whether a table is free")
    events = transcript_of(settings, call_sid)["events"]
    assert [(e["type"], e["name"]) for e in events] == [
        ("tool_call", "check_availability"),
        ("tool_result", "check_availability"),
        ("tool_call", "cancel_booking"),
        ("tool_result", "cancel_booking"),
    ]


async def test_a_slow_tool_times_out_into_a_result_the_model_can_talk_about() -> None:
    from voicebridge.call.tools import run_tool

    (slow,) = [t for t in load_tools(EXAMPLE_TOOLS) if t.name == "slow_lookup"]
    output = await run_tool(slow, '{"name": "Ann"}', timeout_s=0.05)
    assert json.loads(output) == {"error": "slow_lookup took longer than 0.05 s"}
    bad = await run_tool(slow, '{"nom": 1}', timeout_s=1)
    assert "invalid arguments" in json.loads(bad)["error"]


def test_a_broken_tools_module_is_a_readable_settings_error(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(SettingsError) as caught:
        create_app(make_settings(agent_tools="no_such_module_xyz"))
    assert "AGENT_TOOLS" in str(caught.value)


async def test_max_call_seconds_ends_the_call_with_a_goodbye(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    settings = settings_with_rest(max_call_seconds=2)
    async with serve(create_app(settings)) as server:
        async with await call(server, twilio_rest) as caller:
            goodbye = await caller.wait_for_agent_audio(timeout=5)
            await call_updated(realtime, twilio_rest, caller.call_sid)
        (hang_up,) = await call_updated(realtime, twilio_rest, caller.call_sid)
        assert hang_up.form == {"Status": "completed"}
        assert goodbye.start - (caller.started_at or 0) >= 2.0
        assert goodbye.played_ms >= audio.duration_ms("agent_short_reply") - 40
    (create,) = realtime.sessions[0].response_creates
    assert "time limit" in create["response"]["instructions"]
    record = transcript_of(settings, caller.call_sid)
    assert "time_limit" in [e["type"] for e in record["events"]]
