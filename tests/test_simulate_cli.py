"""`voicebridge simulate`: anyone with an OpenAI key can try their agent without a phone."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from app.audio import write_ulaw_wav
from app.cli import main
from app.main import create_app
from app.settings import Settings
from tests.conftest import AUTH_TOKEN, PUBLIC_BASE_URL
from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.servers import serve


async def test_simulate_rings_the_webhook_says_the_wav_and_saves_the_reply(
    realtime: RealtimeDouble,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caller_wav, agent_wav = tmp_path / "caller.wav", tmp_path / "agent.wav"
    write_ulaw_wav(caller_wav, audio.load("caller_book_table"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a client: the server's key only
    for name, value in {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
    }.items():
        monkeypatch.setenv(name, value)
    settings = make_settings()
    async with serve(create_app(settings)) as server:
        code = await asyncio.to_thread(
            main,
            [
                "simulate",
                "--wav",
                str(caller_wav),
                "--server",
                server.http_url,
                "--out",
                str(agent_wav),
            ],
        )
    assert code == 0
    heard, where = capsys.readouterr().out.splitlines()
    assert heard.startswith("heard ") and heard.endswith(f"saved to {agent_wav}")
    assert where.startswith("call CA") and "transcripts/" in where
    with wave.open(str(agent_wav)) as saved:
        heard_ms = saved.getnframes() * 1000 // saved.getframerate()
    expected = audio.duration_ms("agent_greeting") + audio.duration_ms("agent_long_reply")
    assert abs(heard_ms - expected) < 200
    assert realtime.sessions[0].turns[0].transcript == audio.text("caller_book_table")
