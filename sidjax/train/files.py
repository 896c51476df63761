"""Writing a run's files safely: atomic replacement, checksums, room checked first, one-line failures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import resource
import shutil
from typing import Any

MANIFEST = "files.sha256.json"  # in each checkpoint's directory, written after orbax's save


def file_digests(directory: str) -> dict[str, str]:
    """sha256 of every file below ``directory`` (its manifest excluded), by relative path."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != MANIFEST:
                digests[relative] = _file_sha256(path)
    return digests


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` file, up to a torn line (a kill mid-write)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if (
                not line.endswith("\n")
                or not isinstance(record, dict)
                or record.get("epoch") != len(records) + 1
            ):
                break
            records.append(record)
    return records


class RunWriteError(OSError):
    """A run directory could not be written (full disk, quota, file-size limit, ...).

    Attributes:
      what: what could not be written, why, and what is intact (one clause).
      saved: whether an intact checkpoint of the run remains (``resume`` continues there).
    """

    ADVICE = "free space on that disk (or raise the quota or file-size limit)"

    def __init__(self, what: str, saved: bool):
        super().__init__(what)
        self.what, self.saved = what, saved

    def __str__(self) -> str:
        return f"{self.what}; {self.ADVICE} and run again" + (" with resume=True" if self.saved else "")


def writable(directory: str) -> bool:
    """The directory can take new files (``access`` also answers a read-only file system)."""
    return os.access(directory, os.W_OK | os.X_OK)


def room_for(directory: str, nbytes: int) -> None:
    """Raises ``OSError`` before a checkpoint of ``nbytes`` is written where it cannot fit: a failure
    inside orbax's writer threads cannot be turned into one line."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < nbytes:
        raise OSError(f"the file-size limit (ulimit -f) is {limit} bytes; the checkpoint needs {nbytes}")
    free = shutil.disk_usage(directory).free
    if free < nbytes:
        raise OSError(f"No space left on device: {free} bytes free, the checkpoint needs {nbytes}")


def io_cause(err: Exception) -> str:
    """The operating system's words for a failed write, e.g. ``No space left on device``."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, OSError) and err.args:
        return str(err.args[0])
    found = re.search(r"([^:\[\]]+) \[os_error_code='?\d+'?\]", str(err))  # tensorstore's form
    if found:
        return found.group(1).strip()
    first = (str(err).splitlines() or [type(err).__name__])[0]
    return first if len(first) <= 160 else first[:157] + "..."


@contextlib.contextmanager
def orbax_quiet():
    """Orbax logs each unreadable checkpoint file through absl before it raises; the run says it once."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
