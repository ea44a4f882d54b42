"""Tests of the Realtime API test double, driven by a plain websockets client.

Every server event the double sends is checked against the GA schema of the `openai`
package (`server_event_problems`), so the double itself cannot drift into beta shapes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.doubles.realtime import (
    BYTES_PER_MS,
    ECHO_ITEM_ID,
    AgentLine,
    RealtimeDouble,
    noise_ulaw,
    server_event_problems,
    silence_ulaw,
    tone_ulaw,
)

JSON = dict[str, Any]
AUTH = {"Authorization": "Bearer sk-test"}

GA_SESSION: JSON = {
    "type": "realtime",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "You are a test agent.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "noise_reduction": {"type": "near_field"},
            "transcription": {"model": "whisper-1"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "ash"},
    },
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ],
    "tool_choice": "auto",
}

LINE_MS = 1000
FAST_LINES = [
    AgentLine("Hello there, caller.", tone_ulaw(LINE_MS, 300)),
    AgentLine("Second line.", tone_ulaw(LINE_MS, 350)),
]


class Client:
    """A bare Realtime client: sends JSON events, receives and schema-checks server events."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[JSON] = []

    async def send(self, event: JSON) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout: float = 5.0) -> JSON:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert server_event_problems(raw) == [], raw[:300]
        event: JSON = json.loads(raw)
        self.received.append(event)
        return event

    async def until(self, etype: str, timeout: float = 5.0) -> JSON:
        """Receive until an event of this type arrives (everything is kept in `received`)."""
        while True:
            event = await self.recv(timeout)
            if event["type"] == etype:
                return event

    async def update(self, session: JSON | None = None) -> JSON:
        await self.send({"type": "session.update", "session": session or GA_SESSION})
        return await self.until("session.updated")

    async def append(self, audio: bytes, frame: int = 160) -> None:
        """Send audio in Twilio-sized frames, as the bridge does."""
        for i in range(0, len(audio), frame):
            chunk = audio[i : i + frame]
            await self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
            )

    def types(self) -> list[str]:
        return [e["type"] for e in self.received]


@pytest.fixture
async def double() -> AsyncIterator[RealtimeDouble]:
    async with RealtimeDouble(
        agent_lines=FAST_LINES,
        caller_transcripts=["I'd like a table for two."],
        transcript_delay_s=0.1,
        realtime_factor=50.0,
    ) as d:
        yield d
        assert d.internal_errors == []


async def open_client(d: RealtimeDouble, **headers: str) -> Client:
    ws = await connect(f"{d.url}?model=gpt-realtime", additional_headers={**AUTH, **headers})
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    return client


def caller_turn() -> bytes:
    """500 ms line noise, 1 s 'speech' (a tone), 700 ms silence."""
    return noise_ulaw(500) + tone_ulaw(1000) + silence_ulaw(700)


# ----------------------------------------------------------------------------- session


async def test_session_created_and_ga_update_accepted(double: RealtimeDouble) -> None:
    ws = await connect(f"{double.url}?model=gpt-realtime", additional_headers=AUTH)
    client = Client(ws)
    created = await client.recv()
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["type"] == "realtime"
    assert session["model"] == "gpt-realtime"
    assert session["id"].startswith("sess_")

    updated = await client.update()
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert updated["session"]["audio"]["output"]["voice"] == "ash"
    assert updated["session"]["id"] == session["id"]
    assert double.violations == []

    record = double.latest
    assert record.model == "gpt-realtime"
    assert record.query == {"model": "gpt-realtime"}
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.config["tools"][0]["name"] == "get_weather"
    assert [e.type for e in record.events] == ["session.update"]
    await ws.close()
    await double.wait_for(lambda: record.closed)
    assert record.close_code == 1000


