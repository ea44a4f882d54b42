"""A newcomer's first hour (#17): the installed `voicebridge` script, run as a user runs
it, answers every mistake with one readable line and no traceback, and `simulate` works
as the phone-free trial the README promises."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.audio import write_ulaw_wav
from app.main import create_app
from app.settings import Settings
from app.storage.local import LocalTranscriptStore
from tests.conftest import AUTH_TOKEN, PUBLIC_BASE_URL
from tests.doubles.realtime import RealtimeDouble
from tests.fixtures import audio
from tests.s3 import record
from tests.servers import free_port, serve

VOICEBRIDGE = str(Path(sys.executable).parent / "voicebridge")  # the console script
SIGNATURES_OFF = {"OPENAI_API_KEY": "sk-x", "TWILIO_VALIDATE_SIGNATURES": "false"}


def user_env(**settings: str) -> dict[str, str]:
    """A shell's environment: no settings but those given, nothing on the import path."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **settings}


def voicebridge(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOICEBRIDGE, *args],
        cwd=cwd,
        env=env or user_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def voicebridge_async(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """The same, beside a server running in this test's event loop."""
    process = await asyncio.create_subprocess_exec(
        VOICEBRIDGE,
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def caller_wav(path: Path) -> Path:
    write_ulaw_wav(path, audio.load("caller_book_table"))
    return path


# --------------------------------------------------------------------------- settings


def test_every_settings_problem_comes_in_one_round(tmp_path: Path) -> None:
    result = voicebridge(
        "serve",
        cwd=tmp_path,
        env=user_env(LOG_LEVEL="LOUD", PORT="-1", AGENT_TOOLS="no_such_tools"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0] for line in problems] == [
        "  - OPENAI_API_KEY",
        "  - PORT",
        "  - LOG_LEVEL",
        "  - TWILIO_AUTH_TOKEN",
        "  - AGENT_TOOLS",
    ]
    assert "  - PORT: -1 is not a port number — the port to listen on, 1-65535" in result.stderr
    assert (
        "  - LOG_LEVEL: 'LOUD' is not a log level — one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        in result.stderr
    )
    assert "  - AGENT_TOOLS: cannot import 'no_such_tools'" in result.stderr


def test_port_from_dotenv_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "OPENAI_API_KEY=sk-x\nTWILIO_VALIDATE_SIGNATURES=false\nPORT=99999\n"
    )
    result = voicebridge("serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "  - PORT: 99999 is not a port number" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = voicebridge(
            "serve",
            "--host",
            "127.0.0.1",
            cwd=tmp_path,
            env=user_env(**SIGNATURES_OFF, PORT=str(port)),
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"voicebridge: port {port} is already in use (another server?): stop it, "
        f"or pick another port, e.g. PORT={port + 1} make run\n"
    )


def test_dotenv_port_tools_from_the_working_directory_and_a_clean_sigterm(
    tmp_path: Path,
) -> None:
    """`make run` in a project with its own tools module: PORT comes from .env, the
    module from the working directory; SIGTERM to the process group (delivered twice:
    `uv run` forwards it) ends with exit 0 and no traceback."""
    port = free_port()
    (tmp_path / "mytools.py").write_text(
        'def opening_hours(day: str) -> str:\n    """When we are open."""\n    return "9-5"\n'
    )
    (tmp_path / ".env").write_text(
        f"OPENAI_API_KEY=sk-x\nTWILIO_VALIDATE_SIGNATURES=false\nPORT={port}\nAGENT_TOOLS=mytools\n"
    )
    server = subprocess.Popen(
        [VOICEBRIDGE, "serve", "--host", "127.0.0.1"],
        cwd=tmp_path,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        os.killpg(server.pid, signal.SIGTERM)
        time.sleep(0.05)
        os.killpg(server.pid, signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0
    assert "Traceback" not in err
    assert "CancelledError" not in err
    assert "Application shutdown complete" in err


# --------------------------------------------------------------------------- transcripts


def test_transcripts_list_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`voicebridge transcripts list | head -1`, with `head` already gone: deterministic."""
    store = LocalTranscriptStore(tmp_path / "transcripts")
    for n in range(20):
        store.save(record(call_sid=f"CA{n:032d}"))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [VOICEBRIDGE, "transcripts", "list"],
            cwd=tmp_path,
            env=user_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141  # as a SIGPIPE death, like `cat`
    assert result.stderr == ""


def test_transcripts_are_where_the_readme_says(tmp_path: Path) -> None:
    LocalTranscriptStore(tmp_path / "transcripts").save(record())
    assert (tmp_path / "transcripts/2026/03/14/CA00000000000000000000000000000001.json").is_file()
    result = voicebridge("transcripts", "list", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.rstrip().endswith("  3 turns")


# --------------------------------------------------------------------------- simulate


def test_simulate_checks_the_wav_before_calling_anything(tmp_path: Path) -> None:
    (tmp_path / "hello.wav").write_text("not audio, just text\n")
    result = voicebridge("simulate", "--wav", "hello.wav", "--wait", "0", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "voicebridge: hello.wav is not a WAV simulate can use (not a RIFF/WAVE file): use a "
        "WAV file (PCM 8-32 bit, float, μ-law or A-law; mono or stereo; any sample rate)\n"
    )
    assert not (tmp_path / "agent.wav").exists()


def test_simulate_waits_for_the_server_then_says_so_in_one_line(tmp_path: Path) -> None:
    wav = caller_wav(tmp_path / "hello.wav")
    server = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = voicebridge(
        "simulate", "--wav", str(wav), "--server", server, "--wait", "1", cwd=tmp_path
    )
    assert 1 <= time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"waiting for the server at {server} to start…",
        f"voicebridge: no server at {server} after 1 s: start it (make run), "
        "or point --server at it",
    ]


async def test_simulate_explains_a_refused_signature(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    wav = caller_wav(tmp_path / "hello.wav")
    async with serve(create_app(make_settings())) as server:
        code, out, err = await voicebridge_async(
            "simulate", "--wav", str(wav), "--server", server.http_url, cwd=tmp_path, env=user_env()
        )
    assert (code, out) == (1, "")
    assert err == (
        f"voicebridge: {server.http_url} refused the webhook's signature (403): give simulate "
        "the server's TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL (environment or .env), or set "
        "TWILIO_VALIDATE_SIGNATURES=false on the server for a local trial\n"
    )


async def test_simulate_is_a_client_shows_progress_and_says_where_the_call_went(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """No OPENAI_API_KEY on the client's side: it is not the server. The output folder
    is made; the transcript is where the last line says."""
    wav = caller_wav(tmp_path / "hello.wav")
    env = user_env(TWILIO_AUTH_TOKEN=AUTH_TOKEN, PUBLIC_BASE_URL=PUBLIC_BASE_URL)
    async with serve(create_app(make_settings())) as server:
        code, out, err = await voicebridge_async(
            "simulate", "--wav", str(wav), "--server", server.http_url,
            "--out", "runs/first/agent.wav", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert code == 0, err
        assert "Traceback" not in err
        heard, where = out.splitlines()
        assert re.fullmatch(
            r"heard \d+\.\d s of the agent in 2 utterances \(first reply \d+ ms after the WAV "
            r"ended\); saved to runs/first/agent\.wav",
            heard,
        )
        match = re.fullmatch(
            r"call (CA[0-9a-f]{32}): transcript (transcripts/\d{4}/\d\d/\d\d/CA[0-9a-f]{32}\.json)"
            r" \(voicebridge transcripts get (CA[0-9a-f]{32})\)",
            where,
        )
        assert match is not None and match[1] == match[3]
        assert (tmp_path / "runs/first/agent.wav").stat().st_size > 1000
        progress = err.splitlines()
        assert progress, "a line every few seconds when stderr is not a terminal"
        assert all(
            re.fullmatch(r" *\d+\.\d s · you: \d+\.\d of \d+\.\d s sent · agent: "
                         r"(speaking|quiet), \d+\.\d s heard", line)
            for line in progress
        ), progress  # fmt: skip
        for _ in range(100):
            if (tmp_path / match[2]).is_file():
                break
            await asyncio.sleep(0.05)
        assert (tmp_path / match[2]).is_file()


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    from io import StringIO

    from app.simulate_cli import Progress

    class Terminal(StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = Progress(5000, screen)
    progress.show("1")
    progress.show("2")
    progress.done()
    assert screen.getvalue() == "\r1\x1b[K\r2\x1b[K\n"


@pytest.mark.parametrize("out", ["a-file/agent.wav", "."])
def test_simulate_refuses_an_output_it_cannot_write_before_the_call(
    tmp_path: Path, out: str
) -> None:
    (tmp_path / "a-file").write_text("in the way")
    wav = caller_wav(tmp_path / "hello.wav")
    result = voicebridge("simulate", "--wav", str(wav), "--out", out, "--wait", "0", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr in (
        "voicebridge: cannot create a-file for --out: File exists\n",
        "voicebridge: --out . is a directory: name a .wav file in it\n",
    )


async def test_simulate_says_why_no_call_was_taken(
    realtime: RealtimeDouble, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    wav = caller_wav(tmp_path / "hello.wav")
    settings = make_settings(public_base_url=None, twilio_validate_signatures=False)
    async with serve(create_app(settings)) as server:
        code, out, err = await voicebridge_async(
            "simulate", "--wav", str(wav), "--server", server.http_url, cwd=tmp_path, env=user_env()
        )
    assert (code, out) == (1, "")
    assert err == (
        f"voicebridge: {server.http_url} took no call: it hung up instead of opening a stream, "
        "saying 'Sorry, this line is not set up yet. Please try again later. Goodbye.' "
        "(its log says why: e.g. PUBLIC_BASE_URL not set)\n"
    )
