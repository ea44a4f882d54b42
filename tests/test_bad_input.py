"""Bad input from the network never breaks a call: random and mutated Twilio messages are
thrown at a live server while a well-behaved call runs beside them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.servers import RunningServer, serve
from tests.test_security import start_frame
from tests.twilio import answer_call
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.simulator import CallerSimulator, new_sid

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


def media(payload: str, timestamp: str = "0") -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": "3",
        "streamSid": "MZ1",
        "media": {"track": "inbound", "chunk": "1", "timestamp": timestamp, "payload": payload},
    }


GOOD_FRAME = base64.b64encode(b"\xff" * 160).decode()
VALID_MESSAGES: list[dict[str, Any]] = [
    media(GOOD_FRAME),
    {"event": "mark", "streamSid": "MZ1", "mark": {"name": "1"}},
    {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "5"}},
    {"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}},
]


@st.composite
def mutated(draw: st.DrawFn) -> str | bytes:
    """A valid message with one field replaced, removed or added."""
    message = json.loads(json.dumps(draw(st.sampled_from(VALID_MESSAGES))))
    target = message
    if draw(st.booleans()):
        nested = [key for key, value in message.items() if isinstance(value, dict)]
        if nested:
            target = message[draw(st.sampled_from(nested))]
    key = draw(st.sampled_from([*target.keys(), "extra"]))
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(json_values)
    return json.dumps(message)


junk = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.just("{"),
    st.just('{"event": "surprise"}'),
    st.builds(lambda p: json.dumps(media(p)), st.text(max_size=50)),  # bad base64
    st.builds(  # wrong sizes, including huge
        lambda n: json.dumps(media(base64.b64encode(b"\x7f" * n).decode())),
        st.sampled_from([0, 1, 7, 161, 4000]),
    ),
    st.just(json.dumps(media(GOOD_FRAME, timestamp="soon"))),
    mutated(),
)


async def throw(server: RunningServer, messages: list[str | bytes], started: bool) -> None:
    """One hostile stream: maybe a valid start first, then the junk."""
    call_sid = new_sid("CA")
    async with connect(server.ws_url, max_size=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            if started:
                parameters = await answer_call(server, call_sid)
                await ws.send(start_frame(call_sid, parameters))
            for message in messages:
                await ws.send(message)
            await ws.send(start_frame(call_sid, {}))  # a second start, unsigned
            await ws.send("x" * 70_000)  # larger than any Twilio frame: refused
            await ws.recv()


async def test_random_and_mutated_messages_never_break_the_good_call(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(agent_greeting="")
    loop = asyncio.get_running_loop()
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as good:
            speaking = good.enqueue_speech(audio.load("caller_book_table"))

            @hypothesis_settings(
                max_examples=40,
                deadline=None,
                derandomize=True,  # the same hostile streams on every run: deterministic
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(messages=st.lists(junk, max_size=12), started=st.booleans())
            @example(messages=[json.dumps(media("ÿÿÿÿ"))], started=True)  # once crashed us
            def hostile_stream(messages: list[str | bytes], started: bool) -> None:
                asyncio.run_coroutine_threadsafe(throw(server, messages, started), loop).result(30)

            await asyncio.to_thread(hostile_stream)
            await speaking
            await good.wait_for_agent_audio(timeout=10)
            await good.wait_until_agent_quiet(timeout=20)
            await good.hang_up()
            async with httpx.AsyncClient() as client:
                health = await client.get(f"{server.http_url}/healthz")
            assert health.status_code == 200

    transcripts = [
        json.loads(p.read_text()) for p in settings.transcripts_dir.rglob(f"{call_sid}.json")
    ]
    assert len(transcripts) == 1
    assert [t["role"] for t in transcripts[0]["turns"]] == ["caller", "agent"]
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info is not None]
    assert crashes == [], [r.getMessage() for r in crashes]


async def test_frames_off_the_audio_fast_path_still_work(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    """Twilio sends whole text frames, which the server cuts out itself; pings, fragmented
    messages and bad UTF-8 must still get the WebSocket library's full treatment."""
    settings = make_settings(agent_greeting="")

    def appended() -> list[str]:
        events = realtime.latest.events_of("input_audio_buffer.append")
        return [event["audio"] for event in events]

    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url, compression=None) as ws:
            await ws.send(start_frame(call_sid, parameters))
            await realtime.wait_for(lambda: realtime.sessions and realtime.latest.config)
            message = json.dumps(media(GOOD_FRAME))
            await ws.send(iter([message[:40], message[40:90], message[90:]]))  # 3 fragments
            await asyncio.wait_for(await ws.ping(), 5)
            await ws.send(message)
            await realtime.wait_for(lambda: len(appended()) == 2)
            assert appended() == [GOOD_FRAME, GOOD_FRAME]
            await ws.send(b'{"event": "\xff"}', text=True)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1007


async def test_a_burst_right_behind_start_reaches_openai_whole_and_in_order(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings]
) -> None:
    """Frames that arrive before the call listens are queued, past the point where the
    server stops reading; the call takes them over in order and reading resumes."""
    settings = make_settings(agent_greeting="")
    frames = [base64.b64encode(bytes([n]) * 160).decode() for n in range(101)]

    def appended() -> list[str]:
        if not realtime.sessions:
            return []
        return [e["audio"] for e in realtime.latest.events_of("input_audio_buffer.append")]

    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url, compression=None) as ws:
            await ws.send(start_frame(call_sid, parameters))
            for n, frame in enumerate(frames[:-1]):  # no await yields: one burst
                await ws.send(json.dumps(media(frame, timestamp=str(n * 20))))
            await realtime.wait_for(lambda: len(appended()) == len(frames) - 1, timeout=5)
            await ws.send(json.dumps(media(frames[-1], timestamp=str((len(frames) - 1) * 20))))
            await realtime.wait_for(lambda: len(appended()) == len(frames), timeout=5)
            assert appended() == frames
