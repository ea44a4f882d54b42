"""Percentiles and the added-latency arithmetic, in plain Python (no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

BUCKET_S = 1.0  # the baseline median is taken per second of send time


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100); NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values_s: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of values in seconds."""
    ordered = sorted(values_s)
    if not ordered:
        return {"count": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50) * 1000, 3),
        "p90": round(percentile(ordered, 90) * 1000, 3),
        "p99": round(percentile(ordered, 99) * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
        "mean": round(sum(ordered) / len(ordered) * 1000, 3),
    }


def bucket_medians(samples: Iterable[tuple[float, float]], t0: float) -> dict[int, float]:
    """Median round trip per `BUCKET_S` of send time, from (sent_at, rtt) pairs."""
    buckets: dict[int, list[float]] = {}
    for sent_at, rtt in samples:
        buckets.setdefault(int((sent_at - t0) // BUCKET_S), []).append(rtt)
    return {key: percentile(sorted(values), 50) for key, values in buckets.items()}


def added_latencies(
    bridged: Iterable[tuple[float, float]], direct: Sequence[tuple[float, float]], t0: float
) -> list[float]:
    """Per bridged frame: its round trip minus the direct round trip's median in the same
    second. Subtracting a contemporaneous median (not a global one) cancels what the whole
    machine does at that moment (the double's and the generator's own load), and keeps a
    distribution per frame, so p99 and max of the added latency are meaningful."""
    medians = bucket_medians(direct, t0)
    overall = percentile(sorted(rtt for _, rtt in direct), 50) if direct else 0.0
    return [rtt - medians.get(int((sent_at - t0) // BUCKET_S), overall) for sent_at, rtt in bridged]


def per_second(
    bridged: Iterable[tuple[float, float]], direct: Iterable[tuple[float, float]], t0: float
) -> list[dict[str, float]]:
    """Round trips per second of send time (ms): shows whether a bad p99 is a steady
    state or one disturbance (on a shared machine, usually the latter)."""

    def by_second(samples: Iterable[tuple[float, float]]) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for sent_at, rtt in samples:
            out.setdefault(int((sent_at - t0) // BUCKET_S), []).append(rtt)
        return {key: sorted(values) for key, values in out.items()}

    ours, theirs = by_second(bridged), by_second(direct)
    rows = []
    for second in sorted(ours):
        row = {
            "t": second * BUCKET_S,
            "bridged_p50": percentile(ours[second], 50),
            "bridged_p99": percentile(ours[second], 99),
            "bridged_max": ours[second][-1],
        }
        if second in theirs:
            row["direct_p50"] = percentile(theirs[second], 50)
            row["direct_max"] = theirs[second][-1]
        rows.append(
            {key: round(value * 1000, 3) if key != "t" else value for key, value in row.items()}
        )
    return rows
