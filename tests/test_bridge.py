"""The sans-I/O call bridge, driven without sockets and with a fake clock."""

import base64
import json
from typing import Any

import msgspec
import pytest

from tests.test_messages import START
from voicebridge.call.bridge import LAST_WORDS_GRACE_S, LAST_WORDS_MAX_S, CallAction, CallBridge
from voicebridge.realtime import events as rt
from voicebridge.realtime.session import AgentConfig
from voicebridge.telephony.messages import MessageError, parse_message

CONFIG = AgentConfig(
    model="gpt-realtime",
    instructions="Be brief.",
    voice="ash",
    greeting="Hello!",
    transcription_model="whisper-1",
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def started(config: AgentConfig = CONFIG, *, session: bool = True) -> tuple[CallBridge, Clock]:
    """A bridge after `start`, with its first Realtime session open unless `session` is
    false."""
    clock = Clock()
    bridge = CallBridge(config, clock=clock)
    message = parse_message(json.dumps(START))
    assert not isinstance(message, rt.Error)
    bridge.start(message)  # type: ignore[arg-type]
    if session:
        bridge.session_opened()
    return bridge, clock


def take(frames: list[str]) -> list[str]:
    """What the bridge queued for one socket, taken as the call's I/O takes it."""
    taken = list(frames)
    frames.clear()
    return taken


def server(event: dict[str, Any]) -> rt.ServerEvent:
    parsed = rt.parse_server_event(msgspec.json.encode(event))
    assert parsed is not None
    return parsed


def media(payload: bytes, timestamp: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": START["streamSid"],
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": str(timestamp),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def audio_delta(item_id: str, nbytes: int) -> rt.ServerEvent:
    delta = base64.b64encode(b"\x00" * nbytes).decode()
    return server(
        {
            "type": "response.output_audio.delta",
            "item_id": item_id,
            "delta": delta,
            "response_id": "r",
            "output_index": 0,
            "content_index": 0,
        }
    )


def test_start_configures_a_ga_session_and_greets_first() -> None:
    bridge, _ = started()
    update, greet = (json.loads(frame) for frame in take(bridge.to_openai))
    assert update["type"] == "session.update"
    session = update["session"]
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "ash"}
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    assert greet["type"] == "response.create"
    assert "Hello!" in greet["response"]["instructions"]


def test_no_greeting_means_the_agent_waits() -> None:
    bridge, _ = started(AgentConfig("m", "i", "ash", "", "whisper-1"))
    assert [json.loads(f)["type"] for f in take(bridge.to_openai)] == ["session.update"]


def test_caller_audio_goes_to_openai_unchanged() -> None:
    bridge, _ = started()
    take(bridge.to_openai)
    frame = bytes(range(160))
    bridge.twilio_message(parse_message(media(frame, 0)))
    (append,) = (json.loads(f) for f in take(bridge.to_openai))
    assert append == {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(frame).decode(),
    }


def test_timestamp_gap_is_filled_with_mulaw_silence() -> None:
    bridge, _ = started()
    take(bridge.to_openai)
    bridge.twilio_message(parse_message(media(b"\x01" * 160, 0)))
    bridge.twilio_message(parse_message(media(b"\x01" * 160, 120)))  # 100 ms omitted
    first, silence, second = (json.loads(f)["audio"] for f in take(bridge.to_openai))
    assert base64.b64decode(silence) == b"\xff" * 800
    assert base64.b64decode(first) == base64.b64decode(second) == b"\x01" * 160


@pytest.mark.parametrize("payload", ["not base64!", "ÿÿÿÿ", "AAA"])
def test_bad_base64_is_a_message_error(payload: str) -> None:
    bridge, _ = started()
    bad = json.dumps({"event": "media", "media": {"payload": payload, "timestamp": "0"}})
    with pytest.raises(MessageError):
        bridge.twilio_message(parse_message(bad))


def test_agent_audio_goes_to_twilio_followed_by_a_mark() -> None:
    bridge, _ = started()
    bridge.realtime_event(audio_delta("item_a", 800))
    media_frame, mark = (json.loads(f) for f in take(bridge.to_twilio))
    assert media_frame["event"] == "media"
    assert base64.b64decode(media_frame["media"]["payload"]) == b"\x00" * 800
    assert mark["event"] == "mark"
    assert bridge.playback.playing


def test_barge_in_clears_twilio_and_truncates_to_what_was_heard() -> None:
    bridge, clock = started()
    for _ in range(5):
        bridge.realtime_event(audio_delta("item_a", 800))  # 5 x 100 ms, sent at once
    marks = [json.loads(f)["mark"]["name"] for f in take(bridge.to_twilio) if "mark" in f]
    clock.now += 0.1
    bridge.twilio_message(parse_message(json.dumps({"event": "mark", "mark": {"name": marks[0]}})))
    clock.now += 0.05  # 150 ms of playback when the caller starts talking
    take(bridge.to_openai)
    bridge.realtime_event(
        server(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": 900,
                "item_id": "user_1",
            }
        )
    )
    assert [json.loads(f) for f in take(bridge.to_twilio)] == [
        {"event": "clear", "streamSid": START["streamSid"]}
    ]
    (truncate,) = (json.loads(f) for f in take(bridge.to_openai))
    assert truncate == {
        "type": "conversation.item.truncate",
        "item_id": "item_a",
        "content_index": 0,
        "audio_end_ms": 150,
    }
    bridge.realtime_event(audio_delta("item_a", 800))  # late audio of the cut item
    assert not take(bridge.to_twilio)