async def test_beta_session_update_is_a_violation(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.send(
        {
            "type": "session.update",
            "session": {"modalities": ["audio"], "input_audio_format": "g711_ulaw"},
        }
    )
    error = await client.until("error")
    assert error["error"]["type"] == "invalid_request_error"
    assert len(double.violations) == 1
    assert double.violations[0].startswith("session.update:")
    assert "'session.type': Field required" in double.violations[0]
    assert "input_audio_format" in double.violations[0]
    # The config is not applied, and the socket stays usable.
    assert double.latest.config["audio"]["input"]["format"]["type"] == "audio/pcm"
    await client.update()
    assert len(double.violations) == 1


async def test_ga_shaped_update_with_a_beta_field_is_a_violation(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.send(
        {"type": "session.update", "session": {**GA_SESSION, "voice": "ash", "temperature": 0.8}}
    )
    error = await client.until("error")
    assert error["error"]["code"] == "unknown_parameter"
    assert "'session.temperature'" in double.violations[0]
    assert "'session.voice'" in double.violations[0]


async def test_strict_types_float_for_int_is_a_violation(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.send(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_x",
            "content_index": 0,
            "audio_end_ms": 12.5,
        }
    )
    await client.until("error")
    assert "audio_end_ms" in double.violations[0]


async def test_beta_header_gets_error_and_close_4000(double: RealtimeDouble) -> None:
    ws = await connect(
        f"{double.url}?model=gpt-realtime",
        additional_headers={**AUTH, "OpenAI-Beta": "realtime=v1"},
    )
    client = Client(ws)
    error = await client.recv()
    assert error["type"] == "error"
    assert error["error"]["code"] == "beta_api_shape_disabled"
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert any("OpenAI-Beta" in v for v in double.violations)


async def test_missing_bearer_is_refused_with_401(double: RealtimeDouble) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{double.url}?model=gpt-realtime")
    assert refused.value.response.status_code == 401
    assert double.rejected == 1
    assert double.connections == 0
    assert double.violations == ["handshake: no 'Authorization: Bearer <key>' header"]


async def test_garbage_never_crashes_the_double(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.ws.send("not json")
    assert (await client.until("error"))["error"]["code"] == "invalid_json"
    await client.send({"type": "response.audio.delta", "delta": ""})
    assert (await client.until("error"))["error"]["param"] == "type"
    await client.ws.send(b"\x00\x01")
    await client.until("error")
    await client.send({"type": "input_audio_buffer.append", "audio": "!!not base64!!"})
    await client.until("error")
    await client.update()  # still alive
    assert len(double.violations) == 4
    assert double.internal_errors == []


# ----------------------------------------------------------------------------- turns


async def test_speech_turn_gets_a_reply_in_ga_order(double: RealtimeDouble) -> None:
    double.transcript_delay_s = 0.5  # well after the reply's first audio, even on a busy machine
    client = await open_client(double)
    await client.update()
    await client.append(caller_turn())

    started = await client.until("input_audio_buffer.speech_started")
    assert started["audio_start_ms"] == 200  # speech at 500 ms, minus 300 ms prefix padding
    stopped = await client.until("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    assert stopped["audio_end_ms"] == 2000  # speech ends at 1500 ms, + 500 ms of silence
    done = await client.until("response.done")
    transcription = await client.until("conversation.item.input_audio_transcription.completed")

    types = client.types()
    turn = types[types.index("input_audio_buffer.speech_stopped") :]
    assert turn[:4] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    reply = [t for t in turn[4:] if not t.startswith("conversation.item.input_audio")]
    assert reply[:5] == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert reply[-6:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    user_item = client.received[types.index("conversation.item.added")]["item"]
    assert user_item["role"] == "user"
    assert user_item["content"] == [{"type": "input_audio", "transcript": None}]

    # Transcription is asynchronous: here it comes after the reply's first audio.
    assert types.index("response.output_audio.delta") < types.index(
        "conversation.item.input_audio_transcription.completed"
    )
    assert transcription["item_id"] == started["item_id"]
    assert transcription["transcript"] == "I'd like a table for two."

    deltas = [e for e in client.received if e["type"] == "response.output_audio.delta"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in deltas)
    assert audio == FAST_LINES[0].audio
    assert len(deltas) == LINE_MS * BYTES_PER_MS // 800
    words = [e["delta"] for e in client.received if e["type"].endswith("transcript.delta")]
    assert "".join(words) == "Hello there, caller."

    response = done["response"]
    assert response["status"] == "completed"
    item_id = response["output"][0]["id"]
    assert response["output"][0]["content"][0]["transcript"] == "Hello there, caller."
    assert double.produced_ms(item_id) == LINE_MS
    usage = response["usage"]
    assert usage["output_token_details"]["audio_tokens"] == 20  # 1 s at 20 tokens/s
    assert usage["input_token_details"]["audio_tokens"] == 18  # 1.8 s of caller at 10/s
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    record = double.latest
    assert record.audio_bytes == len(caller_turn())
    assert [(t.audio_start_ms, t.audio_end_ms) for t in record.turns] == [(200, 2000)]
    assert record.responses[0].trigger == "turn"
    assert double.violations == []


async def test_noise_and_silence_are_not_speech(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.update()
    await client.append(noise_ulaw(1000, seed=1) + silence_ulaw(1000))
    await double.wait_for(lambda: double.latest.audio_ms == 2000)
    await asyncio.sleep(0.05)
    assert "input_audio_buffer.speech_started" not in [e["type"] for e in double.latest.sent]


async def test_no_transcription_unless_configured(double: RealtimeDouble) -> None:
    client = await open_client(double)
    session = json.loads(json.dumps(GA_SESSION))
    del session["audio"]["input"]["transcription"]
    await client.update(session)
    await client.append(caller_turn())
    await client.until("response.done")
    await asyncio.sleep(0.2)
    assert not double.latest.sent_of("conversation.item.input_audio_transcription.completed")


async def test_without_session_update_audio_formats_are_violations(
    double: RealtimeDouble,
) -> None:
    client = await open_client(double)
    await client.append(caller_turn())
    await client.until("response.done")
    assert len(double.violations) == 2  # once for input, once for output, not per frame
    assert "audio.input.format" in double.violations[0]


async def test_manual_turns_commit_without_vad(double: RealtimeDouble) -> None:
    client = await open_client(double)
    session = json.loads(json.dumps(GA_SESSION))
    session["audio"]["input"]["turn_detection"] = None
    await client.update(session)
    assert double.latest.config["audio"]["input"]["turn_detection"] is None
    await client.append(tone_ulaw(60))
    await client.send({"type": "input_audio_buffer.commit"})
    assert (await client.until("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
    await client.append(tone_ulaw(1000))
    await client.send({"type": "input_audio_buffer.commit"})
    committed = await client.until("input_audio_buffer.committed")
    await client.until("conversation.item.done")
    await asyncio.sleep(0.05)
    sent = [e["type"] for e in double.latest.sent]
    assert "input_audio_buffer.speech_started" not in sent
    assert "response.created" not in sent  # the client decides when to respond
    assert double.latest.turns[0].item_id == committed["item_id"]
    assert double.violations == []


async def test_voice_cannot_change_after_audio(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.update()
    await client.send({"type": "response.create"})
    await client.until("response.done")
    await client.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "coral"}}},
        }
    )
    assert (await client.until("error"))["error"]["code"] == "cannot_update_voice"
    assert double.latest.config["audio"]["output"]["voice"] == "ash"
    assert double.violations == ["session.update: voice changed after the first audio output"]


# ----------------------------------------------------------------------------- truncation


async def test_truncate_past_produced_audio_is_the_real_error(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.update()
    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    item_id = done["response"]["output"][0]["id"]

    await client.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 1500,
        }
    )
    error = await client.until("error")
    assert error["error"]["code"] == "invalid_value"
    assert error["error"]["message"] == "Audio content of 1000ms is already shorter than 1500ms"
    assert [(e.item_id, e.produced_ms) for e in double.truncate_errors] == [(item_id, 1000)]

    await client.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 400,
        }
    )
    truncated = await client.until("conversation.item.truncated")
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 400)
    assert [(i, ms) for i, ms, _ in double.latest.truncations] == [(item_id, 400)]
    assert double.item(item_id).truncated_ms == 400

    await client.send(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_unknown",
            "content_index": 0,
            "audio_end_ms": 10,
        }
    )
    error = await client.until("error")
    assert error["error"]["code"] == "item_truncate_invalid_item_id"
    assert len(double.truncate_errors) == 2
    assert double.violations == []


