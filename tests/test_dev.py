"""`make dev`: the number is pointed at the tunnel, and always given its webhook back.

The orchestration runs for real against the fake Twilio API (the real twilio SDK over
HTTP) and the stand-in ngrok agent (driven by real pyngrok). In-process tests replace
only the server child by a stand-in that fails on cue; the end-to-end tests run
`voicebridge dev` itself, with its uvicorn server, and stop it with a signal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyngrok import process
from twilio.request_validator import RequestValidator

from tests.doubles.ngrok_agent import FakeNgrokAgent, install
from tests.doubles.twilio_rest import FakeTwilioRest
from tests.servers import free_port
from voicebridge.dev import DevDependencies, PublicTunnel, run_dev
from voicebridge.errors import CommandError
from voicebridge.settings import DevSettings, SettingsError, load_settings_as
from voicebridge.telephony.rest import TwilioAccountError, TwilioNumber
from voicebridge.tunnel import open_tunnel

ROOT = Path(__file__).resolve().parent.parent
NUMBER = "+15551230000"
OLD_URL = "https://old.example.com/voice"
NGROK_TOKEN = "ngrok-test-authtoken-42"


@pytest.fixture
def twilio() -> Iterator[FakeTwilioRest]:
    with FakeTwilioRest() as fake:
        fake.add_number(NUMBER, voice_url=OLD_URL)
        fake.add_number("+15551239999")
        yield fake
    assert fake.errors == []


@pytest.fixture
def agent(tmp_path: Path) -> FakeNgrokAgent:
    return install(tmp_path / "bin", authtoken=NGROK_TOKEN)


def pointed_at(twilio: FakeTwilioRest) -> list[str]:
    """Every voice URL the number was given, in order."""
    return [r.form["VoiceUrl"] for r in twilio.requests_to("POST", "/IncomingPhoneNumbers/")]


# --- in process: the orchestration with a stand-in server -----------------------------


@dataclass
class StubServer:
    """Stands in for the uvicorn child: `wait_ready` and `wait` do what the test says."""

    port: int
    public_url: str
    outcome: int | BaseException
    ready_error: BaseException | None = None
    stopped: bool = False

    def wait_ready(self) -> None:
        if self.ready_error is not None:
            raise self.ready_error

    def wait(self) -> int:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Harness:
    settings: DevSettings
    deps: DevDependencies
    servers: list[StubServer]
    said: list[str]

    def run(self, port: int | None = None) -> int:
        return run_dev(self.settings, port or free_port(), self.deps)


@pytest.fixture
def harness(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path
) -> Callable[..., Harness]:
    def make(
        outcome: int | BaseException = 0,
        *,
        ready_error: BaseException | None = None,
        say: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Harness:
        values: dict[str, Any] = {
            "openai_api_key": "sk-test",
            "public_base_url": None,
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": twilio.auth_token,
            "twilio_phone_number": NUMBER,
            "twilio_api_base_url": twilio.base_url,
            "ngrok_authtoken": NGROK_TOKEN,
            "ngrok_path": agent.path,
            "transcripts_dir": tmp_path / "transcripts",
            "_env_file": None,
            **overrides,
        }
        settings = load_settings_as(DevSettings, **values)
        servers: list[StubServer] = []
        said: list[str] = []

        def start_server(port: int, public_url: str) -> StubServer:
            servers.append(StubServer(port, public_url, outcome, ready_error))
            return servers[-1]

        def tunnel(settings: DevSettings, port: int) -> PublicTunnel:
            assert settings.ngrok_authtoken is not None
            return open_tunnel(
                port,
                authtoken=settings.ngrok_authtoken.get_secret_value(),
                ngrok_path=settings.ngrok_path,
                config_path=tmp_path / "ngrok.yml",
            )

        deps = DevDependencies(
            phone_number=TwilioNumber.from_settings,
            open_tunnel=tunnel,
            start_server=start_server,
            say=say or said.append,
        )
        return Harness(settings, deps, servers, said)

    return make


def assert_all_undone(twilio: FakeTwilioRest, agent: FakeNgrokAgent, h: Harness) -> None:
    assert twilio.number(NUMBER)["voice_url"] == OLD_URL
    assert twilio.number(NUMBER)["voice_method"] == "POST"
    assert all(server.stopped for server in h.servers)
    assert len(agent.events("delete")) == len(agent.events("create"))
    assert not process.is_process_running(str(agent.path))


def test_ctrl_c_gives_the_number_its_webhook_back(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    h = harness(KeyboardInterrupt())

    assert h.run() == 0

    (server,) = h.servers
    assert server.public_url.endswith(".ngrok-free.app")
    assert pointed_at(twilio) == [f"{server.public_url}/twilio/voice", OLD_URL]
    banner = next(text for text in h.said if "VoiceBridge is live" in text)
    assert f"Call {NUMBER} now" in banner
    assert f"Public URL     {server.public_url} → http://127.0.0.1:" in banner
    assert f"{server.public_url}/twilio/voice (POST)" in banner
    assert f"was: {OLD_URL} (POST)" in banner
    assert str(h.settings.transcripts_dir.resolve()) in banner
    assert f"{NUMBER} is back to its previous voice webhook: {OLD_URL} (POST)" in h.said
    assert_all_undone(twilio, agent, h)


@pytest.mark.parametrize("failure", ["banner", "server"])
def test_restored_when_start_up_fails_after_the_number_was_set(
    harness: Callable[..., Harness],
    twilio: FakeTwilioRest,
    agent: FakeNgrokAgent,
    failure: str,
) -> None:
    said: list[str] = []

    def say(text: str) -> None:
        if failure == "banner" and "VoiceBridge is live" in text:
            raise BrokenPipeError("stdout is gone")
        said.append(text)

    h = harness(RuntimeError("the server crashed"), say=say)
    expected = BrokenPipeError if failure == "banner" else RuntimeError

    with pytest.raises(expected):
        h.run()

    assert len(pointed_at(twilio)) == 2
    assert_all_undone(twilio, agent, h)
    assert f"{NUMBER} is back to its previous voice webhook: {OLD_URL} (POST)" in said


def test_the_server_stopping_by_itself_undoes_everything(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    h = harness(3)
    assert h.run() == 3
    assert "The server stopped (exit status 3)." in h.said
    assert_all_undone(twilio, agent, h)


def test_a_server_that_dies_during_start_up_never_gets_the_number(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    h = harness(ready_error=CommandError("the server exited during start-up (exit status 1)"))

    with pytest.raises(CommandError, match="exited during start-up"):
        h.run()

    assert pointed_at(twilio) == []
    assert_all_undone(twilio, agent, h)


def test_public_base_url_skips_ngrok(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    h = harness(
        KeyboardInterrupt(), public_base_url="https://my-tunnel.example.com", ngrok_authtoken=None
    )

    def no_tunnel(settings: DevSettings, port: int) -> PublicTunnel:
        raise AssertionError("ngrok must not start when PUBLIC_BASE_URL is set")

    h.deps = replace(h.deps, open_tunnel=no_tunnel)

    assert h.run() == 0

    assert h.servers[0].public_url == "https://my-tunnel.example.com"
    assert pointed_at(twilio) == ["https://my-tunnel.example.com/twilio/voice", OLD_URL]
    assert agent.events() == []


def test_an_unknown_number_stops_before_anything_starts(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    h = harness(twilio_phone_number="+15550000000")

    with pytest.raises(CommandError) as caught:
        h.run()

    assert "+15550000000 is not a number of account" in str(caught.value)
    assert f"its numbers: {NUMBER}, +15551239999" in str(caught.value)
    assert h.servers == []
    assert agent.events() == []
    assert pointed_at(twilio) == []


def test_a_port_in_use_is_readable(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    h = harness()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"port {port} is already in use"):
            h.run(port)
    assert twilio.requests == []
    assert agent.events() == []


def test_a_failed_restore_says_what_to_set_by_hand(
    harness: Callable[..., Harness], twilio: FakeTwilioRest, agent: FakeNgrokAgent
) -> None:
    class TwilioGoesAway(Exception):
        pass

    h = harness(TwilioGoesAway())
    number = TwilioNumber.from_settings(h.settings)

    class Unreachable:
        """Twilio answers until the number is pointed; then the network goes."""

        def current(self) -> Any:
            return number.current()

        def point_number(self, url: str) -> Any:
            return number.point_number(url)

        def restore(self, previous: Any) -> None:
            raise TwilioAccountError("cannot reach the Twilio API (Connection refused)")

    h.deps = replace(h.deps, phone_number=lambda settings: Unreachable())

    with pytest.raises(TwilioGoesAway):
        h.run()

    advice = next(text for text in h.said if text.startswith("Could not restore"))
    assert "Connection refused" in advice
    assert advice.endswith(f"Set it back to: {OLD_URL} (POST)")
    assert not process.is_process_running(str(agent.path))


# --- settings --------------------------------------------------------------------------


def test_every_missing_setting_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings_as(DevSettings, _env_file=None, twilio_auth_token="  ")
    message = str(caught.value)
    for name in (
        "OPENAI_API_KEY",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_PHONE_NUMBER",
        "NGROK_AUTHTOKEN",
    ):
        assert f"- {name}: not set" in message
    assert "dashboard.ngrok.com/get-started/your-authtoken" in message
    assert "console.twilio.com" in message


def test_ngrok_settings_are_checked(tmp_path: Path) -> None:
    not_executable = tmp_path / "ngrok"
    not_executable.write_text("")
    with pytest.raises(SettingsError) as caught:
        load_settings_as(
            DevSettings, _env_file=None, ngrok_path=not_executable, ngrok_domain="no/domain"
        )
    assert f"- NGROK_PATH: {not_executable} is not executable" in str(caught.value)
    assert "- NGROK_DOMAIN: must be a domain" in str(caught.value)


def test_a_domain_may_be_pasted_with_its_scheme() -> None:
    settings = load_settings_as(
        DevSettings,
        _env_file=None,
        openai_api_key="sk-test",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="token",
        twilio_phone_number=NUMBER,
        ngrok_authtoken="tok",
        ngrok_domain="https://me.ngrok-free.app/",
    )
    assert settings.ngrok_domain == "me.ngrok-free.app"


# --- end to end: `voicebridge dev` as a developer runs it -------------------------------


def cli_env(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path, **changes: str | None
) -> dict[str, str]:
    """A clean environment (no .env in the working directory): only what the test gives."""
    env: dict[str, str | None] = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / ".config"),  # pyngrok's default ngrok.yml
        "PYTHONPATH": str(ROOT),
        "OPENAI_API_KEY": "sk-test",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_PHONE_NUMBER": NUMBER,
        "TWILIO_API_BASE_URL": twilio.base_url,
        "NGROK_AUTHTOKEN": NGROK_TOKEN,
        "NGROK_PATH": str(agent.path),
        "TRANSCRIPTS_DIR": str(tmp_path / "transcripts"),
        **changes,
    }
    return {name: value for name, value in env.items() if value is not None}


class Cli:
    """`python -m voicebridge …` in a child process, its output (stdout + stderr) collected."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "voicebridge", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"never printed {text!r}; output:\n{self.output}")
            time.sleep(0.05)

    def finish(self, timeout: float = 30) -> int:
        status = self.process.wait(timeout)
        self._reader.join(5)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    cli = Cli(args, env, cwd)
    try:
        return cli.finish(60), cli.output
    finally:
        cli.kill()


