"""Nothing from the network ends a call, and nothing from it floods the logs: bad input
from either side is dropped, its first of a kind logged, the rest counted (issue 16)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.logs import TextFormatter
from app.main import create_app
from app.settings import Settings
from app.simulator import new_sid
from tests.doubles.realtime import RealtimeDouble, silence_ulaw
from tests.faults.junk import DEEPLY_NESTED, OPENAI_JUNK, TWILIO_JUNK, send_twilio_junk
from tests.fixtures import audio
from tests.servers import serve
from tests.test_security import start_frame
from tests.twilio import answer_call

# What one call may log, however much junk it gets: its own lines (started, session,
# hung up, saved), the first message of each kind of junk, and the summary.
MAX_CALL_LOG_LINES = 10 + len(TWILIO_JUNK) + 1


def transcript(settings: Settings, call_sid: str) -> dict[str, Any]:
    (path,) = settings.transcripts_dir.rglob(f"{call_sid}.json")
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def as_twilio_reads(text: str | bytes) -> dict[str, Any]:
    """A message from the bridge, checked as Twilio checks it: one of its three shapes,
    no field more, and audio that is base64."""
    message: dict[str, Any] = json.loads(text)
    inner = {"media": {"payload"}, "mark": {"name"}, "clear": set()}[message["event"]]
    assert set(message) == {"event", "streamSid"} | ({message["event"]} if inner else set())
    if inner:
        assert set(message[message["event"]]) == inner
    if message["event"] == "media":
        base64.b64decode(message["media"]["payload"], validate=True)
    return message


async def speak_and_hear_the_reply(ws: ClientConnection, realtime: RealtimeDouble) -> None:
    """One caller turn, sent as a burst once the session is ready (the double's VAD runs
    on audio time, not the clock); returns once the agent's reply is over and its first
    audio reached Twilio."""
    await realtime.wait_for(lambda: session_ready(realtime))
    speech = audio.load("caller_book_table") + silence_ulaw(1000)
    for at in range(0, len(speech), 160):
        frame = base64.b64encode(speech[at : at + 160]).decode()
        media = {"track": "inbound", "timestamp": str(at // 8), "payload": frame}
        await ws.send(json.dumps({"event": "media", "streamSid": "MZ1", "media": media}))
    while as_twilio_reads(await asyncio.wait_for(ws.recv(), 10))["event"] != "media":
        pass
    await realtime.wait_for(lambda: realtime.latest.sent_of("response.done"))


async def hang_up(ws: ClientConnection) -> None:
    """`stop`, then read what is left until the server closes the stream."""
    await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
    async with asyncio.timeout(10):
        async for message in ws:
            as_twilio_reads(message)


def session_ready(realtime: RealtimeDouble) -> bool:
    return bool(realtime.sessions and realtime.latest.sent_of("session.updated"))


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [r.getMessage() for r in caplog.records]
    return [m for m in messages if re.match(r"dropped \d+ bad messages: ", m)]


async def test_a_deeply_nested_message_does_not_end_the_call(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The red team's 2 KB of brackets used to end the call as failed (RecursionError)."""
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url) as ws:
            await ws.send(DEEPLY_NESTED)  # before start
            await ws.send(start_frame(call_sid, parameters))
            await ws.send(DEEPLY_NESTED)
            await speak_and_hear_the_reply(ws, realtime)
            await hang_up(ws)

    record = transcript(settings, call_sid)
    assert record["outcome"] == "completed"
    assert [turn["role"] for turn in record["turns"]] == ["caller", "agent"]
    assert summaries(caplog) == ["dropped 2 bad messages: 2 nested too deeply from Twilio"]