def test_speech_without_queued_audio_sends_no_clear() -> None:
    bridge, _ = started()
    bridge.realtime_event(
        server(
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "user_1"}
        )
    )
    assert not take(bridge.to_twilio)


def test_transcript_orders_by_item_not_by_arrival() -> None:
    bridge, clock = started()
    bridge.realtime_event(
        server(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": 500,
                "item_id": "user_1",
            }
        )
    )
    clock.now += 2
    bridge.realtime_event(audio_delta("agent_1", 800))
    bridge.realtime_event(
        server(
            {
                "type": "response.output_audio_transcript.done",
                "item_id": "agent_1",
                "transcript": "A table for two, sure.",
                "response_id": "r",
                "output_index": 0,
                "content_index": 0,
            }
        )
    )
    bridge.realtime_event(  # the caller's transcription lands after the reply
        server(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "user_1",
                "content_index": 0,
                "transcript": " Table for two. ",
            }
        )
    )
    assert bridge.transcript is not None
    record = bridge.transcript.to_record(bridge.transcript.call.started_at)
    assert [(t["role"], t["text"]) for t in record["turns"]] == [
        ("caller", "Table for two."),
        ("agent", "A table for two, sure."),
    ]
    assert record["turns"][0]["start_ms"] == 500
    assert record["turns"][1]["start_ms"] == 2000


def test_usage_is_summed_over_responses() -> None:
    bridge, _ = started()
    done = {
        "type": "response.done",
        "response": {
            "id": "r",
            "status": "completed",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 20,
                "input_token_details": {"audio_tokens": 8, "text_tokens": 2, "cached_tokens": 0},
                "output_token_details": {"audio_tokens": 18, "text_tokens": 2},
            },
        },
    }
    bridge.realtime_event(server(done))
    bridge.realtime_event(server(done))
    assert bridge.transcript is not None
    usage = bridge.transcript.to_record(bridge.transcript.call.started_at)["usage"]
    assert (usage["input_tokens"], usage["output_audio_tokens"], usage["responses"]) == (20, 36, 2)


def test_a_replacement_session_is_reseeded_and_gets_the_held_caller_audio() -> None:
    bridge, clock = started(AgentConfig("m", "i", "ash", "Hi!", "whisper-1"))
    bridge.realtime_event(
        server(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "user_1",
                "content_index": 0,
                "transcript": "Table for two.",
            }
        )
    )
    bridge.realtime_event(audio_delta("agent_1", 800))
    bridge.realtime_event(
        server(
            {
                "type": "response.output_audio_transcript.done",
                "item_id": "agent_1",
                "transcript": "Sure.",
                "response_id": "r",
                "output_index": 0,
                "content_index": 0,
            }
        )
    )
    bridge.realtime_event(server({"type": "response.done", "response": {"status": "completed"}}))
    bridge.session_lost("closed with code 1011")
    for n in range(200):  # 4 s of caller audio while reconnecting: only the last 3 s kept
        bridge.twilio_message(parse_message(media(bytes([n % 100]) * 160, 20 * n)))
    assert not take(bridge.to_openai)
    clock.now += 4
    bridge.session_opened()
    frames = [json.loads(f) for f in take(bridge.to_openai)]
    assert frames[0]["type"] == "session.update"
    assert [f["item"]["content"][0]["text"] for f in frames[1:3]] == ["Table for two.", "Sure."]
    assert [f["item"]["role"] for f in frames[1:3]] == ["user", "assistant"]
    appended = [f for f in frames[3:] if f["type"] == "input_audio_buffer.append"]
    assert len(appended) == 150 == len(frames) - 3, "no second greeting, 3 s of audio"
    assert base64.b64decode(appended[-1]["audio"]) == bytes([99]) * 160


