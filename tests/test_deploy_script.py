"""infra/deploy.py's plan, run against a stand-in `fly` (and `voicebridge`) on PATH.

The stand-ins record every call and keep state between runs (tests/doubles), so the
tests see what a first run creates and that a second run changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dockerfile import ROOT

DOUBLES = Path(__file__).parent / "doubles"
APP = "vb-test"
SECRET_VALUES = ("sk-live-abc123", "twilio-token-xyz", "AC0123456789abcdef", "local-aws-key")
ENV_FILE = f"""\
# a developer's .env
OPENAI_API_KEY={SECRET_VALUES[0]}
TWILIO_AUTH_TOKEN={SECRET_VALUES[1]}
TWILIO_ACCOUNT_SID={SECRET_VALUES[2]}
TWILIO_PHONE_NUMBER=+15551234567
AGENT_VOICE=coral
PUBLIC_BASE_URL=https://abc.ngrok.app
TRANSCRIPTS_DIR=./transcripts
LOG_FORMAT=text
AWS_ACCESS_KEY_ID={SECRET_VALUES[3]}
AGENT_GREETING=
TRANSCRIPT_RETENTION_DAYS=30
"""
STAGED = {
    "OPENAI_API_KEY",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_PHONE_NUMBER",
    "AGENT_VOICE",
    "PUBLIC_BASE_URL",
}
CHANGES = ("apps create", "storage create", "secrets set", "deploy")


@dataclass
class Run:
    code: int
    output: str
    fly: list[list[str]]
    voicebridge: list[dict[str, Any]]

    def calls(self, command: str) -> list[list[str]]:
        """fly calls whose first words are `command` (e.g. "secrets set")."""
        words = command.split()
        return [argv for argv in self.fly if argv[: len(words)] == words]

    def changes(self) -> list[str]:
        return [c for c in CHANGES for _ in self.calls(c)]

    def index(self, command: str) -> int:
        return self.fly.index(self.calls(command)[0])


class Stand:
    """The stand-ins' bin directory, state and logs; `run()` runs the deploy script."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.state = tmp_path / "fly-state.json"
        self.env_file = tmp_path / ".env"
        self.env_file.write_text(ENV_FILE)
        self.fly_log = tmp_path / "fly.log"
        self.voicebridge_log = tmp_path / "voicebridge.log"
        self.set_state(logged_in=True, apps={}, buckets={})
        self.install("fly", DOUBLES / "fly_standin.py")
        self.install("voicebridge", DOUBLES / "voicebridge_standin.py")

    def install(self, name: str, program: Path) -> None:
        script = self.bin / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{program}" "$@"\n')
        script.chmod(0o755)

    def set_state(self, **values: Any) -> None:
        state = json.loads(self.state.read_text()) if self.state.exists() else {}
        self.state.write_text(json.dumps({**state, **values}))

    def read_state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.state.read_text())
        return result

    def run(self, *args: str, path: str | None = None) -> Run:
        for log in (self.fly_log, self.voicebridge_log):
            log.write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLY_")}
        env.update(
            PATH=path if path is not None else f"{self.bin}:{os.environ['PATH']}",
            FLY_STANDIN_STATE=str(self.state),
            FLY_STANDIN_LOG=str(self.fly_log),
            VOICEBRIDGE_STANDIN_LOG=str(self.voicebridge_log),
        )
        command = [sys.executable, "-m", "infra.deploy", "--env-file", str(self.env_file)]
        done = subprocess.run(
            [*command, "--voicebridge", str(self.bin / "voicebridge"), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return Run(
            done.returncode,
            done.stdout + done.stderr,
            [json.loads(line) for line in self.fly_log.read_text().splitlines()],
            [json.loads(line) for line in self.voicebridge_log.read_text().splitlines()],
        )


@pytest.fixture
def stand(tmp_path: Path) -> Stand:
    return Stand(tmp_path)


def deploy(stand: Stand, *args: str, label: str = "git-0123abcd", path: str | None = None) -> Run:
    run = stand.run("--app", APP, "--image-label", label, *args, path=path)
    assert run.code == 0, run.output
    for value in SECRET_VALUES:
        assert value not in run.output, "a secret value was printed"
    return run


def staged_names(argv: list[str]) -> set[str]:
    return {word.partition("=")[0] for word in argv if "=" in word}


def test_a_first_run_sets_everything_up_in_order(stand: Stand) -> None:
    run = deploy(stand)
    assert run.changes() == list(CHANGES), run.output
    assert run.calls("apps create")[0][2:] == [APP, "--org", "personal"]
    assert "--yes" in run.calls("storage create")[0]
    assert f"{APP}-transcripts" in run.calls("storage create")[0]
    staging = run.calls("secrets set")[0]
    assert "--stage" in staging
    assert staged_names(staging) == STAGED
    assert f"PUBLIC_BASE_URL=https://{APP}.fly.dev" in staging, "never the tunnel URL"
    assert run.calls("deploy")[0][-2:] == ["--image-label", "git-0123abcd"]
    retention = run.calls("ssh console")
    assert retention and retention[0][-1] == "voicebridge transcripts retention --days 30"
    order = [run.index(c) for c in (*CHANGES, "ssh console")]
    assert order == sorted(order), "app, bucket, secrets, deploy, then retention"
    assert [call["argv"] for call in run.voicebridge] == [
        ["twilio", "point-number", f"https://{APP}.fly.dev/twilio/voice"]
    ]
    assert run.voicebridge[0]["twilio_env"] == sorted(
        ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER"]
    )


def test_a_second_run_changes_nothing(stand: Stand) -> None:
    deploy(stand)
    before = stand.read_state()
    run = deploy(stand)
    assert run.changes() == [], run.output
    assert stand.read_state() == before
    assert "no deploy" in run.output


def test_a_changed_value_is_staged_alone_then_deployed_once(stand: Stand) -> None:
    deploy(stand)
    stand.env_file.write_text(ENV_FILE.replace("AGENT_VOICE=coral", "AGENT_VOICE=sage"))
    run = deploy(stand)
    assert run.changes() == ["secrets set", "deploy"]
    assert staged_names(run.calls("secrets set")[0]) == {"AGENT_VOICE"}


def test_a_new_commit_is_deployed_without_restaging(stand: Stand) -> None:
    deploy(stand)
    run = deploy(stand, label="git-4567cdef")
    assert run.changes() == ["deploy"]


def test_unreadable_digests_restage_but_create_nothing(stand: Stand) -> None:
    stand.set_state(digest="opaque")
    deploy(stand)
    run = deploy(stand)
    assert run.changes() == ["secrets set", "deploy"]
    assert staged_names(run.calls("secrets set")[0]) == STAGED


def test_storage_list_without_json_falls_back_to_its_table(stand: Stand) -> None:
    stand.set_state(storage_json=False)
    deploy(stand)
    run = deploy(stand)
    assert run.changes() == []


FIRST_DEPLOY_PLAN = [
    f"create app {APP} in org personal",
    f"create Tigris bucket {APP}-transcripts",
    "stage 6 secret(s)",
    "deploy git-0123abcd",
    f"point +15551234567 at https://{APP}.fly.dev/twilio/voice",
    "expire transcripts after 30 days",
]


def plan(run: Run) -> list[str]:
    """The steps of the summary a dry run ends with, without their numbers."""
    _, _, summary = run.output.partition(f"Plan for {APP} (dry run: nothing was changed):")
    assert summary, f"no plan summary:\n{run.output}"
    steps = [line.strip() for line in summary.splitlines() if line.startswith("  ")]
    assert [step.split(". ")[0] for step in steps] == [str(n + 1) for n in range(len(steps))]
    return [step.split(". ", 1)[1] for step in steps]


def assert_plans_a_first_deploy(run: Run) -> None:
    steps = plan(run)
    assert len(steps) == len(FIRST_DEPLOY_PLAN), run.output
    for step, expected in zip(steps, FIRST_DEPLOY_PLAN, strict=True):
        assert step.startswith(expected), run.output


def assert_nothing_changed(stand: Stand, run: Run) -> None:
    assert run.changes() == [] and run.calls("ssh console") == []
    assert run.voicebridge == []
    assert stand.read_state()["apps"] == {}
    assert "done:" not in run.output
    assert run.output.rstrip().endswith("Run it without --dry-run to apply the plan.")


def test_a_dry_run_only_looks(stand: Stand) -> None:
    run = deploy(stand, "--dry-run")
    assert_nothing_changed(stand, run)
    assert run.output.count("[dry run: not done]") >= 4
    assert_plans_a_first_deploy(run)


def test_a_dry_run_needs_no_flyctl_and_plans_a_first_deploy(stand: Stand) -> None:
    run = deploy(stand, "--dry-run", path=str(Path(sys.executable).parent))
    assert_nothing_changed(stand, run)
    assert run.fly == []
    assert "flyctl is not installed" in run.output and "cannot look at Fly" in run.output
    assert_plans_a_first_deploy(run)


def test_a_dry_run_without_a_login_asks_nothing_more_of_fly(stand: Stand) -> None:
    stand.set_state(logged_in=False)
    run = deploy(stand, "--dry-run")
    assert_nothing_changed(stand, run)
    assert run.fly == [["auth", "whoami"]]
    assert "fly auth login" in run.output
    assert_plans_a_first_deploy(run)


def test_a_dry_run_after_a_deploy_plans_only_the_repeatable_steps(stand: Stand) -> None:
    deploy(stand)
    run = deploy(stand, "--dry-run")
    assert run.changes() == []
    assert plan(run) == [FIRST_DEPLOY_PLAN[4], FIRST_DEPLOY_PLAN[5] + " (bucket lifecycle rule)"]


def test_not_logged_in_stops_before_any_change(stand: Stand) -> None:
    stand.set_state(logged_in=False)
    run = stand.run("--app", APP)
    assert run.code == 1
    assert "fly auth login" in run.output
    assert run.fly == [["auth", "whoami"]]


def test_missing_flyctl_is_reported(stand: Stand) -> None:
    run = stand.run("--app", APP, path="/nonexistent")
    assert run.code == 1
    assert "flyctl is not installed" in run.output


def test_the_app_must_be_named(stand: Stand) -> None:
    run = stand.run()
    assert run.code == 1
    assert "--app NAME" in run.output
    assert run.fly == []


def test_no_twilio_number_skips_pointing_it(stand: Stand) -> None:
    stand.env_file.write_text(ENV_FILE.replace("TWILIO_PHONE_NUMBER=", "# TWILIO_PHONE_NUMBER="))
    run = deploy(stand)
    assert run.voicebridge == []
    assert "Twilio number not pointed: set TWILIO_PHONE_NUMBER" in run.output


def test_settings_the_server_would_refuse_stop_it_before_any_fly_call(stand: Stand) -> None:
    stand.env_file.write_text(ENV_FILE.replace("TWILIO_AUTH_TOKEN=", "# TWILIO_AUTH_TOKEN="))
    run = stand.run("--app", APP)
    assert run.code == 1
    assert "TWILIO_AUTH_TOKEN" in run.output and "not set" in run.output
    assert run.fly == []
