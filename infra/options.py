"""The deploy script's options: command line first, then `.env`, then fly.toml.

Everything is resolved and checked before the first fly call, so a typo fails fast
instead of after an app or a bucket has been created.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.envfile import read_env_file, secrets_to_stage
from voicebridge.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER_APP = "voicebridge-change-me"
APP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# The CLI of the interpreter running this script, so nothing needs to be on PATH.
VOICEBRIDGE = [sys.executable, "-m", "voicebridge"]
# What goes into the image (or the machines' config): a commit touching none of these
# needs no redeploy. Keep in step with the Dockerfile's COPY lines.
IMAGE_INPUTS = ("voicebridge", "pyproject.toml", "uv.lock", "Dockerfile", "fly.toml")


class DeployError(Exception):
    """The deploy cannot go on; `str()` tells the user what to fix (never a secret)."""


@dataclass(frozen=True)
class Options:
    app: str
    org: str
    bucket: str
    public_base_url: str
    env: dict[str, str]
    secrets: dict[str, str]
    skipped: dict[str, str]
    config: Path
    image_label: str | None
    retention_days: int | None
    voicebridge: list[str]
    fly: str | None
    dry_run: bool
    force_deploy: bool

    @property
    def project_dir(self) -> Path:
        """Where fly.toml, the Dockerfile and the sources are: flyctl runs from here."""
        return self.config.parent

    @property
    def webhook_url(self) -> str:
        return f"{self.public_base_url}/twilio/voice"


def parse_options(argv: Sequence[str] | None = None) -> Options:
    args = _parser().parse_args(argv)
    env_file: Path = args.env_file
    if not env_file.is_file():
        raise DeployError(f"no {env_file}: copy .env.example to .env and fill it in")
    env = read_env_file(env_file)
    config: Path = args.config
    fly_toml = _read_toml(config)
    config_env = {str(k): str(v) for k, v in fly_toml.get("env", {}).items()}
    app = _app_name(args.app, env, fly_toml)
    public_base_url = (args.public_url or f"https://{app}.fly.dev").rstrip("/")
    secrets, skipped = secrets_to_stage(env, config_env=config_env, public_base_url=public_base_url)
    check_production_settings({**config_env, **secrets})
    return Options(
        app=app,
        org=args.org or env.get("FLY_ORG") or "personal",
        bucket=args.bucket or env.get("FLY_BUCKET") or f"{app}-transcripts",
        public_base_url=public_base_url,
        env=env,
        secrets=secrets,
        skipped=skipped,
        config=config,
        image_label=args.image_label or image_label(config.parent),
        retention_days=_retention_days(env.get("TRANSCRIPT_RETENTION_DAYS")),
        voicebridge=args.voicebridge.split() if args.voicebridge else VOICEBRIDGE,
        fly=args.fly,
        dry_run=args.dry_run,
        force_deploy=args.force_deploy,
    )


def check_production_settings(values: dict[str, str]) -> None:
    """Fail now if the machines could not start with these values (fly.toml's [env] plus
    the secrets), using the app's own validation; the bucket keys come later."""
    try:
        settings = load_settings(
            _env_file=None, **{name.lower(): value for name, value in values.items()}
        )
        problems = settings.serving_problems()
        if problems:
            raise SettingsError(problems)
    except SettingsError as error:
        raise DeployError(f"production settings are not valid:\n{error}") from None


def image_label(root: Path) -> str | None:
    """`git-<commit>`: the last commit that changed the image, so an unchanged app is
    recognised on the machines and not redeployed; a dirty tree gets a unique label
    (it always deploys). None outside a git checkout (then every run deploys)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit = git("log", "-1", "--format=%h", "--abbrev=12", "--", *IMAGE_INPUTS)
        dirty = git("status", "--porcelain", "--", *IMAGE_INPUTS)
    except (OSError, subprocess.CalledProcessError):
        return None
    if not commit:
        return None
    return f"git-{commit}-dirty-{int(time.time())}" if dirty else f"git-{commit}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.deploy",
        description="Create or update the VoiceBridge app on Fly.io from .env (idempotent).",
    )
    parser.add_argument("--app", help="Fly app name (default: FLY_APP, else fly.toml's app)")
    parser.add_argument("--org", help="Fly organization for a new app (default: personal)")
    parser.add_argument("--bucket", help="Tigris bucket name (default: <app>-transcripts)")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env", help="default: ./.env")
    parser.add_argument("--config", type=Path, default=ROOT / "fly.toml", help="fly.toml")
    parser.add_argument("--public-url", help="public base URL (default: https://<app>.fly.dev)")
    parser.add_argument("--image-label", help="image tag (default: git-<last image commit>)")
    parser.add_argument(
        "--voicebridge", help="how to run the voicebridge CLI locally (default: this Python's)"
    )
    parser.add_argument("--fly", help="path to flyctl (default: fly or flyctl on PATH)")
    parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    parser.add_argument(
        "--force-deploy", action="store_true", help="deploy even if nothing changed"
    )
    return parser


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise DeployError(f"cannot read {path}: {error}") from None


def _app_name(explicit: str | None, env: dict[str, str], fly_toml: dict[str, Any]) -> str:
    configured = str(fly_toml.get("app", ""))
    name = (
        explicit
        or os.environ.get("FLY_APP")
        or env.get("FLY_APP")
        or (configured if configured != PLACEHOLDER_APP else "")
    )
    if not name:
        raise DeployError("name the Fly app: --app NAME, or FLY_APP=NAME in .env")
    if not APP_NAME.match(name):
        raise DeployError(f"bad app name {name!r}: lowercase letters, digits and dashes only")
    return name


def _retention_days(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    if not raw.strip().isdigit() or int(raw) < 1:
        raise DeployError(f"TRANSCRIPT_RETENTION_DAYS must be a whole number of days, not {raw!r}")
    return int(raw)
