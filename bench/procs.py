"""Starting, pinning, measuring and stopping the benchmark's processes.

The server is the production entry point (`voicebridge serve`, run as `python -m voicebridge
serve`) in its own process with the settings a local experiment uses: the Realtime URL of
the double, a dummy key, TWILIO_VALIDATE_SIGNATURES=false (so a stream needs no token
from the voice webhook), LOG_LEVEL=WARNING, and a transcripts directory of its own. Its
working directory is that scratch directory too, so a developer's `.env` is not read.

Pinning: the server gets core 0 to itself; the double, the load generator and this
orchestrator share core 1. Each process is single-threaded asyncio, so the server then
competes with nothing, and a saturated generator shows up as its own CPU% and send lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_CORE = 0
LOAD_CORE = 1
SERVER_LOG = "server.log"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _usable_cores() -> set[int]:
    affinity = getattr(os, "sched_getaffinity", None)
    return set(affinity(0)) if affinity is not None else set()


_USABLE_CORES = _usable_cores()  # read before anything (the orchestrator too) is pinned


def can_pin() -> bool:
    """Pinning needs two cores we may use; with fewer, everything shares and we say so."""
    return {SERVER_CORE, LOAD_CORE} <= _USABLE_CORES


def pin(pid: int, core: int) -> None:
    if can_pin():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {core})


@dataclass
class Child:
    """A child process and its psutil handle."""

    proc: asyncio.subprocess.Process
    ps: psutil.Process

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        total, _ = self.cpu_and_kernel_s()
        return total

    def cpu_and_kernel_s(self) -> tuple[float, float]:
        """CPU seconds in all, and of them in the kernel, from one reading."""
        times = self.ps.cpu_times()
        return float(times.user + times.system), float(times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


def machine_busy_s() -> float:
    """CPU seconds every core has spent busy since boot (everything but idle and iowait)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def own_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


async def _spawn(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    core: int,
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int | IO[bytes] | None = None,
) -> Child:
    """Start a child pinned to `core`; its stderr goes to ours unless redirected."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr
    )
    pin(proc.pid, core)
    return Child(proc, psutil.Process(proc.pid))


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def start_double() -> tuple[Child, int]:
    """The echo double; returns it and the port it listens on."""
    child = await _spawn(
        [sys.executable, "-m", "bench.double"], REPO_ROOT, _python_env(), LOAD_CORE
    )
    assert child.proc.stdout is not None
    line = await asyncio.wait_for(child.proc.stdout.readline(), 30)
    if not line.startswith(b"port "):
        await child.stop()
        raise RuntimeError(f"the double did not start: {line!r}")
    return child, int(line.split()[1])


async def start_server(double_port: int, max_calls: int, scratch: Path) -> tuple[Child, int]:
    """`voicebridge serve` on a free port, pointed at the double; waits until it answers.
    Its log (stderr) goes to `scratch/server.log`, read back for errors after the run."""
    port = free_port()
    env = _python_env()
    for name in list(env):  # only what we set below configures this server
        if name.upper().startswith(("OPENAI_", "TWILIO_", "AGENT_", "PUBLIC_", "STREAM_")):
            del env[name]
    env.update(
        OPENAI_API_KEY="sk-bench-not-a-key",
        OPENAI_REALTIME_URL=f"ws://127.0.0.1:{double_port}/v1/realtime",
        TWILIO_VALIDATE_SIGNATURES="false",
        LOG_LEVEL="WARNING",
        TRANSCRIPTS_DIR=str(scratch / "transcripts"),
        MAX_CONCURRENT_CALLS=str(max_calls),
    )
    args = [
        sys.executable,
        "-m",
        "voicebridge",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (scratch / SERVER_LOG).open("ab") as log:  # the child keeps its own descriptor
        child = await _spawn(args, scratch, env, SERVER_CORE, asyncio.subprocess.DEVNULL, log)
    await _wait_listening(child, port)
    return child, port


async def _wait_listening(child: Child, port: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if child.proc.returncode is not None:
            raise RuntimeError(f"the server exited with code {child.proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    await child.stop()
    raise RuntimeError("the server did not start listening")


async def start_loadgen(args: list[str]) -> Child:
    return await _spawn(
        [sys.executable, "-m", "bench.loadgen", *args], REPO_ROOT, _python_env(), LOAD_CORE
    )