def test_stall_is_noticed_only_while_an_answer_is_owed() -> None:
    bridge, clock = started()
    clock.now += 10
    assert bridge.stalled(timeout_s=5)  # session.update never answered
    bridge.realtime_event(server({"type": "session.updated", "session": {}}))
    clock.now += 10
    assert not bridge.stalled(timeout_s=5)  # a quiet line is not a stall


def test_an_answer_lost_with_its_session_is_asked_for_again() -> None:
    bridge, _ = started(AgentConfig("m", "i", "ash", "", "whisper-1"))
    bridge.realtime_event(server({"type": "session.updated", "session": {}}))
    bridge.realtime_event(
        server({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 900, "item_id": "u"})
    )
    bridge.realtime_event(server({"type": "response.created", "response": {"id": "r"}}))
    bridge.realtime_event(audio_delta("agent_1", 800))  # the answer had begun
    bridge.session_lost("closed with code 1006")
    bridge.session_opened()
    sent = [json.loads(f)["type"] for f in take(bridge.to_openai)]
    assert sent[0] == "session.update" and sent[-1] == "response.create"
    bridge.realtime_event(server({"type": "response.done", "response": {"status": "completed"}}))
    bridge.session_lost("closed with code 1006")
    bridge.session_opened()
    assert "response.create" not in [json.loads(f)["type"] for f in take(bridge.to_openai)]


def test_a_quiet_session_is_asked_for_a_sign_of_life_and_a_mute_one_is_stalled() -> None:
    bridge, clock = started(AgentConfig("m", "i", "ash", "", "whisper-1"))
    take(bridge.to_openai)
    bridge.realtime_event(server({"type": "session.updated", "session": {}}))
    assert bridge.watch(stall_timeout_s=8, max_session_s=3000) is None
    clock.now += 1
    assert bridge.watch(stall_timeout_s=8, max_session_s=3000) is None
    assert not take(bridge.to_openai), "a short pause is not probed"
    clock.now += 2
    assert bridge.watch(stall_timeout_s=8, max_session_s=3000) is None
    (probe,) = (json.loads(f) for f in take(bridge.to_openai))
    assert probe == {"type": "session.update", "session": {"type": "realtime"}}
    bridge.realtime_event(server({"type": "session.updated", "session": {}}))  # alive
    clock.now += 9
    assert bridge.watch(stall_timeout_s=8, max_session_s=3000) is None
    clock.now += 2
    assert bridge.watch(stall_timeout_s=8, max_session_s=3000) is None
    assert len(take(bridge.to_openai)) == 1  # the next probe, which nothing answers
    clock.now += 8.5
    assert bridge.watch(stall_timeout_s=8, max_session_s=3000) == "stalled"
    bridge.session_lost("stalled")
    bridge.session_opened()
    last = json.loads(take(bridge.to_openai)[-1])
    assert last["type"] == "response.create", "the agent owns up to the gap"
    assert "repeat" in last["response"]["instructions"]


def test_only_a_session_that_answered_and_lived_a_while_counts_as_working() -> None:
    bridge, clock = started()
    bridge.realtime_event(server({"type": "session.created", "session": {}}))
    clock.now += 5
    bridge.watch(stall_timeout_s=8, max_session_s=3000)
    assert not bridge.session_working, "session.created alone is no answer"
    bridge.realtime_event(server({"type": "session.updated", "session": {}}))
    bridge.watch(stall_timeout_s=8, max_session_s=3000)
    assert bridge.session_working
    bridge.session_lost("closed with code 1011")
    bridge.session_opened()
    bridge.realtime_event(server({"type": "session.updated", "session": {}}))
    clock.now += 1
    bridge.watch(stall_timeout_s=8, max_session_s=3000)
    assert not bridge.session_working, "one that dies at once does not end the outage"


