"""The Realtime double in echo mode, in its own process: `python -m bench.double`.

Echo mode answers every `input_audio_buffer.append` at once with one
`response.output_audio.delta` carrying the same audio; `validate=False` skips the
per-event schema check, which would cost more than the bridge itself.

The double records every event of every session for the tests' assertions. Over a
benchmark that is millions of dicts: memory grows and the garbage collector's full passes
get longer, and their pauses would show up as latency (in the bridged and the direct round
trip alike, but unevenly). So the records are emptied every half second here: the double's
code is unchanged, only its history is not kept.

Prints `port N` once listening; runs until terminated (SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Sequence

from tests.doubles.realtime import RealtimeDouble

TRIM_INTERVAL_S = 0.5


async def _trim_records(double: RealtimeDouble) -> None:
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        for record in double.sessions:
            record.events.clear()
            record.sent.clear()


async def serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with RealtimeDouble(host=host, port=port, echo=True, validate=False) as double:
        gc.collect()
        gc.freeze()
        print(f"port {double.port}", flush=True)
        trim = asyncio.create_task(_trim_records(double))
        await stop.wait()
        trim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trim
        if double.internal_errors:
            print(f"internal errors: {double.internal_errors[:3]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the Realtime double in echo mode")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
