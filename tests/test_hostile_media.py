"""A media-stream peer that stops reading costs bounded memory and cannot pin a call: it
is dropped, and a call's time limit and the drain end the call anyway."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.doubles.realtime import RealtimeDouble
from tests.faults.twilio_peer import TwilioPeer
from tests.servers import RunningServer, serve_process
from tests.test_drain import server_env


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


async def active_calls(server: RunningServer) -> int:
    async with httpx.AsyncClient() as client:
        count: int = (await client.get(f"{server.http_url}/healthz")).json()["active_calls"]
        return count


async def test_a_peer_that_floods_pings_and_never_reads_is_dropped(
    realtime: RealtimeDouble, tmp_path: Path
) -> None:
    async with serve_process(server_env(realtime, tmp_path, drain_timeout=5)) as server:
        pid = server.process.pid
        before = memory_kib(pid, "VmRSS")
        async with TwilioPeer(server.ws_url) as peer:
            # Unbounded, the server grew by its pongs: 64 MiB of pings cost it ~90 MiB.
            dropped = await peer.flood_pings(max_bytes=64 << 20, max_seconds=10)
        grown_mib = (memory_kib(pid, "VmHWM") - before) / 1024
        assert dropped, "the server kept a peer that never read its pongs"
        assert grown_mib < 16
        assert await active_calls(server) == 0  # and it serves on
