"""A small filesystem that fills: a real tmpfs of a few pages, mounted for one test.

`fill()` writes a filler file until the kernel answers ENOSPC, so every later write
fails exactly as on a full production volume (in `write`, `flush` or `fsync`, wherever
the kernel says so); `free()` deletes the filler. Mounting needs root (CAP_SYS_ADMIN);
where it is refused, the same directory gets a byte budget instead, enforced at the one
seam every transcript and spool write goes through (`write_atomically`), which then
raises the kernel's own `OSError(ENOSPC)`.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import voicebridge.storage.local
import voicebridge.storage.spool

SIZE = 64 * 1024
_CHUNK = b"\0" * 4096


class SmallDisk:
    """`root`: a 64 KiB tmpfs, or a directory with a 64 KiB budget (`mounted` says which)."""

    def __init__(self, root: Path, mounted: bool) -> None:
        self.root = root
        self.mounted = mounted
        self._filler = root / ".filler"

    def fill(self) -> None:
        """Use up every free byte."""
        with self._filler.open("ab", buffering=0) as file:
            try:
                while self.mounted or self.used() < SIZE:
                    file.write(_CHUNK)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def used(self) -> int:
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())

    def write_atomically(self, path: Path, data: bytes) -> None:
        """The store's writer, refusing what would go past the budget under `root`."""
        if path.is_relative_to(self.root) and self.used() + len(data) > SIZE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        _write_atomically(path, data)


_write_atomically = voicebridge.storage.local.write_atomically


def _mount_refused(root: Path) -> str | None:
    """None once a tmpfs is mounted at `root`, else why not."""
    command = ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(root)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError as error:
        return str(error)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    """A 64 KiB disk under the test's directory, unmounted afterwards."""
    root = tmp_path / "small-disk"
    root.mkdir()
    if _mount_refused(root) is None:
        try:
            yield SmallDisk(root, mounted=True)
        finally:
            subprocess.run(["umount", "--lazy", str(root)], check=False, timeout=10)
        return
    disk = SmallDisk(root, mounted=False)
    for module in (voicebridge.storage.local, voicebridge.storage.spool):
        monkeypatch.setattr(module, "write_atomically", disk.write_atomically)
    yield disk