# ----------------------------------------------------------------------------- cancellation


async def test_barge_in_cancels_the_response(double: RealtimeDouble) -> None:
    double.agent_lines = [AgentLine("A long answer that goes on.", tone_ulaw(3000))]
    double.realtime_factor = 2.0  # 3 s of audio takes 1.5 s: room to interrupt
    client = await open_client(double)
    await client.update()
    await client.send({"type": "response.create", "response": {"instructions": "Greet."}})
    await client.until("response.output_audio.delta")
    await client.append(tone_ulaw(200))

    await client.until("input_audio_buffer.speech_started")
    done = await client.until("response.done")
    response = done["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert response["output"][0]["status"] == "incomplete"
    produced = double.produced_ms(response["output"][0]["id"])
    assert 0 < produced < 3000
    types = client.types()
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    assert types[-6:-1] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
    ]
    record = double.latest.responses[0]
    assert (record.status, record.cancel_reason) == ("cancelled", "turn_detected")
    assert double.latest.response_creates[0]["response"]["instructions"] == "Greet."
    assert double.violations == []


async def test_client_cancel_and_cancel_without_response(double: RealtimeDouble) -> None:
    double.realtime_factor = 1.0
    client = await open_client(double)
    await client.update()
    await client.send({"type": "response.cancel"})
    error = await client.until("error")
    assert error["error"]["code"] == "response_cancel_not_active"

    await client.send({"type": "response.create"})
    await client.until("response.output_audio.delta")
    await client.send({"type": "response.create"})
    busy = await client.until("error")
    assert busy["error"]["code"] == "conversation_already_has_active_response"
    await client.send({"type": "response.cancel"})
    done = await client.until("response.done")
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert len(double.latest.response_creates) == 2
    assert len(double.latest.responses) == 1


