"""A media-stream peer that stops reading costs bounded memory and cannot pin a call: it
is dropped, and a call's time limit and the drain end the call anyway."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.main import create_app
from app.settings import Settings
from app.simulator import new_sid
from tests.conftest import agent_line
from tests.doubles.realtime import RealtimeDouble
from tests.doubles.twilio_rest import FakeTwilioRest
from tests.faults.twilio_peer import TwilioPeer
from tests.servers import RunningServer, serve, serve_process
from tests.test_drain import server_env
from tests.test_security import start_frame
from tests.twilio import answer_call

CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


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


async def start_call(server: RunningServer, peer: TwilioPeer, call_sid: str) -> None:
    """Answer the call, then open its stream as Twilio does; the peer reads nothing."""
    parameters = await answer_call(server, call_sid)
    await peer.send_text(CONNECTED)
    await peer.send_text(start_frame(call_sid, parameters))


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


async def test_a_call_whose_twilio_side_stops_reading_ends_at_its_time_limit(
    realtime: RealtimeDouble,
    settings_with_rest: Callable[..., Settings],
    twilio_rest: FakeTwilioRest,
) -> None:
    realtime.agent_lines = [agent_line("agent_short_reply")]
    settings = settings_with_rest(max_call_seconds=2)
    async with serve(create_app(settings)) as server, TwilioPeer(server.ws_url) as peer:
        call_sid = new_sid("CA")
        twilio_rest.add_call(call_sid)
        await start_call(server, peer, call_sid)  # and it echoes no mark of the goodbye
        (hang_up,) = await realtime.wait_for(
            lambda: twilio_rest.requests_to("POST", f"/Calls/{call_sid}.json"), timeout=15
        )
        assert hang_up.form == {"Status": "completed"}
        await realtime.wait_for(lambda: realtime.sessions[0].closed, timeout=5)
        for _ in range(100):
            if await active_calls(server) == 0:
                break
            await asyncio.sleep(0.05)
        assert await active_calls(server) == 0
    (path,) = Path(settings.transcripts_dir).rglob(f"{call_sid}.json")
    record = json.loads(path.read_text())
    assert "time_limit" in [event["type"] for event in record["events"]]
    assert record["outcome"] == "ended_by_agent"
    assert realtime.connections == 1


async def test_sigterm_ends_a_call_whose_twilio_side_stops_reading(
    realtime: RealtimeDouble, tmp_path: Path
) -> None:
    drain_timeout = 4.0  # the goodbye (at 2 s) cannot be heard by then: the drain hangs up
    realtime.agent_lines = [agent_line("agent_short_reply")]
    async with serve_process(server_env(realtime, tmp_path, drain_timeout)) as server:
        async with TwilioPeer(server.ws_url) as peer:
            call_sid = new_sid("CA")
            await start_call(server, peer, call_sid)
            await realtime.wait_for(lambda: realtime.connections == 1, timeout=5)
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(server.process.wait(), timeout=drain_timeout + 8)
        assert code == 0
    (path,) = (tmp_path / "transcripts").rglob(f"{call_sid}.json")
    record = json.loads(path.read_text())
    assert record["outcome"] == "drained"
    assert "time_limit" in [event["type"] for event in record["events"]]
    assert realtime.sessions[0].closed


async def test_streams_that_never_prove_their_call_are_few_at_once(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """However many sockets a flood opens, only a bounded number wait for their `start`
    (each bounded as above); the rest are refused at the upgrade, with one log line."""
    app = create_app(make_settings(agent_greeting=""))
    app.state.services.max_awaiting_start = 3
    async with serve(app) as server:
        idle = [await connect(server.ws_url) for _ in range(3)]  # no `start`, ever
        for _ in range(10):
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ws_url)
            assert refused.value.response.status_code == 403
        for ws in idle:
            await ws.close()
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid)
        async with connect(server.ws_url) as ws:  # room again: a real call gets in
            await ws.send(start_frame(call_sid, parameters))
            await realtime.wait_for(lambda: realtime.connections == 1)
    refusals = [r for r in caplog.records if "wait for their start" in r.getMessage()]
    assert len(refusals) == 1
