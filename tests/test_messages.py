"""Twilio stream message parsing and the frames we send back."""

import json

import pytest

from voicebridge.telephony.messages import (
    Media,
    MessageError,
    Start,
    StreamWriter,
    UnknownEvent,
    parse_message,
)

START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": "MZ00000000000000000000000000000001",
    "start": {
        "accountSid": "AC00000000000000000000000000000001",
        "streamSid": "MZ00000000000000000000000000000001",
        "callSid": "CA00000000000000000000000000000001",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"from": "+15550001111", "direction": "inbound"},
    },
}


def test_start_message_exposes_call_and_parameters() -> None:
    message = parse_message(json.dumps(START))
    assert isinstance(message, Start)
    assert message.start.call_sid == "CA00000000000000000000000000000001"
    assert message.start.custom_parameters["from"] == "+15550001111"


def test_media_message_reads_the_timestamp_twilio_sends_as_a_string() -> None:
    frame = {
        "event": "media",
        "sequenceNumber": "4",
        "streamSid": "MZ1",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "//8="},
    }
    message = parse_message(json.dumps(frame))
    assert isinstance(message, Media)
    assert (message.media.timestamp, message.media.payload) == (5, "//8=")
    with pytest.raises(MessageError):
        parse_message(json.dumps({**frame, "media": {**frame["media"], "timestamp": "soon"}}))


@pytest.mark.parametrize(
    "raw", ["not json", "[]", '{"event":"media","streamSid":"MZ1"}', '{"event":"start"}']
)
def test_malformed_messages_raise_a_clear_error(raw: str) -> None:
    with pytest.raises(MessageError):
        parse_message(raw)


def test_unknown_event_is_reported_not_an_error() -> None:
    assert parse_message('{"event":"surprise","x":1}') == UnknownEvent("surprise")


def test_outbound_frames_are_exactly_twilios_three_shapes() -> None:
    writer = StreamWriter('MZ"odd')
    assert json.loads(writer.media("AAAA")) == {
        "event": "media",
        "streamSid": 'MZ"odd',
        "media": {"payload": "AAAA"},
    }
    assert json.loads(writer.mark("7")) == {
        "event": "mark",
        "streamSid": 'MZ"odd',
        "mark": {"name": "7"},
    }
    assert json.loads(writer.clear()) == {"event": "clear", "streamSid": 'MZ"odd'}


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("{not json", "bad JSON"),
        ('{"event":"media","x":' + "[" * 20_000 + "]" * 20_000 + "}", "nested too deeply"),
        ('{"event":"media","media":{"payload":5}}', "bad message"),
    ],
)
def test_every_malformed_message_is_a_message_error_of_a_fixed_kind(raw: str, kind: str) -> None:
    """Deep nesting once escaped as RecursionError and ended the call."""
    with pytest.raises(MessageError) as caught:
        parse_message(raw)
    assert caught.value.kind == kind
