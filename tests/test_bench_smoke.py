"""A smoke run of the benchmark harness: 2 calls for 2 s through the real server.

It checks the harness is correct — every frame sent comes back on its own call and is
matched, marks are echoed, the report has every field with sane values, the JSON and the
plot are written — and never asserts timing: latency and CPU on a shared test machine are
not a test's business (`make bench` measures them).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench import report
from bench.run import BenchConfig, parse_config, run_bench
from tests.dockerfile import ROOT
from voicebridge.call.playback import MARK_EVERY_MS

CALLS = 2
DURATION_S = 2.0
FRAMES_PER_CALL = int(DURATION_S * 1000 / 20)


@pytest.mark.timeout(60)
async def test_two_calls_every_frame_matched(tmp_path: Path) -> None:
    cfg = BenchConfig(
        calls=[CALLS], duration_s=DURATION_S, results_dir=tmp_path, name="smoke", verbose=False
    )
    result = await run_bench(cfg)

    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["levels"][0]["frames"] == result["levels"][0]["frames"]
    assert (tmp_path / "smoke.png").read_bytes().startswith(b"\x89PNG")
    assert result["stopped"] is None
    [level] = result["levels"]

    frames = level["frames"]
    assert frames["sent"] == CALLS * FRAMES_PER_CALL
    assert frames["matched"] == frames["sent"]
    assert frames["lost"] == frames["duplicates"] == frames["corrupt"] == 0
    assert frames["direct_sent"] == level["direct_streams"] * FRAMES_PER_CALL
    assert frames["direct_lost"] == 0
    assert level["failed_calls"] == 0
    assert level["closed_by_server_after_stop"] == CALLS  # hang-up handled like Twilio's

    # a mark per ~100 ms of forwarded audio (probes included), every one echoed back
    frames_per_mark = MARK_EVERY_MS // 20
    assert level["marks"]["received"] >= frames["sent"] // frames_per_mark
    assert level["marks"]["echoed"] == level["marks"]["received"]

    for key in ("added_ms", "bridge_rtt_ms", "direct_rtt_ms"):
        figures = level[key]
        assert set(figures) >= {"p50", "p99", "max"}
        assert all(math.isfinite(figures[q]) for q in ("p50", "p99", "max"))
        assert figures["p50"] <= figures["p99"] <= figures["max"]
    assert level["added_ms"]["count"] == frames["matched"]
    assert 0 < level["bridge_rtt_ms"]["p50"] < 10_000  # positive and not absurd; no timing

    server = level["server"]
    assert server["cpu_s"] > 0
    assert server["cpu_s_per_call_minute"] > 0
    assert server["rss_idle_mb"] > 0
    assert server["rss_load_mb"] >= server["rss_idle_mb"] * 0.5
    assert math.isfinite(server["rss_per_call_kb"])
    assert level["window_s"] >= DURATION_S * 0.9
    assert level["generator"]["cpu_pct"] >= 0
    assert isinstance(level["warnings"], list)

    assert str(CALLS) in report.table(result["levels"])


def test_results_go_where_asked_and_by_default_where_git_ignores_them(tmp_path: Path) -> None:
    assert parse_config(["--out", str(tmp_path)]).results_dir == tmp_path
    default = parse_config([])
    assert BenchConfig().results_dir == default.results_dir
    written = default.results_dir / f"{default.name}.json"
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", str(written.relative_to(ROOT))],
        cwd=ROOT,
        check=False,
    )
    assert ignored.returncode == 0, f"{written} would be committed"