async def test_bad_events_from_openai_are_dropped_and_the_call_goes_on(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Events that are not JSON, nested too deeply, mistyped, or audio that is not clean
    base64 (a quote in it once reached Twilio's JSON): none ends the call or reaches
    Twilio, and the caller still gets a reply."""
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url) as ws:
            await ws.send(start_frame(call_sid, parameters))
            await realtime.wait_for(lambda: session_ready(realtime))
            for raw in OPENAI_JUNK:
                await realtime.inject(raw)
            await speak_and_hear_the_reply(ws, realtime)
            await hang_up(ws)

    record = transcript(settings, call_sid)
    assert record["outcome"] == "completed"
    assert [turn["role"] for turn in record["turns"]] == ["caller", "agent"]
    assert summaries(caplog) == [
        f"dropped {len(OPENAI_JUNK)} bad messages: 1 bad JSON from OpenAI, "
        "1 nested too deeply from OpenAI, 2 bad message from OpenAI, 4 bad audio from OpenAI"
    ]


async def test_junk_costs_a_bounded_number_of_log_lines(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Thousands of junk messages (new unknown event names, forged log lines among them),
    before and after `start`: a handful of log lines per connection, the counts at its end,
    and the call still answers."""
    settings = make_settings(agent_greeting="")
    async with serve(create_app(settings)) as server:
        async with connect(server.ws_url) as ws:  # never starts
            await send_twilio_junk(ws, 1000)
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url) as ws:
            await ws.send(start_frame(call_sid, parameters))
            await send_twilio_junk(ws, 2000)
            await speak_and_hear_the_reply(ws, realtime)
            await hang_up(ws)

    assert transcript(settings, call_sid)["outcome"] == "completed"
    lines = [r for r in caplog.records if r.name.startswith("voicebridge")]
    assert len(lines) <= 2 * MAX_CALL_LOG_LINES, [r.getMessage() for r in lines]
    before_start, call = summaries(caplog)
    assert before_start.startswith("dropped 1000 bad messages: ")
    assert call.startswith("dropped 2000 bad messages: ")
    counted = re.findall(r"(\d+) ([a-zA-Z ]+) from Twilio", call)
    assert sum(int(n) for n, _ in counted) == 2000
    assert {kind for _, kind in counted} >= {"bad JSON", "nested too deeply", "unknown event"}
    assert lines[-1].getMessage() == call  # the last word on the call
    formatter = TextFormatter()
    assert all("\n" not in formatter.format(r) for r in caplog.records if not r.exc_info)
    assert max(len(formatter.format(r)) for r in lines) < 500  # bytes bounded too


async def test_a_callsid_with_a_newline_is_refused(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The CallSid names every log line of a call (and its transcript's file): one that
    could forge a line is refused at `start`, before any OpenAI session."""
    settings = make_settings(twilio_validate_signatures=False)  # no token to forge
    async with serve(create_app(settings)) as server, connect(server.ws_url) as ws:
        await ws.send(start_frame("CA1\n12:00:00.000 INFO forged", {}))
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1008
    assert realtime.connections == 0
    assert "not a usable CallSid: 'CA1\\n12:00:00.000 INFO forged'" in caplog.text


def test_the_text_log_format_keeps_each_record_on_one_line() -> None:
    record = logging.makeLogRecord(
        {
            "name": "voicebridge.call",
            "levelname": "WARNING",
            "msg": "ignoring %s",
            "args": ("surprise\n12:00:00.000 INFO forged\r\x1b[2J\u2028",),
            "call_sid": "CA1\nCA2",
            "field": "a\nb",
        }
    )
    line = TextFormatter().format(record)
    assert line.endswith(
        " voicebridge.call call=CA1\\nCA2 ignoring surprise\\n12:00:00.000 INFO forged"
        "\\r\\x1b[2J\\u2028 field=a\\nb"
    )
    assert line.isprintable()


async def test_a_flood_of_openai_errors_is_counted_not_logged_line_by_line(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(agent_greeting="")
    error = {"type": "error", "event_id": "e", "error": {"type": "invalid_request_error"}}
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url) as ws:
            await ws.send(start_frame(call_sid, parameters))
            await realtime.wait_for(lambda: session_ready(realtime))
            for n in range(200):
                code = "rate_limited" if n % 2 else f"made_up_{n}"
                await realtime.inject(
                    json.dumps(
                        {**error, "error": {**error["error"], "code": code, "message": "no"}}
                    )
                )
            await speak_and_hear_the_reply(ws, realtime)
            await hang_up(ws)

    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("OpenAI error")]
    assert len(logged) <= 3 + 32 * 3
    (counted,) = [m for m in logged if "counted but not each logged" in m]
    assert "100 rate_limited" in counted and "69 other" in counted
    assert transcript(settings, call_sid)["outcome"] == "completed"
