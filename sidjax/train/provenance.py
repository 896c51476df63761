"""What code a run was trained with: the sidjax version, the git commit and what differs from it."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from sidjax._version import __version__


def provenance() -> dict[str, Any]:
    """The sidjax version and, where sidjax runs from a git checkout, its commit and what differs from it.

    Anything in the repository counts (``experiments/`` and its configs, new
    files not yet added included), but ``results/``, which runs write into:
    ``git_modified`` is whether anything differs, ``git_modified_paths`` the
    first 20 paths that do. Without a checkout (an installed package) all
    three are None.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        top = _git(here, "rev-parse", "--show-toplevel").strip()
        commit = _git(top, "rev-parse", "HEAD").strip()
        status = _git(
            top, "status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)results"
        )
    except (OSError, subprocess.SubprocessError):
        commit, status = None, ""
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "sidjax_version": __version__,
        "git_commit": commit,
        "git_modified": bool(paths) if commit else None,
        "git_modified_paths": paths[:20] if commit else None,
    }


def _git(directory: str, *args: str) -> str:
    return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout  # fmt: skip


def with_start_commit(summary: dict[str, Any], run_info: dict[str, Any]) -> dict[str, Any]:
    """``summary`` naming the commit its run started from (``run.json``'s): where the checkout moved
    while it trained (or between its resumes), ``git_commit_changed`` says so and ``git_commits`` lists
    each start's and the end's."""
    starts = [run_info.get("git_commit")] + [r.get("git_commit") for r in run_info.get("resumed", [])]
    commits = list(dict.fromkeys(c for c in [*starts, summary.get("git_commit")] if c))
    if not starts[0]:
        return summary
    summary = {**summary, "git_commit": starts[0], "git_commit_changed": len(commits) > 1}
    return {**summary, "git_commits": commits} if len(commits) > 1 else summary
