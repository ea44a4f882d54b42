"""Decoding OpenAI's server events: what is not a usable event is an `EventError` (the
call drops and counts it), never another exception, and audio reaches Twilio only as
clean base64."""

from __future__ import annotations

import binascii
import json

import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.faults.junk import OPENAI_JUNK
from voicebridge.realtime import events as rt


def test_events_the_bridge_does_not_act_on_are_skipped_not_errors() -> None:
    assert rt.parse_server_event(b'{"type":"rate_limits.updated","rate_limits":[]}') is None


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"{not json", "bad JSON"),
        (
            b'{"type":"session.created","session":{"x":' + b"[" * 20_000 + b"]" * 20_000 + b"}}",
            "nested too deeply",
        ),
        (b'{"type":"x","y":' + b"[" * 20_000 + b"]" * 20_000 + b"}", "bad message"),
        (b'{"type":"input_audio_buffer.speech_started","item_id":7}', "bad message"),
        (b'{"no_type":1}', "bad message"),
    ],
)
def test_malformed_events_are_event_errors_of_a_fixed_kind(raw: bytes, kind: str) -> None:
    with pytest.raises(rt.EventError) as caught:
        rt.parse_server_event(raw)
    assert caught.value.kind == kind


def test_token_counts_of_the_wrong_type_are_a_bad_event_not_a_crash_later() -> None:
    with pytest.raises(rt.EventError):
        rt.parse_server_event(OPENAI_JUNK[2])
    done = rt.parse_server_event(
        json.dumps(
            {
                "type": "response.done",
                "response": {"usage": {"input_token_details": {"audio_tokens": None}}},
            }
        )
    )
    assert isinstance(done, rt.ResponseDone) and done.response.usage is not None
    assert done.response.usage.input_token_details.audio_tokens is None


def strict_base64_size(text: str) -> int | None:
    if len(text) % 4:
        return None  # binascii lets a lone `=` after a whole group pass; no encoder makes one
    try:
        return len(binascii.a2b_base64(text, strict_mode=True))
    except ValueError:
        return None


@hypothesis_settings(max_examples=2000, derandomize=True)
@given(st.text(alphabet='AB+/z09=" \\\n\x00é', max_size=12))
@example('AAAA"},"x":"')
@example("A===")
@example("AA=A")
@example("====")
def test_audio_is_accepted_exactly_when_it_is_strict_base64(delta: str) -> None:
    """The cheap check (no decoding) agrees with binascii's strict decoder (on whole
    groups of four characters, as every encoder writes them)."""
    expected = strict_base64_size(delta)
    if expected:
        assert rt.audio_bytes(delta) == expected
    else:
        with pytest.raises(rt.EventError):
            rt.audio_bytes(delta)


def test_audio_of_an_insane_size_is_refused() -> None:
    with pytest.raises(rt.EventError):
        rt.audio_bytes("AAAA" * (rt.MAX_DELTA_BYTES // 3 + 1))
