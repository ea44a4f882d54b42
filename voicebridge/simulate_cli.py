"""`voicebridge simulate`: try a running server without a phone.

It is a client, not the server: of the settings it reads only what it shares with the
server it calls (TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL, to sign the webhook as Twilio
would) and where transcripts go (to say where this call's is). Whatever can fail before
the call — the WAV, the output path, a server still starting, a refused signature —
fails before it, as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from websockets.exceptions import WebSocketException

from voicebridge.audio import WavFormatError, read_audio_as_ulaw
from voicebridge.errors import CommandError
from voicebridge.settings import CallerSettings, load_settings_as, load_storage_settings
from voicebridge.simulator import CallerSimulator, SimulationSummary, new_sid, ring, run_simulation
from voicebridge.storage.base import CallRef
from voicebridge.storage.render import plural
from voicebridge.ulaw import BYTES_PER_MS, FRAME_MS

WAVS_THAT_WORK = (
    "use a WAV file (PCM 8-32 bit, float, μ-law or A-law; mono or stereo; any sample rate)"
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate", help="call a running server as Twilio would, from a WAV file"
    )
    simulate.add_argument("--wav", type=Path, required=True, help="what the caller says")
    simulate.add_argument(
        "--server", default="http://127.0.0.1:8080", help="the running server's base URL"
    )
    simulate.add_argument(
        "--out", type=Path, default=Path("agent.wav"), help="where to save what the agent said"
    )
    simulate.add_argument("--from", dest="from_number", default="+15550001111")
    simulate.add_argument("--to", dest="to_number", default="+15550002222")
    simulate.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a server that is still starting (default 60)",
    )
    simulate.set_defaults(run=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    """Ring the server's webhook like Twilio, then stream the WAV over the media stream
    its TwiML opens, showing the call's progress on stderr; the result goes to stdout."""
    settings = load_settings_as(CallerSettings)
    audio = caller_audio(args.wav)
    prepare_output(args.out)
    call_sid = new_sid("CA")
    transcript = transcript_location(args.server, CallRef(datetime.now(UTC).date(), call_sid))
    parameters = ring_when_up(args, settings, call_sid)
    stream_url = args.server.replace("http", "ws", 1).rstrip("/") + "/media-stream"
    progress = Progress(len(audio) // BYTES_PER_MS, sys.stderr)
    try:
        summary = asyncio.run(
            run_simulation(
                stream_url,
                audio,
                args.out,
                parameters=parameters,
                call_sid=call_sid,
                watch=progress.watch,
            )
        )
    except (OSError, WebSocketException) as error:
        raise CommandError(f"the media stream at {stream_url} failed: {error}") from None
    finally:
        progress.done()
    print(result_line(summary, args.out))
    print(f"call {call_sid}: transcript {transcript}")
    return 0


def caller_audio(path: Path) -> bytes:
    """The WAV as μ-law 8 kHz, read before anything is called."""
    try:
        audio = read_audio_as_ulaw(path)
    except WavFormatError as error:
        raise CommandError(
            f"{path} is not a WAV simulate can use ({error}): {WAVS_THAT_WORK}"
        ) from None
    except OSError as error:
        raise CommandError(f"cannot read {path} ({error.strerror}): {WAVS_THAT_WORK}") from None
    if not audio:
        raise CommandError(f"{path} holds no audio: {WAVS_THAT_WORK}")
    return audio


def prepare_output(path: Path) -> None:
    """Missing folders are made, as for a download: the call takes a minute and costs
    tokens, and losing its recording over a folder helps no one. What cannot be written
    fails now, before the call."""
    if path.is_dir():
        raise CommandError(f"--out {path} is a directory: name a .wav file in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create {path.parent} for --out: {error.strerror}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CommandError(f"cannot write {path} (--out): choose a writable place")


def transcript_location(server: str, ref: CallRef) -> str:
    """Where the server will store the call, by the storage settings here: the same as
    the server's when it runs beside us (the README's trial); else only it knows."""
    if urlsplit(server).hostname not in LOOPBACK:
        return f"on the server: voicebridge transcripts get {ref.call_sid} (with its settings)"
    storage = load_storage_settings()
    where = (
        f"s3://{storage.transcripts_bucket}/{ref.key}"
        if storage.transcripts_bucket
        else str(storage.transcripts_dir / ref.path)
    )
    return f"{where} (voicebridge transcripts get {ref.call_sid})"


def ring_when_up(
    args: argparse.Namespace, settings: CallerSettings, call_sid: str
) -> dict[str, str]:
    """`ring`, retried for `--wait` seconds while nothing listens yet: the README starts
    the server and this at once, and a first start takes 10-25 s."""
    server, wait_s = args.server, args.wait
    token = settings.twilio_auth_token
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            return ring(
                server,
                call_sid=call_sid,
                caller=args.from_number,
                called=args.to_number,
                auth_token=token.get_secret_value() if token else None,
                public_base_url=settings.public_base_url,
            )
        except HTTPError as error:
            raise CommandError(refusal(server, error)) from None
        except URLError as error:
            starting = isinstance(error.reason, ConnectionRefusedError | ConnectionResetError)
            if not starting:
                raise CommandError(f"cannot reach {server}: {error.reason}") from None
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"no server at {server} after {wait_s:.0f} s: start it (make run), "
                    "or point --server at it"
                ) from None
            if not waiting:
                print(f"waiting for the server at {server} to start…", file=sys.stderr)
                waiting = True
            time.sleep(0.25)
        except ValueError as error:
            raise CommandError(
                f"{server} took no call: {error} (its log says why: e.g. PUBLIC_BASE_URL not set)"
            ) from None


def refusal(server: str, error: HTTPError) -> str:
    if error.code == 403:
        return (
            f"{server} refused the webhook's signature (403): give simulate the server's "
            "TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL (environment or .env), or set "
            "TWILIO_VALIDATE_SIGNATURES=false on the server for a local trial"
        )
    return f"{server} answered the voice webhook with {error.code} {error.reason}"


def result_line(summary: SimulationSummary, out: Path) -> str:
    reply = (
        "no reply heard"
        if summary.reply_latency_ms is None
        else f"first reply {summary.reply_latency_ms} ms after the WAV ended"
    )
    return (
        f"heard {summary.heard_ms / 1000:.1f} s of the agent in "
        f"{plural(summary.utterances, 'utterance')} ({reply}); saved to {out}"
    )


class Progress:
    """The call as it runs, on stderr: one line rewritten in place on a terminal, a
    line every few seconds otherwise (a log, CI). The agent's words are the server's
    (they are in the transcript): here, whether it is speaking and how much was heard."""

    def __init__(self, caller_ms: int, stream: TextIO) -> None:
        self.caller_ms = caller_ms
        self.stream = stream
        self.tty = stream.isatty()
        self.interval_s = 0.2 if self.tty else 5.0
        self._shown = False

    async def watch(self, sim: CallerSimulator) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            self.show(self.line(time.monotonic() - started, sim))

    def line(self, elapsed_s: float, sim: CallerSimulator) -> str:
        sent_ms = min(sim.speech_frames_sent * FRAME_MS, self.caller_ms)
        agent = "speaking" if sim.is_playing else "quiet"
        return (
            f"{elapsed_s:5.1f} s · you: {sent_ms / 1000:.1f} of {self.caller_ms / 1000:.1f} s "
            f"sent · agent: {agent}, {sim.heard_ms / 1000:.1f} s heard"
        )

    def show(self, line: str) -> None:
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        """End the line being rewritten, so what follows starts on its own."""
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
