"""The container image, proven without a Docker daemon.

hadolint lints the Dockerfile; the structure checks pin what the issue asks of it; and
the runtime-install tests replay the Dockerfile's own `uv sync` lines on a copy of its
build context into a fresh virtualenv, then start `voicebridge serve` from it: if the
server needed a dev-only package at run time, that environment would not have it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import dockerfile
from tests.dockerfile import ROOT
from tests.servers import free_port

# Dev tools, the dev-only ngrok client, and the test-data generators litestar would pull
# in (pyproject's exclude-dependencies): production imports none of them.
NOT_IN_PRODUCTION = (
    "pytest",
    "mypy",
    "ruff",
    "moto",
    "hypothesis",
    "openai",
    "jsonschema",
    "pyngrok",
    "polyfactory",
    "faker",
)


def find_tool(name: str) -> str:
    """A tool of the dev environment: `uv run` sets $UV; else beside python, or on PATH."""
    candidates = [os.environ.get("UV", "") if name == "uv" else ""]
    candidates += [str(Path(sys.executable).parent / name), shutil.which(name) or ""]
    candidates.append(str(ROOT / ".tools" / "bin" / name))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} not found (run the tests with `make test` or `uv run pytest`)")


def test_hadolint_passes() -> None:
    done = subprocess.run(
        [find_tool("hadolint"), "--no-color", str(dockerfile.DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_multi_stage_slim_and_runs_as_an_unprivileged_user() -> None:
    stages = dockerfile.stages()
    assert len(stages) >= 2
    for stage in stages:
        assert "-slim" in stage[0].args, "slim Python base"
    final = stages[-1]
    users = [i.words[0] for i in final if i.keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, non-root uid"
    assert any("--from=builder" in i.args for i in final if i.keyword == "COPY")
    assert not any(i.keyword == "RUN" and "uv " in i.args for i in final), "no uv at run time"


def test_the_build_uses_the_lock_without_dev_dependencies_and_compiles_bytecode() -> None:
    builder = dockerfile.stages()[0]
    syncs = [i.args for i in builder if i.keyword == "RUN" and i.args.startswith("uv sync")]
    assert syncs
    for sync in syncs:
        assert "--locked" in sync and "--no-dev" in sync
    assert dockerfile.env(builder).get("UV_COMPILE_BYTECODE") == "1"


def test_the_dependency_layer_needs_only_the_lock() -> None:
    """So editing the README or the code reuses the cached dependency layer."""
    builder = dockerfile.stages()[0]
    first_sync = next(
        n for n, i in enumerate(builder) if i.keyword == "RUN" and i.args.startswith("uv sync")
    )
    copied = [w for i in builder[:first_sync] if i.keyword == "COPY" for w in i.words[:-1]]
    assert sorted(copied) == ["pyproject.toml", "uv.lock"]


def test_no_secret_or_local_state_can_enter_the_image() -> None:
    copied = [
        word
        for i in dockerfile.instructions()
        if i.keyword in ("COPY", "ADD") and "--from=" not in i.args
        for word in i.words[:-1]
    ]
    assert "." not in copied and not any(".env" in word for word in copied), copied
    assert not any(
        i.keyword == "ARG" and "KEY" in i.args.upper() for i in dockerfile.instructions()
    )
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".env", ".venv", ".tools", "transcripts", "spool", ".git", "tests"):
        assert entry in ignored, f".dockerignore must keep {entry} out"


def test_the_server_listens_on_port_and_starts_like_voicebridge_serve() -> None:
    final = dockerfile.stages()[-1]
    assert dockerfile.env(final).get("PORT") == "8080"
    assert dockerfile.exposed_ports() == {8080}
    entry = [i.words for i in final if i.keyword in ("ENTRYPOINT", "CMD")]
    command = [word for words in entry for word in words]
    assert command[:2] == ["voicebridge", "serve"] and "0.0.0.0" in command
    assert "--port" not in command, "the port comes from $PORT"


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replay the builder stage: its COPY sources, then its `uv sync` lines, as written."""
    base = tmp_path_factory.mktemp("image")
    context, venv = base / "build", base / "venv"
    context.mkdir()
    builder = dockerfile.stages()[0]
    for instruction in builder:
        if instruction.keyword == "COPY":
            for source in instruction.words[:-1]:
                copy_into(ROOT / source, context / source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    if "UV_CACHE_DIR" in os.environ:
        env["UV_CACHE_DIR"] = os.environ["UV_CACHE_DIR"]
    env.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=getattr(sys, "_base_executable", sys.executable),
        UV_PYTHON_DOWNLOADS="never",
        UV_COMPILE_BYTECODE=dockerfile.env(builder).get("UV_COMPILE_BYTECODE", "0"),
    )
    uv = find_tool("uv")
    for instruction in builder:
        if instruction.keyword == "RUN" and instruction.args.startswith("uv sync"):
            done = subprocess.run(
                [uv, *instruction.words[1:], "--quiet"],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
    return venv


def copy_into(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(source, target)


@pytest.fixture
def server(runtime_venv: Path, tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`voicebridge serve` from the runtime environment, with nothing but the minimum set."""
    port = free_port()
    env = {
        "PATH": f"{runtime_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "OPENAI_API_KEY": "sk-test",
        "TWILIO_AUTH_TOKEN": "test-token",  # required: webhooks are signature-checked
        "PORT": str(port),
    }
    process = subprocess.Popen(
        [str(runtime_venv / "bin" / "voicebridge"), "serve", "--host", "127.0.0.1"],
        cwd=tmp_path,  # no .env here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_runtime_install_serves_healthz(
    server: tuple[int, subprocess.Popen[str]],
) -> None:
    port, process = server
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                assert reply.status == 200
                return
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"the server from the runtime install exited:\n{output}")
            if time.monotonic() > deadline:
                pytest.fail("the server from the runtime install never answered /healthz")
            time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_runtime_install_has_no_dev_package_and_imports_every_module(
    runtime_venv: Path,
) -> None:
    script = (
        "import importlib, importlib.util, pkgutil, sys, voicebridge\n"
        f"dev = [m for m in {NOT_IN_PRODUCTION!r} if importlib.util.find_spec(m)]\n"
        "assert not dev, f'packages production never imports: {dev}'\n"
        "for module in pkgutil.walk_packages(voicebridge.__path__, 'voicebridge.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
    )
    done = subprocess.run(
        [str(runtime_venv / "bin" / "python"), "-c", script],
        cwd=runtime_venv.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_voicebridge_dev_without_the_dev_dependencies_says_how_to_get_them(
    runtime_venv: Path, tmp_path: Path
) -> None:
    env = {
        "PATH": f"{runtime_venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "OPENAI_API_KEY": "sk-test",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "test-token",
        "TWILIO_PHONE_NUMBER": "+15551234567",
        "NGROK_AUTHTOKEN": "test-authtoken",
    }
    done = subprocess.run(
        [str(runtime_venv / "bin" / "voicebridge"), "dev"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "pyngrok" in line and "make dev" in line, line
