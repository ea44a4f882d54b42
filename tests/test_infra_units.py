"""The deploy script's decisions, one at a time: secret digests, what to stage, labels."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from infra.envfile import changed_secrets, digest_matches, secrets_to_stage
from infra.options import image_label


def test_digests_in_flys_known_forms_match_their_value() -> None:
    value = "asdf"
    assert digest_matches(value, "912ec803b2ce49e4a541068d495ab570")  # Fly docs' example
    assert digest_matches(value, hashlib.sha256(b"asdf").hexdigest()[:16])
    assert not digest_matches("asdg", "912ec803b2ce49e4a541068d495ab570")


def test_an_unknown_or_missing_digest_counts_as_changed() -> None:
    assert not digest_matches("asdf", None)
    assert not digest_matches("asdf", "")
    assert not digest_matches("asdf", "912ec8")  # too short to trust as a prefix
    assert changed_secrets({"A": "asdf", "B": "x"}, {"A": "912ec803b2ce49e4a541068d495ab570"}) == {
        "B": "x"
    }


def test_production_owns_its_url_env_and_bucket_keys() -> None:
    env = {
        "OPENAI_API_KEY": "sk-1",
        "PUBLIC_BASE_URL": "https://tunnel.example",
        "LOG_FORMAT": "text",
        "AWS_SECRET_ACCESS_KEY": "local",
        "FLY_APP": "x",
        "AGENT_GREETING": " ",
    }
    secrets, skipped = secrets_to_stage(
        env, config_env={"LOG_FORMAT": "json"}, public_base_url="https://x.fly.dev"
    )
    assert secrets == {"OPENAI_API_KEY": "sk-1", "PUBLIC_BASE_URL": "https://x.fly.dev"}
    assert set(skipped) == set(env) - {"OPENAI_API_KEY"}


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def test_the_image_label_follows_the_last_commit_that_changed_the_image(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "voicebridge").mkdir()
    (tmp_path / "voicebridge" / "main.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "voicebridge")
    label = image_label(tmp_path)
    assert label is not None and label.startswith("git-") and "dirty" not in label

    (tmp_path / "notes.txt").write_text("not in the image\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "notes")
    assert image_label(tmp_path) == label, "a commit outside the image needs no redeploy"

    (tmp_path / "voicebridge" / "main.py").write_text("x = 2\n")
    dirty = image_label(tmp_path)
    assert dirty is not None and dirty.startswith(f"{label}-dirty-")


def test_no_git_checkout_means_no_label(tmp_path: Path) -> None:
    assert image_label(tmp_path / "nowhere") is None
