"""The benchmark's outputs: JSON, a PNG plot, and a Markdown table for the README."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TARGETS = {"added_p50_ms": 0.5, "added_p99_ms": 2.0, "cpu_s_per_call_minute": 0.25}
TARGET_RSS_KB = 64


def _clean(value: Any) -> Any:
    """NaN/inf become null: the JSON stays strict (readable by any parser)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(levels: list[dict[str, Any]]) -> str:
    """One row per level, the columns the issue's targets are stated in."""
    rows = [
        "| calls | added p50 ms | added p99 ms | added max ms | frames lost | "
        "server CPU s / call-min | of it in the kernel % | RSS / call KB | server CPU % | "
        "generator CPU % | other processes CPU % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        added = level["added_ms"]
        server = level["server"]
        lost = level["frames"]["lost"]
        flag = " ⚠" if level["warnings"] else ""
        rows.append(
            f"| {level['calls']}{flag} | {_fmt(added['p50'])} | {_fmt(added['p99'])} "
            f"| {_fmt(added['max'], 1)} | {lost} "
            f"| {_fmt(server['cpu_s_per_call_minute'], 3)} "
            f"| {_fmt(server.get('kernel_share_pct'), 0)} | {_fmt(server['rss_per_call_kb'], 1)} "
            f"| {_fmt(server['cpu_pct'], 0)} | {_fmt(level['generator']['cpu_pct'], 0)} "
            f"| {_fmt(level['other_processes_cpu_pct'], 0)} |"
        )
    return "\n".join(rows)


def plot(levels: list[dict[str, Any]], path: Path) -> None:
    """Added latency, CPU per call-minute and RSS per call against concurrent calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [level["calls"] for level in levels]
    fig, (lat, cpu, rss) = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for key, style in (("p50", "o-"), ("p99", "s-"), ("max", "^:")):
        lat.plot(calls, [level["added_ms"][key] for level in levels], style, label=key)
    lat.axhline(TARGETS["added_p99_ms"], color="grey", ls="--", lw=0.8, label="p99 target")
    lat.axhline(TARGETS["added_p50_ms"], color="grey", ls=":", lw=0.8, label="p50 target")
    lat.set(title="added latency per frame", xlabel="concurrent calls", ylabel="ms")
    lat.set_yscale("symlog", linthresh=1.0)  # linear below 1 ms, where the targets are
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8)
    cpu.plot(calls, [level["server"]["cpu_s_per_call_minute"] for level in levels], "o-")
    cpu.axhline(TARGETS["cpu_s_per_call_minute"], color="grey", ls="--", lw=0.8, label="target")
    cpu.set(title="server CPU", xlabel="concurrent calls", ylabel="CPU s per call-minute")
    cpu.set_ylim(bottom=0)
    cpu.legend(fontsize=8)
    rss.plot(calls, [level["server"]["rss_per_call_kb"] for level in levels], "o-")
    rss.axhline(TARGET_RSS_KB, color="grey", ls="--", lw=0.8, label="target")
    rss.set(title="server memory", xlabel="concurrent calls", ylabel="RSS per call (KB)")
    rss.legend(fontsize=8)
    for axis in (lat, cpu, rss):
        axis.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
