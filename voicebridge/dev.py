"""`voicebridge dev` (what `make dev` runs): from a fresh clone to a ringing phone.

In order, each step undone on the way out (Ctrl-C, SIGTERM, SIGHUP, or a failure half-way),
the last one first:

1. check that the port is free and that Twilio knows the credentials and the number
   (a typo fails in a second, before anything is started for nothing);
2. open an ngrok tunnel to the port (skipped when PUBLIC_BASE_URL names your own tunnel);
3. start the server with auto-reload, PUBLIC_BASE_URL in its environment, and wait until
   it answers;
4. point the number's voice webhook at `<public URL>/twilio/voice` → undo: put the old
   one back;
5. print the banner, then wait for the server to stop or a signal.

The steps that reach the outside world come in as `DevDependencies`, so tests run this
very orchestration against a fake Twilio API and a stand-in ngrok agent, or against
stand-ins that fail on cue.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Protocol

from voicebridge.errors import CommandError
from voicebridge.settings import DevSettings
from voicebridge.telephony.rest import (
    TwilioAccountError,
    TwilioNumber,
    VoiceWebhook,
    voice_webhook_url,
)
from voicebridge.tunnel import TunnelError, open_tunnel, require_pyngrok

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class PublicTunnel(Protocol):
    @property
    def public_url(self) -> str: ...

    def close(self) -> None: ...


class ServerProcess(Protocol):
    def wait_ready(self) -> None:
        """Return once the server answers; raise `CommandError` if it dies first."""

    def wait(self) -> int:
        """Block until the server exits; its exit status."""

    def stop(self) -> None: ...


class PhoneNumber(Protocol):
    def current(self) -> VoiceWebhook: ...

    def point_number(self, url: str) -> VoiceWebhook: ...

    def restore(self, previous: VoiceWebhook) -> None: ...


@dataclass(frozen=True)
class DevDependencies:
    """What `run_dev` starts and talks to; `real()` for the real world."""

    phone_number: Callable[[DevSettings], PhoneNumber]
    open_tunnel: Callable[[DevSettings, int], PublicTunnel]
    start_server: Callable[[int, str], ServerProcess]
    say: Callable[[str], None]

    @classmethod
    def real(cls) -> DevDependencies:
        return cls(
            phone_number=TwilioNumber.from_settings,
            open_tunnel=_ngrok_tunnel,
            start_server=DevServer,
            say=partial(print, flush=True),  # shown at once, even when piped
        )


def run_dev(settings: DevSettings, port: int, deps: DevDependencies) -> int:
    """Run until Ctrl-C, SIGTERM or the server stops; undo everything; the exit status.

    Problems the user can fix (port in use, Twilio, ngrok) raise `CommandError`, after
    the undoing.
    """
    undo = ExitStack()
    try:
        with _signals_interrupt():
            return _up(settings, port, deps, undo)
    except KeyboardInterrupt:
        deps.say("\nStopping…")
        return 0
    except (TunnelError, TwilioAccountError) as error:
        raise CommandError(str(error)) from None
    finally:
        with _signals_ignored():
            undo.close()


def _up(settings: DevSettings, port: int, deps: DevDependencies, undo: ExitStack) -> int:
    if settings.public_base_url is None:
        require_pyngrok()
    ensure_port_free(port)
    number = deps.phone_number(settings)
    number.current()  # bad credentials or an unknown number fail here, before anything starts

    public_url = settings.public_base_url
    if public_url is None:
        tunnel = deps.open_tunnel(settings, port)
        undo.callback(tunnel.close)
        public_url = tunnel.public_url

    server = deps.start_server(port, public_url)
    undo.callback(server.stop)
    server.wait_ready()

    webhook = voice_webhook_url(public_url)
    previous = number.point_number(webhook)
    undo.callback(_restore, number, previous, settings.twilio_phone_number, deps.say)

    deps.say(banner(settings, public_url, webhook, previous, port))
    status = server.wait()
    deps.say(f"The server stopped (exit status {status}).")
    return status


def _restore(
    number: PhoneNumber, previous: VoiceWebhook, phone: str, say: Callable[[str], None]
) -> None:
    """Put the old webhook back; if Twilio cannot be reached, say what to set by hand."""
    try:
        number.restore(previous)
    except TwilioAccountError as error:
        say(f"Could not restore {phone}'s voice webhook ({error}). Set it back to: {previous}")
    else:
        say(f"{phone} is back to its previous voice webhook: {previous}")


def banner(
    settings: DevSettings, public_url: str, webhook: str, previous: VoiceWebhook, port: int
) -> str:
    rule = "─" * 72
    return "\n".join(
        [
            rule,
            f"  VoiceBridge is live. Call {settings.twilio_phone_number} now.",
            "",
            f"  Public URL     {public_url} → http://127.0.0.1:{port}",
            f"  Voice webhook  {webhook} (POST)",
            f"                 was: {previous}",
            f"  Transcripts    {settings.transcripts_dir.resolve()}{os.sep}",
            "  Code changes   restart the server by themselves (voicebridge/ is watched)",
            "",
            "  Ctrl-C stops everything and gives the number its previous webhook back.",
            rule,
        ]
    )


def ensure_port_free(port: int, host: str = "127.0.0.1", command: str = "make dev") -> None:
    """One line for a port in use, before uvicorn would log its own error lines."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        # As uvicorn does: a just-closed server's lingering connections are no conflict.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise CommandError(
                f"port {port} is already in use (another server?): stop it, "
                f"or pick another port, e.g. PORT={port + 1} {command}"
            ) from None


class DevServer:
    """`voicebridge serve --reload` in a child process, told its public URL."""

    def __init__(self, port: int, public_base_url: str) -> None:
        self.port = port
        command = ["serve", "--reload", "--host", "127.0.0.1", "--port", str(port)]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "voicebridge", *command],
            env={**os.environ, "PUBLIC_BASE_URL": public_base_url},
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status = self._process.poll()
            if status is not None:
                raise CommandError(
                    f"the server exited during start-up (exit status {status}); its output is above"
                )
            if self._answers():
                return
            time.sleep(0.1)
        raise CommandError(
            f"the server did not answer on port {self.port} within {READY_TIMEOUT_S:.0f} s"
        )

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def wait(self) -> int:
        return self._process.wait()

    def stop(self) -> None:
        if self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _ngrok_tunnel(settings: DevSettings, port: int) -> PublicTunnel:
    assert settings.ngrok_authtoken is not None  # DevSettings requires it without a URL
    return open_tunnel(
        port,
        authtoken=settings.ngrok_authtoken.get_secret_value(),
        domain=settings.ngrok_domain,
        ngrok_path=settings.ngrok_path,
    )


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) stop `make dev` the way Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While undoing, another Ctrl-C must not cut the restoring of the webhook short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, *_STOP_SIGNALS)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