def ring(port: int, public_url: str, auth_token: str) -> ET.Element:
    """POST the voice webhook as Twilio would through the tunnel: signed for the public URL."""
    params = {"CallSid": "CA" + "e" * 32, "From": "+15550001111", "To": NUMBER}
    signature = RequestValidator(auth_token).compute_signature(f"{public_url}/twilio/voice", params)
    response = httpx.post(
        f"http://127.0.0.1:{port}/twilio/voice",
        data=params,
        headers={"X-Twilio-Signature": signature},
    )
    response.raise_for_status()
    return ET.fromstring(response.text)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_make_dev_end_to_end(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path, stop: str
) -> None:
    port = free_port()
    cli = Cli(["dev", "--port", str(port)], cli_env(twilio, agent, tmp_path), tmp_path)
    try:
        cli.wait_for("Ctrl-C stops everything")

        (create,) = agent.events("create")
        assert create["request"]["upstream"] == {"url": f"http://127.0.0.1:{port}"}
        webhook = twilio.number(NUMBER)["voice_url"]
        public_url = webhook.removesuffix("/twilio/voice")
        assert public_url.startswith("https://") and public_url.endswith(".ngrok-free.app")
        assert f"Voice webhook  {webhook} (POST)" in cli.output
        # The server knows its public URL: signatures check out and the stream URL is public.
        stream = ring(port, public_url, twilio.auth_token).find("Connect/Stream")
        assert stream is not None
        assert stream.get("url") == f"wss://{public_url.removeprefix('https://')}/media-stream"

        if stop == "ctrl-c":  # the terminal signals the whole foreground process group
            os.killpg(cli.process.pid, signal.SIGINT)
        else:
            cli.process.send_signal(signal.SIGTERM)
        assert cli.finish() == 0
    finally:
        cli.kill()

    assert twilio.number(NUMBER)["voice_url"] == OLD_URL
    assert f"{NUMBER} is back to its previous voice webhook" in cli.output
    if stop == "sigterm":  # after Ctrl-C, the agent has stopped by itself: nothing to delete
        assert len(agent.events("delete")) == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
    assert "Traceback" not in cli.output
    assert NGROK_TOKEN not in cli.output
    assert twilio.auth_token not in cli.output


