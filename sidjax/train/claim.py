"""One writer per run directory: an exclusive ``flock`` on ``.<name>.lock`` beside it, renewed while held.

The kernel drops the lock of a killed process, so a stale claim on this
machine is taken over, with a message. A claim made on another machine
cannot be checked from here (``flock`` does not reach across machines on many
shared file systems): its writer renews it every ``RENEW_CLAIM_S``, and it is
honoured until it has gone ``STALE_CLAIM_S`` without renewal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import threading
import time
from collections.abc import Callable

from sidjax.errors import ConfigError

STALE_CLAIM_S = 600.0  # a claim from another machine, not renewed for this long, is taken over
RENEW_CLAIM_S = 60.0  # how often a writer renews its claim


class Claim:
    """The claim on the run directory ``run``, held in the file ``lock``.

    Args:
      run: the run directory (named in messages).
      lock: the lock file.
      log: where a claim taken over is said.
    """

    def __init__(self, run: str, lock: str, log: Callable[[str], None]):
        self.run, self.lock, self.log = run, lock, log
        self._lock: int | None = None  # the claim's file descriptor
        self._renewing: threading.Event | None = None  # set to stop the renewal

    def acquire(self) -> None:
        """Makes this process the directory's only writer, or refuses in one line (writing nothing).

        The claim is an exclusive ``flock`` on ``.<name>.lock`` beside the
        directory, held until ``release`` (which removes the file); the file
        names the holder. The kernel releases the lock of a process that dies,
        even by SIGKILL, and its file stays: such a stale claim is taken over,
        and said so.
        """
        lock = self.lock
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise ConfigError(
                    f"out {self.run} is being written by another sidjax process ({holder}); wait for it to "
                    "finish or stop it (two writers would corrupt the run), or choose another out",
                    "out",
                ) from None
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    break
            os.close(fd)  # we locked the file of a writer that had just released and removed it: again
        before = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if before:  # a writer that ends removes its file: this one was killed, or runs elsewhere
            try:
                self._take_over(before, time.time() - os.fstat(fd).st_mtime)
            except ConfigError:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {_now()}".encode(), 0)
        self._lock = fd
        self._renewing = threading.Event()
        threading.Thread(target=_renew, args=(fd, self._renewing), daemon=True, name="sidjax-claim").start()

    def _take_over(self, holder: str, age: float) -> None:
        """Takes over the claim of ``holder``, last renewed ``age`` seconds ago, or refuses.

        On this machine the free ``flock`` proves the holder is gone. A holder on
        another machine may still be running (its lock is not seen from here):
        it is refused until its claim has gone ``STALE_CLAIM_S`` without renewal.
        """
        host = re.match(r"pid \d+ on (\S+),", holder)
        if host and host.group(1) != socket.gethostname() and age < STALE_CLAIM_S:
            raise ConfigError(
                f"out {self.run} is claimed by {host.group(0)[:-1]} (another machine), renewed {age:.0f} s ago; "
                "sidjax cannot see that process from here: wait for it to finish, or, if it is gone, run again "
                f"once its claim is {STALE_CLAIM_S / 60:.0f} minutes old, or delete {self.lock}",
                "out",
            )
        why = (
            "is no longer running"
            if not host or host.group(1) == socket.gethostname()
            else (f"has not renewed its claim for {age / 60:.0f} minutes")
        )
        self.log(f"{self.run}: its last writer ({holder}) {why}; taking the run over")

    def release(self) -> None:
        """Gives the claim up (removing its file); nothing where none is held."""
        if self._renewing is not None:
            self._renewing.set()
            self._renewing = None
        if self._lock is not None:
            os.remove(self.lock)  # while still held: a writer waiting on it will see it is gone
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _renew(fd: int, stop: threading.Event) -> None:
    """Renews a claim (its lock file's modification time) until ``stop`` is set."""
    while not stop.wait(RENEW_CLAIM_S):
        with contextlib.suppress(OSError):  # the claim was just released
            os.utime(fd)
