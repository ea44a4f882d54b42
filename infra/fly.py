"""A thin wrapper around the `fly` command line (flyctl).

The deploy script drives flyctl rather than Fly's APIs so that what it does is exactly
what a person would type, and so a test can replace `fly` on PATH with a stand-in that
records every call. Reads answer parsed JSON; changes inherit the terminal so flyctl's
own progress shows. No error message ever quotes a command line: some carry secrets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class FlyError(Exception):
    """A flyctl call failed; `str()` is safe to print (it never contains a value)."""


@dataclass(frozen=True)
class Fly:
    """Runs flyctl from `cwd` (where fly.toml and the Dockerfile are)."""

    executable: str
    cwd: Path

    @classmethod
    def find(cls, cwd: Path, explicit: str | None = None) -> Fly | None:
        """Locate flyctl: an explicit path, else `fly` or `flyctl` on PATH; None if absent."""
        for name in [explicit] if explicit else ["fly", "flyctl"]:
            found = shutil.which(name)
            if found:
                return cls(found, cwd)
        return None

    def succeeds(self, *args: str) -> bool:
        """Whether a read-only call exits 0 (its output is discarded)."""
        return self._call(args, capture=True).returncode == 0

    def text(self, *args: str) -> str:
        """Run a read-only call and return its standard output."""
        done = self._call(args, capture=True)
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1:] or ["no message"]
            raise FlyError(f"`fly {' '.join(args[:2])}` failed: {detail[0]}")
        return done.stdout

    def json(self, *args: str) -> Any:
        """Run a read-only call that prints JSON and return it parsed."""
        output = self.text(*args)
        try:
            return json.loads(output or "null")
        except json.JSONDecodeError as error:
            raise FlyError(f"`fly {' '.join(args[:2])}` did not print JSON: {error}") from None

    def change(self, args: Sequence[str], *, shown: str) -> None:
        """Run a call that changes something; `shown` names it in errors (never `args`)."""
        if self._call(args, capture=False).returncode != 0:
            raise FlyError(f"`fly {shown}` failed (see flyctl's output above)")

    def _call(self, args: Sequence[str], *, capture: bool) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.executable, *args],
            cwd=self.cwd,
            capture_output=capture,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )


def field(row: Mapping[str, Any], name: str) -> Any:
    """A field of a flyctl JSON object, whatever its case (`Name` in some versions, `name`)."""
    for key, value in row.items():
        if key.lower() == name.lower():
            return value
    return None


def names(rows: Any) -> set[str]:
    """The `name` of every object in a flyctl JSON list."""
    if not isinstance(rows, list):
        return set()
    return {str(field(row, "name")) for row in rows if isinstance(row, dict) and field(row, "name")}
