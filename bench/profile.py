"""Profile the server under load with py-spy: a flame graph, and the hot spots as text.

Two py-spy samplers run side by side. One stops the server for each sample (consistent
stacks; unstopped sampling of a running interpreter tears stacks and over-counts idle)
and writes collapsed stacks, from which the top functions by own and by inclusive time
are listed. The other draws the SVG flame graph in `--nonblocking` mode (only one tracer
may stop a process). Stopping the server distorts latency, so the profiled run is a run
of its own and its figures are not reported.

Reading the text: a Python frame at the top of a stack that is about to call into C
(`transport.write` → `send()`, `secrets.token_bytes` → `getrandom()`) stands for that
C call's time too; py-spy only shows Python frames.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
# Where the event loop's thread waits: in `select`, or (py-spy on 3.11 loses the frames
# under a C call) at the loop's entry point.
_IDLE = ("EpollSelector.select ", "select (selectors.py)", "Runner.run (asyncio/runners.py)")
_OTHER_THREAD = "Thread._bootstrap "  # the logging listener, the transcript-saving pool
RATE_HZ = 200


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the dev group installs it), or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out_dir: Path, stem: str) -> Path | None:
    """Sample `pid` for `seconds`; writes `stem.svg`, `stem.collapsed` (the raw stacks,
    for flamegraph tools or another look) and `stem.txt`; returns the text path."""
    exe = py_spy()
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{stem}.collapsed"
    common = ["record", "-r", str(RATE_HZ), "-p", str(pid), "-d", str(max(1, round(seconds)))]
    runs = [  # only one tracer may stop the process: the flame graph's sampler does not
        [exe, *common, "--nonblocking", "-o", str(out_dir / f"{stem}.svg")],
        [exe, *common, "--format", "raw", "-o", str(raw)],
    ]
    procs = [
        await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        for args in runs
    ]
    await asyncio.gather(*(p.wait() for p in procs))
    if not raw.exists():
        print("py-spy wrote no samples (permissions?)", file=sys.stderr)
        return None
    text = out_dir / f"{stem}.txt"
    text.write_text(hot_spots(raw.read_text()))
    return text


def hot_spots(collapsed: str, top: int = 30) -> str:
    """Top functions by own and inclusive samples, from py-spy's collapsed stacks.

    Only the event loop's thread counts; its samples waiting for I/O are idle time:
    counted, then left out, so the percentages are shares of the time it was busy."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = [_LINE.sub(")", frame) for frame in stack.split(";")]
        if names[0].startswith(_OTHER_THREAD):
            continue
        if names[-1].startswith(_IDLE):
            idle += count
            continue
        total += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "no samples\n"
    lines = [
        f"{total + idle} samples at {RATE_HZ} Hz, {100 * idle / (total + idle):.0f}% idle "
        "(waiting for I/O); shares below are of the event loop's busy samples",
        "",
        "own time (the frame on top of the stack):",
    ]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time (anywhere on the stack):"]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
