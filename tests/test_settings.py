"""A bad configuration stops start-up with one readable message, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicebridge.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "SYSTEMROOT")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "voicebridge", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_problem_is_listed_in_one_message(tmp_path: Path) -> None:
    result = run_cli(
        ["serve", "--port", "1"],
        {
            "OPENAI_REALTIME_URL": "https://not-a-websocket",
            "PUBLIC_BASE_URL": "ftp://example.com",
            "AGENT_INSTRUCTIONS_FILE": str(tmp_path / "missing.txt"),
        },
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_REALTIME_URL",
        "PUBLIC_BASE_URL",
        "AGENT_INSTRUCTIONS_FILE",
    ):
        assert f"- {name}:" in result.stderr
    assert "platform.openai.com/api-keys" in result.stderr


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\nAGENT_VOICE=marin\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AGENT_VOICE", raising=False)
    settings = load_settings()
    assert settings.openai_api_key.get_secret_value() == "sk-from-dotenv"
    assert settings.agent_voice == "marin"


def test_secret_values_never_appear_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    with pytest.raises(SettingsError) as caught:
        load_settings(openai_realtime_url="http://x", _env_file=None)
    assert "sk-very-secret" not in str(caught.value)


def test_stream_url_derives_from_public_base_url_only() -> None:
    settings = load_settings(
        openai_api_key="sk-x", public_base_url="https://abc.ngrok.app/", _env_file=None
    )
    assert settings.stream_url == "wss://abc.ngrok.app/media-stream"
    assert settings.realtime_url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"


def test_an_unwritable_transcripts_directory_is_a_readable_start_up_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli(
        ["serve"],
        {"OPENAI_API_KEY": "sk-x", "TWILIO_AUTH_TOKEN": "t", "TRANSCRIPTS_DIR": str(blocker)},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "- TRANSCRIPTS_DIR: cannot write to" in result.stderr
