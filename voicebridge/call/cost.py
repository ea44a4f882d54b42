"""Estimated cost of a call from its token usage, per model (USD per 1M tokens).

The prices are public list prices at the time of writing; override them with the
`MODEL_PRICES` setting (JSON, same shape) when they change or for negotiated rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voicebridge.call.transcript import TokenUsage


@dataclass(frozen=True, slots=True)
class Prices:
    audio_in: float
    cached_in: float
    audio_out: float
    text_in: float
    text_out: float


DEFAULT_PRICES: dict[str, Prices] = {
    "gpt-realtime": Prices(audio_in=32, cached_in=0.40, audio_out=64, text_in=4, text_out=16),
    "gpt-realtime-mini": Prices(
        audio_in=10, cached_in=0.30, audio_out=20, text_in=0.60, text_out=2.40
    ),
}


def prices_for(model: str, overrides: dict[str, dict[str, float]] | None = None) -> Prices | None:
    """The price list of `model` (dated snapshots like gpt-realtime-2025-08-28 included)."""
    table: dict[str, Prices] = {**DEFAULT_PRICES}
    for name, values in (overrides or {}).items():
        table[name] = Prices(**values)
    for name in sorted(table, key=len, reverse=True):
        if model == name or model.startswith(f"{name}-"):
            return table[name]
    return None


def estimate_usd(usage: TokenUsage, prices: Prices | None) -> float | None:
    """Cached input is billed at the cached rate and counted against audio input first,
    where almost all of a voice call's input tokens are."""
    if prices is None:
        return None
    cached = usage.input_cached_tokens
    audio_in = max(usage.input_audio_tokens - cached, 0)
    text_in = max(usage.input_text_tokens - max(cached - usage.input_audio_tokens, 0), 0)
    total = (
        audio_in * prices.audio_in
        + cached * prices.cached_in
        + text_in * prices.text_in
        + usage.output_audio_tokens * prices.audio_out
        + usage.output_text_tokens * prices.text_out
    )
    return round(total / 1_000_000, 6)


def cost_record(model: str, usage: TokenUsage, overrides: Any = None) -> dict[str, Any]:
    return {"model": model, "estimated_usd": estimate_usd(usage, prices_for(model, overrides))}