def test_bad_twilio_credentials_are_one_line(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path
) -> None:
    env = cli_env(twilio, agent, tmp_path, TWILIO_AUTH_TOKEN="wrong-twilio-token")
    status, output = run_cli(["dev", "--port", str(free_port())], env, tmp_path)

    assert status == 1
    assert output.startswith("voicebridge: Twilio rejected the credentials of account AC")
    assert output.count("\n") == 1
    assert "wrong-twilio-token" not in output
    assert agent.events() == []


def test_a_rejected_ngrok_authtoken_is_one_line(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path
) -> None:
    port = free_port()
    env = cli_env(twilio, agent, tmp_path, NGROK_AUTHTOKEN="wrong-ngrok-token")
    status, output = run_cli(["dev", "--port", str(port)], env, tmp_path)

    assert status == 1
    assert output.startswith("voicebridge: ngrok rejected NGROK_AUTHTOKEN")
    assert "Traceback" not in output
    assert "wrong-ngrok-token" not in output
    assert pointed_at(twilio) == []


def test_missing_settings_are_named_in_one_message(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    status, output = run_cli(["dev"], env, tmp_path)

    assert status == 2
    assert "Traceback" not in output
    for name in ("OPENAI_API_KEY", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "NGROK_AUTHTOKEN"):
        assert f"- {name}: not set" in output


def test_a_missing_agent_is_named(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path
) -> None:
    env = cli_env(twilio, agent, tmp_path, NGROK_PATH=str(tmp_path / "nowhere" / "ngrok"))
    status, output = run_cli(["dev"], env, tmp_path)
    assert status == 2
    assert f"- NGROK_PATH: no ngrok agent at {tmp_path / 'nowhere' / 'ngrok'}" in output


# --- `voicebridge twilio point-number URL` --------------------------------------------


def test_point_number_command(
    twilio: FakeTwilioRest, agent: FakeNgrokAgent, tmp_path: Path
) -> None:
    env = cli_env(twilio, agent, tmp_path)
    status, output = run_cli(["twilio", "point-number", "https://app.example.com"], env, tmp_path)

    assert status == 0, output
    assert twilio.number(NUMBER)["voice_url"] == "https://app.example.com/twilio/voice"
    assert twilio.number(NUMBER)["voice_method"] == "POST"
    assert output == (
        f"{NUMBER} now sends calls to https://app.example.com/twilio/voice (POST); "
        f"before: {OLD_URL} (POST)\n"
    )


@pytest.mark.parametrize(
    ("url", "changes", "expected"),
    [
        ("app.example.com", {}, "voicebridge: not an http(s) URL: app.example.com"),
        (
            "https://app.example.com",
            {"TWILIO_PHONE_NUMBER": "+15550000000"},
            "voicebridge: TWILIO_PHONE_NUMBER +15550000000 is not a number of account",
        ),
        (
            "https://app.example.com",
            {"TWILIO_AUTH_TOKEN": "wrong"},
            "voicebridge: Twilio rejected the credentials",
        ),
    ],
)
def test_point_number_errors_are_one_line(
    twilio: FakeTwilioRest,
    agent: FakeNgrokAgent,
    tmp_path: Path,
    url: str,
    changes: dict[str, str],
    expected: str,
) -> None:
    env = cli_env(twilio, agent, tmp_path, **changes)
    status, output = run_cli(["twilio", "point-number", url], env, tmp_path)
    assert status == 1
    assert output.startswith(expected)
    assert output.count("\n") == 1
    assert twilio.number(NUMBER)["voice_url"] == OLD_URL
