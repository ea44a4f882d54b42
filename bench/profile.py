"""Profile the server under load with py-spy: a flame graph, and the hot spots as text.

Two py-spy samplers run side by side in `--nonblocking` mode (no ptrace stop: only one
tracer may attach, and stopping the server would distort the run anyway): one writes the
SVG flame graph, the other collapsed stacks, from which the top functions by own time
and by inclusive time are listed. The profiled run's latency figures are not reported.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_IDLE = ("EpollSelector.select ", "select (selectors.py)")
RATE_HZ = 200


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the dev group installs it), or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out_dir: Path, stem: str) -> Path | None:
    """Sample `pid` for `seconds`; writes `stem.svg` and `stem.txt`; returns the text path."""
    exe = py_spy()
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{stem}.collapsed"
    common = ["record", "--nonblocking", "-r", str(RATE_HZ), "-p", str(pid), "-d"]
    common.append(str(max(1, round(seconds))))
    runs = [
        [exe, *common, "-o", str(out_dir / f"{stem}.svg")],
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
    raw.unlink()
    return text


def hot_spots(collapsed: str, top: int = 30) -> str:
    """Top functions by own and inclusive samples, from py-spy's collapsed stacks.

    Samples waiting in the event loop's `select` are idle time: counted, then left out,
    so the percentages are shares of the time the server was busy."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = [_LINE.sub(")", frame) for frame in stack.split(";")]
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
        "(in select); shares below are of the busy samples",
        "",
        "own time (the frame on top of the stack):",
    ]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time (anywhere on the stack):"]
    lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