def test_rollover_waits_for_a_pause() -> None:
    bridge, clock = started()
    clock.now += 100
    bridge.realtime_event(server({"type": "response.created", "response": {"id": "r"}}))
    assert not bridge.due_for_rollover(max_session_s=60)  # the agent is answering
    bridge.realtime_event(server({"type": "response.done", "response": {"id": "r"}}))
    bridge.realtime_event(audio_delta("agent_1", 800))
    assert not bridge.due_for_rollover(max_session_s=60)  # its audio is still playing
    bridge.playback.interrupt(clock.now)
    assert bridge.due_for_rollover(max_session_s=60)


def test_agent_audio_is_marked_every_100_ms_and_at_the_end_of_a_response() -> None:
    bridge, _ = started()
    for _ in range(7):
        bridge.realtime_event(audio_delta("item_a", 160))
    events = [json.loads(f)["event"] for f in take(bridge.to_twilio)]
    assert events == ["media"] * 5 + ["mark"] + ["media"] * 2
    bridge.realtime_event(server({"type": "response.done", "response": {"id": "r"}}))
    assert [json.loads(f)["event"] for f in take(bridge.to_twilio)] == ["mark"]


def test_the_time_limit_goodbye_waits_for_the_active_response() -> None:
    bridge, _ = started(AgentConfig("m", "i", "ash", "", "whisper-1"))
    take(bridge.to_openai)
    bridge.realtime_event(server({"type": "response.created", "response": {"id": "r"}}))
    bridge.time_limit_reached()
    assert not take(bridge.to_openai)  # the API refuses a second active response
    bridge.realtime_event(server({"type": "response.done", "response": {"id": "r"}}))
    (goodbye,) = (json.loads(f) for f in take(bridge.to_openai))
    assert "time limit" in goodbye["response"]["instructions"]
    assert bridge.due_action() is None  # not before the goodbye has been said and heard


def saying_goodbye(audio_s: int) -> tuple[CallBridge, Clock]:
    """At the time limit, with `audio_s` of goodbye sent at once (as the model sends it,
    faster than real time) and never echoed as played."""
    bridge, clock = started(AgentConfig("m", "i", "ash", "", "whisper-1"))
    bridge.time_limit_reached()
    bridge.realtime_event(server({"type": "response.created", "response": {"id": "r"}}))
    for _ in range(audio_s * 4):
        bridge.realtime_event(audio_delta("item_bye", 2000))  # 250 ms: exact sums
    return bridge, clock


def test_without_mark_echoes_the_hang_up_waits_for_the_goodbye_to_have_played() -> None:
    """A Twilio side that stops reading echoes no marks: the hang-up is due once the
    goodbye should have played in real time, plus a grace; never later than the cap."""
    bridge, clock = saying_goodbye(2)
    bridge.realtime_event(server({"type": "response.done", "response": {"id": "r"}}))
    clock.now += 2 + LAST_WORDS_GRACE_S - 0.25
    assert bridge.due_action() is None
    clock.now += 0.25
    assert bridge.due_action() == CallAction("hang_up")

    bridge, clock = saying_goodbye(2)
    clock.now += LAST_WORDS_MAX_S - 0.25
    assert bridge.due_action() is None  # the response is still going
    clock.now += 0.25  # and never ends
    assert bridge.due_action() == CallAction("hang_up")


def test_caller_audio_before_the_first_session_opens_reaches_the_model() -> None:
    """A caller who talks at once ("Hi, I'd like to book a table") while the first
    Realtime session is still connecting must not lose the first words."""
    bridge, _ = started(AgentConfig("m", "i", "ash", "", "whisper-1"), session=False)
    for n in range(10):
        bridge.twilio_message(parse_message(media(bytes([n]) * 160, 20 * n)))
    assert not take(bridge.to_openai)
    bridge.session_opened()
    frames = [json.loads(f) for f in take(bridge.to_openai)]
    assert frames[0]["type"] == "session.update"
    sent = [base64.b64decode(f["audio"]) for f in frames[1:]]
    assert sent == [bytes([n]) * 160 for n in range(10)]
