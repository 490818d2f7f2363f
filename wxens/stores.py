"""What every on-disk store of wxens shares, below the four layers (each may import it):
its error, the one-writer lock, and the hours-since-1970 integers its time coordinates are
stored as (CF `hours since 1970-01-01`, int64)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EPOCH = np.datetime64("1970-01-01", "ns")
HOUR = np.timedelta64(1, "h")


class StoreError(RuntimeError):
    """A store that cannot be written or read; the message names the path."""


class StoreBusyError(StoreError):
    """A store that another live run is writing (a scheduler retries later)."""


def hours_since_epoch(times: object) -> np.ndarray:
    """Whole hours since 1970-01-01 of datetime64 `times`, int64 (floored).

    Example:
        >>> hours_since_epoch(np.array(["1970-01-02T06"], dtype="datetime64[h]")).tolist()
        [30]
    """
    return (np.asarray(times, dtype="datetime64[ns]") - EPOCH) // HOUR


def times_from_hours(hours: object) -> np.ndarray:
    """datetime64[ns] of whole `hours` since 1970-01-01 (the inverse of `hours_since_epoch`)."""
    return EPOCH + np.asarray(hours).astype(np.int64) * HOUR


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """`PATH.lock`, holding the pid of the one run that writes the store at `PATH`.

    `acquire` creates it atomically (`O_EXCL`), so of two runs starting together only one gets
    it; a lock left by a dead process is taken over. Same-host only: the pid is checked with
    `kill(pid, 0)`. Readers take no lock.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = self.path.with_name(self.path.name + ".lock")

    def holder(self) -> int | None:
        """The pid of another live process holding the lock, else None."""
        try:
            text = self.file.read_text().strip()
        except FileNotFoundError:
            return None
        pid = int(text) if text.isdigit() else 0
        if pid == os.getpid():
            return None
        if pid == 0:  # just created by a run that has not written its pid yet
            return -1
        return pid if _pid_alive(pid) else None

    def check(self) -> None:
        """Refuse the store if another live run holds its lock (`StoreBusyError`)."""
        pid = self.holder()
        if pid is not None:
            raise StoreBusyError(f"{self.path} is being written by another run (pid {pid})")

    def acquire(self) -> None:
        for _ in range(3):
            try:
                descriptor = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self.check()
                self.file.unlink(missing_ok=True)  # a dead run's (or our own) lock
                continue
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)
            return
        raise StoreBusyError(f"{self.path}: cannot take the lock {self.file}")

    def release(self) -> None:
        self.file.unlink(missing_ok=True)
