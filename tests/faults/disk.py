"""A small filesystem that fills: a real tmpfs of a few pages, mounted for one test.

`fill()` writes a filler file until the kernel answers ENOSPC, so every later write
fails exactly as on a full production volume (in `write`, `flush` or `fsync`, wherever
the kernel says so); `free()` deletes the filler. Mounting needs root (CAP_SYS_ADMIN):
where it is refused the test is skipped, saying why.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "64k"
_CHUNK = b"\0" * 4096


class SmallDisk:
    """A mounted tmpfs at `root`; make directories on it before filling it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._filler = root / ".filler"

    def fill(self) -> None:
        """Use up every free byte."""
        with self._filler.open("ab", buffering=0) as file:
            try:
                while True:
                    file.write(_CHUNK)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
        probe = self.root / ".probe"
        with pytest.raises(OSError, match="No space left"):
            probe.write_bytes(_CHUNK)
        probe.unlink(missing_ok=True)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


def _run(*command: str) -> str | None:
    """None if the command succeeded, else why not."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError as error:
        return str(error)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 64 KiB tmpfs under the test's directory, unmounted afterwards."""
    root = tmp_path / "small-disk"
    root.mkdir()
    refused = _run("mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(root))
    if refused is not None:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {refused}")
    try:
        yield SmallDisk(root)
    finally:
        _run("umount", "--lazy", str(root))
