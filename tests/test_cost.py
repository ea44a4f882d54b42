"""Estimated call cost from token usage."""

from voicebridge.call.cost import cost_record, estimate_usd, prices_for
from voicebridge.call.transcript import TokenUsage


def test_cost_of_a_minute_of_conversation_on_gpt_realtime() -> None:
    # a minute: ~30 s of caller audio (10 tokens/s) and ~30 s of agent audio (20 tokens/s)
    usage = TokenUsage(input_audio_tokens=300, output_audio_tokens=600, input_text_tokens=100)
    assert estimate_usd(usage, prices_for("gpt-realtime")) == round(
        (300 * 32 + 600 * 64 + 100 * 4) / 1e6, 6
    )


def test_cached_input_is_billed_at_the_cached_rate() -> None:
    usage = TokenUsage(input_audio_tokens=1000, input_cached_tokens=800)
    assert estimate_usd(usage, prices_for("gpt-realtime-mini")) == round(
        (200 * 10 + 800 * 0.30) / 1e6, 6
    )


def test_dated_snapshots_and_overrides() -> None:
    assert prices_for("gpt-realtime-2025-08-28") == prices_for("gpt-realtime")
    custom = {
        "my-model": {"audio_in": 1, "cached_in": 0, "audio_out": 2, "text_in": 0, "text_out": 0}
    }
    record = cost_record("my-model", TokenUsage(output_audio_tokens=1_000_000), custom)
    assert record == {"model": "my-model", "estimated_usd": 2.0}
    assert cost_record("unknown", TokenUsage(), None)["estimated_usd"] is None