# ----------------------------------------------------------------------------- items, tools


async def test_function_call_then_output_then_reply(double: RealtimeDouble) -> None:
    double.agent_lines = [
        AgentLine(function_call=("get_weather", '{"city": "Paris, France"}')),
        AgentLine("It is sunny in Paris.", tone_ulaw(400)),
    ]
    client = await open_client(double)
    await client.update()
    await client.send({"type": "response.create"})
    call = await client.until("response.function_call_arguments.done")
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris, France"}
    deltas = [
        e["delta"] for e in client.received if e["type"] == "response.function_call_arguments.delta"
    ]
    assert "".join(deltas) == call["arguments"]
    await client.until("response.done")

    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": '{"sky": "sunny"}',
            },
        }
    )
    added = await client.until("conversation.item.added")
    assert added["item"]["call_id"] == call["call_id"]
    assert added["previous_item_id"] == call["item_id"]
    await client.send({"type": "response.create"})
    done = await client.until("response.done")
    assert done["response"]["output"][0]["content"][0]["transcript"] == "It is sunny in Paris."
    assert double.latest.item_creates[0]["item"]["type"] == "function_call_output"
    assert double.violations == []


async def test_item_create_keeps_client_id_and_checks_call_ids(double: RealtimeDouble) -> None:
    client = await open_client(double)
    await client.update()
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_mine",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello"}],
            },
        }
    )
    added = await client.until("conversation.item.added")
    done = await client.until("conversation.item.done")
    assert added["item"]["id"] == done["item"]["id"] == "item_mine"
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Earlier reply."}],
            },
        }
    )
    assert (await client.until("conversation.item.done"))["previous_item_id"] == "item_mine"
    assert double.violations == []
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_nope", "output": "{}"},
        }
    )
    await client.until("conversation.item.done")
    assert double.violations == [
        "conversation.item.create: function_call_output for unknown call_id 'call_nope'"
    ]


# ----------------------------------------------------------------------------- knobs


async def test_echo_mode_answers_each_append() -> None:
    async with RealtimeDouble(echo=True, validate=False) as d:
        client = await open_client(d)
        audio = tone_ulaw(20)
        await client.append(audio)
        delta = await client.until("response.output_audio.delta")
        assert delta["item_id"] == ECHO_ITEM_ID
        assert base64.b64decode(delta["delta"]) == audio
        assert d.latest.audio_bytes == 160
        assert d.internal_errors == []


async def test_reject_status_then_accept() -> None:
    async with RealtimeDouble(reject_status=503) as d:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{d.url}?model=gpt-realtime", additional_headers=AUTH)
        assert refused.value.response.status_code == 503
        assert (d.rejected, d.connections) == (1, 0)
        d.reject_status = None
        await open_client(d)
        assert d.connections == 1


async def test_drop_after_closes_the_first_connection_with_1011() -> None:
    async with RealtimeDouble(drop_after_s=0.1) as d:
        client = await open_client(d)
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv(timeout=2)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        first = d.sessions[0]
        await d.wait_for(lambda: first.closed)
        assert first.dropped and first.close_code == 1011
        second = await open_client(d)  # only the first connection is dropped
        await asyncio.sleep(0.2)
        await second.update()
        assert not d.sessions[1].dropped


async def test_stall_accepts_but_never_answers() -> None:
    async with RealtimeDouble(stall=True) as d:
        ws = await connect(f"{d.url}?model=gpt-realtime", additional_headers=AUTH)
        await ws.send(json.dumps({"type": "session.update", "session": GA_SESSION}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
        await d.wait_for(lambda: d.latest.events)
        assert d.latest.sent == []
        await ws.close()


async def test_stop_closes_open_connections_cleanly() -> None:
    d = RealtimeDouble(realtime_factor=1.0)
    await d.start()
    client = await open_client(d)
    await client.update()
    await client.send({"type": "response.create"})
    await client.until("response.output_audio.delta")
    await d.stop()  # mid-response
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv(timeout=2)
    record = d.latest
    assert record.closed and record.close_code == 1001
    assert d.internal_errors == []
