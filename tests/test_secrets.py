"""Secrets never appear in logs, errors or transcripts — even at DEBUG level."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.servers import serve
from tests.test_settings import run_cli
from tests.twilio import answer_call
from voicebridge.logs import configure_logging
from voicebridge.main import create_app
from voicebridge.settings import Settings
from voicebridge.simulator import CallerSimulator, new_sid

SECRETS = {
    "OPENAI_API_KEY": "sk-SECRET-openai-4f1d",
    "TWILIO_AUTH_TOKEN": "SECRET-twilio-93ab",
    "STREAM_TOKEN_SECRET": "SECRET-stream-77c2",
    "AWS_SECRET_ACCESS_KEY": "SECRET-aws-0e55",
}


@pytest.fixture
def debug_logging() -> Iterator[None]:
    configure_logging("DEBUG", "json")
    yield
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.WARNING)


def assert_no_secret(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked"
        assert value[7:] not in text, f"part of {name} leaked"


async def test_a_whole_call_logs_no_secret(
    capfd: pytest.CaptureFixture[str],
    debug_logging: None,
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    settings = make_settings(
        openai_api_key=SECRETS["OPENAI_API_KEY"],
        twilio_auth_token=SECRETS["TWILIO_AUTH_TOKEN"],
        stream_token_secret=SECRETS["STREAM_TOKEN_SECRET"],
    )
    async with serve(create_app(settings)) as server:
        call_sid = new_sid("CA")
        parameters = await answer_call(server, call_sid, token=SECRETS["TWILIO_AUTH_TOKEN"])
        async with CallerSimulator(
            server.ws_url, call_sid=call_sid, custom_parameters=parameters
        ) as caller:
            await caller.wait_for_agent_audio(timeout=5)
            await caller.say(audio.load("caller_interrupt"))
            await caller.wait_until_agent_quiet(timeout=15)
    assert realtime.sessions[0].headers["authorization"] == f"Bearer {SECRETS['OPENAI_API_KEY']}"
    captured = capfd.readouterr()
    assert "call ended" in captured.err, "the logs were captured"
    assert_no_secret(captured.out + captured.err)
    for path in Path(settings.transcripts_dir).rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_text())


def test_a_failing_start_up_prints_no_secret(tmp_path: Path) -> None:
    result = run_cli(
        ["serve"],
        {**SECRETS, "OPENAI_REALTIME_URL": "http://wrong", "LOG_LEVEL": "DEBUG"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "OPENAI_REALTIME_URL" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


def test_credentials_are_scrubbed_from_any_log_line() -> None:
    from voicebridge.logs import redact, register_secrets

    register_secrets("twilio-token-abcdef")
    line = redact(
        "> Authorization: Bearer sk-abc123456 token=twilio-token-abcdef key sk-proj-zzzzzzzz"
    )
    assert line == "> Authorization: Bearer *** token=*** key sk-***"
