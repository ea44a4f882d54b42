"""The load generator process: N Twilio calls through the bridge plus direct streams to the
double, all paced by one ticker, then the figures as JSON.

Run by `bench.run` as `python -m bench.loadgen ...`; it reports its phases on stdout
(`phase ready|steady|drain|done`) so the orchestrator can sample the server's CPU and RSS
over exactly the steady window.

Pacing: call i is offset by i/N of a frame, so frames are spread evenly over each 20 ms
instead of arriving as one burst (real calls are not phase-locked). One ticker wakes once
per millisecond and sends the frames due in that slot; a late tick (send lag) is recorded,
since growing lag means the generator, not the bridge, is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench import stats
from bench.streams import MARK_MODES, DirectStream, Stream, TwilioStream
from voicebridge.ulaw import FRAME_MS

SLOT_MS = 1
SLOTS = FRAME_MS // SLOT_MS
DIRECT_INDEX = 1_000_000  # direct streams' tags, far from any call index
CONNECT_CONCURRENCY = 25
READY_TIMEOUT_S = 30.0
SATURATED_CPU_PCT = 90.0
SATURATED_LAG_MS = 5.0


@dataclass
class LoadConfig:
    server_url: str
    double_url: str
    calls: int
    duration_s: float
    direct_streams: int = 2
    mark_mode: str = "played"
    drain_s: float = 3.0
    quiet: bool = False


@dataclass
class LoadRun:
    """What happened, for `summarise`."""

    calls: list[TwilioStream]
    direct: list[DirectStream]
    t0: float = 0.0
    lags: array[float] = field(default_factory=lambda: array("d"))
    cpu_s: float = 0.0
    wall_s: float = 0.0
    hangup_closed: int = 0


def _phase(name: str, quiet: bool) -> None:
    if not quiet:
        print(f"phase {name}", flush=True)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


async def _open_all(cfg: LoadConfig, run: LoadRun) -> None:
    """Connect every stream (bounded concurrency), then probe until each is bridged."""
    host, port = _host_port(cfg.server_url)
    dhost, dport = _host_port(cfg.double_url)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(stream: Stream) -> None:
        async with gate:
            try:
                if isinstance(stream, TwilioStream):
                    await stream.open_call(host, port)
                elif isinstance(stream, DirectStream):
                    await stream.open_direct(dhost, dport)
            except (OSError, ConnectionError) as error:
                stream.failed = f"connect: {error}"

    streams: list[Stream] = [*run.calls, *run.direct]
    await asyncio.gather(*(open_one(s) for s in streams))
    deadline = time.perf_counter() + READY_TIMEOUT_S
    while time.perf_counter() < deadline:
        waiting = [s for s in streams if not s.ready and s.failed is None and s.open]
        if not waiting:
            break
        for stream in waiting:
            stream.probe()
        await asyncio.sleep(0.1)
    for stream in streams:
        if not stream.ready and stream.failed is None:
            stream.failed = "never bridged (no probe came back)"


def _slots(calls: Sequence[Stream], direct: Sequence[Stream]) -> list[list[Stream]]:
    """Streams per 1 ms slot: calls spread evenly over the 20 ms frame, direct streams
    in between them."""
    slots: list[list[Stream]] = [[] for _ in range(SLOTS)]
    for group in (calls, direct):
        for i, stream in enumerate(group):
            offset_ms = (i + (0.5 if group is direct else 0.0)) * FRAME_MS / len(group)
            slots[int(offset_ms // SLOT_MS) % SLOTS].append(stream)
    return slots


async def _stream_all(cfg: LoadConfig, run: LoadRun, frames_total: int) -> None:
    """Send every frame on schedule, then keep ticking (marks only) until drained."""
    slots = _slots(run.calls, run.direct)
    everyone = [*run.calls, *run.direct]
    me = psutil.Process()
    t0 = time.perf_counter() + 0.05
    run.t0 = t0
    _phase("steady", cfg.quiet)
    cpu0 = me.cpu_times()
    ticks = frames_total * SLOTS
    tick = 0
    sleep = asyncio.sleep
    clock = time.perf_counter
    while True:
        due = t0 + tick * SLOT_MS / 1000
        now = clock()
        if now < due:
            await sleep(due - now)
            now = clock()
        sending = tick < ticks
        if sending:
            run.lags.append(now - due)
        elif tick == ticks:
            cpu1 = me.cpu_times()
            run.cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            run.wall_s = now - t0
            _phase("drain", cfg.quiet)
        seq = tick // SLOTS if sending else None
        for stream in slots[tick % SLOTS]:
            stream.tick(seq, now)
        tick += 1
        if not sending and (now - t0 > ticks * SLOT_MS / 1000 + cfg.drain_s or _drained(everyone)):
            break


def _drained(streams: Sequence[Stream]) -> bool:
    return all(
        s.matched >= s.sent and not (isinstance(s, TwilioStream) and s.marks_pending)
        for s in streams
        if s.open
    )


async def _hang_up(run: LoadRun) -> None:
    """`stop` on every call, as Twilio sends at hang-up; wait for the server to close."""
    for call in run.calls:
        call.hang_up()
    waits = [c.client.closed for c in run.calls if c.client is not None]
    waits += [d.client.closed for d in run.direct if d.client is not None]
    for direct in run.direct:
        if direct.client is not None:
            direct.client.close()
    if waits:
        await asyncio.wait(waits, timeout=5.0)
    run.hangup_closed = sum(1 for c in run.calls if c.client and c.client.closed.done())
    for stream in (*run.calls, *run.direct):
        if stream.client is not None and stream.client.transport is not None:
            stream.client.transport.abort()


async def generate(cfg: LoadConfig) -> dict[str, Any]:
    """Run the load and return the figures (see `summarise`)."""
    if cfg.mark_mode not in MARK_MODES:
        raise ValueError(f"mark_mode must be one of {MARK_MODES}")
    frames_total = max(1, round(cfg.duration_s * 1000 / FRAME_MS))
    run = LoadRun(
        calls=[TwilioStream(i, frames_total, cfg.mark_mode) for i in range(cfg.calls)],
        direct=[DirectStream(DIRECT_INDEX + k, frames_total) for k in range(cfg.direct_streams)],
    )
    await _open_all(cfg, run)
    _phase("ready", cfg.quiet)
    gc.collect()
    gc.freeze()  # the setup's objects are never garbage: keep collections short
    await _stream_all(cfg, run, frames_total)
    await _hang_up(run)
    _phase("done", cfg.quiet)
    return summarise(cfg, run)


def summarise(cfg: LoadConfig, run: LoadRun) -> dict[str, Any]:
    """The level's figures: frames, round trips, added latency, generator health."""
    calls, direct = run.calls, run.direct
    bridged = [sample for call in calls for sample in call.samples()]
    baseline = [sample for d in direct for sample in d.samples()]
    added = stats.added_latencies(bridged, baseline, run.t0)
    bridge_ms = stats.summary_ms(rtt for _, rtt in bridged)
    direct_ms = stats.summary_ms(rtt for _, rtt in baseline)
    sent = sum(c.sent for c in calls)
    matched = sum(c.matched for c in calls)
    lags = sorted(run.lags)
    quarter = max(1, len(lags) // 4)
    lag_trend = (sum(run.lags[-quarter:]) - sum(run.lags[:quarter])) / quarter
    cpu_pct = 100 * run.cpu_s / run.wall_s if run.wall_s else 0.0
    warnings = []
    if cpu_pct >= SATURATED_CPU_PCT:
        warnings.append(f"load generator CPU at {cpu_pct:.0f}% of a core: it may be the limit")
    lag_p99_ms = stats.percentile(lags, 99) * 1000 if lags else 0.0
    if lag_p99_ms > SATURATED_LAG_MS or lag_trend * 1000 > SATURATED_LAG_MS:
        warnings.append(
            f"send lag p99 {lag_p99_ms:.1f} ms, trend {lag_trend * 1000:+.1f} ms: "
            "the generator falls behind real time"
        )
    failed = [c.failed for c in calls if c.failed]
    return {
        "calls": cfg.calls,
        "duration_s": cfg.duration_s,
        "mark_mode": cfg.mark_mode,
        "direct_streams": cfg.direct_streams,
        "frames": {
            "sent": sent,
            "matched": matched,
            "lost": sent - matched,
            "duplicates": sum(c.duplicates for c in calls),
            "corrupt": sum(c.corrupt for c in calls),
            "direct_sent": sum(d.sent for d in direct),
            "direct_lost": sum(d.sent - d.matched for d in direct),
        },
        "marks": {
            "received": sum(c.marks_received for c in calls),
            "echoed": sum(c.marks_echoed for c in calls),
        },
        "failed_calls": len(failed),
        "failures": sorted(set(failed))[:5],
        "closed_by_server_after_stop": run.hangup_closed,
        "added_ms": stats.summary_ms(added),
        "added_by_percentile_ms": {
            q: round(bridge_ms[q] - direct_ms[q], 3) for q in ("p50", "p90", "p99")
        },
        "bridge_rtt_ms": bridge_ms,
        "direct_rtt_ms": direct_ms,
        "per_second_ms": stats.per_second(bridged, baseline, run.t0),
        "generator": {
            "cpu_pct": round(cpu_pct, 1),
            "send_lag_ms": stats.summary_ms(lags),
            "lag_trend_ms": round(lag_trend * 1000, 3),
            "warnings": warnings,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="ws://host:port of the bridge")
    parser.add_argument("--double", required=True, help="ws://host:port of the double")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="seconds of audio")
    parser.add_argument("--direct-streams", type=int, default=2)
    parser.add_argument("--marks", choices=MARK_MODES, default="played")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args(argv)
    cfg = LoadConfig(
        server_url=args.server,
        double_url=args.double,
        calls=args.calls,
        duration_s=args.duration,
        direct_streams=args.direct_streams,
        mark_mode=args.marks,
    )
    result = asyncio.run(generate(cfg))
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
