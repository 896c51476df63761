"""Numbers over seeds, as every report of sidjax states them: mean ± std, and paired differences with their
95 % interval, whose words a verdict follows."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"88.12 ± 0.31"`` (sample std) over the values times ``scale``; the value alone for one."""
    v = scale * np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """The mean of paired differences and its 95 % interval (Student's t over the seeds; nan for one seed)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def interval_text(diffs: list[float]) -> str:
    """``"+1.23 ± 0.40 [+0.24, +2.22]"``: mean ± std [95 % interval] of paired differences; ``—`` for none."""
    if len(diffs) < 2:
        return "—" if not diffs else f"{diffs[0]:+.2f}"
    mean, low, high = interval(diffs)
    return f"{mean:+.2f} ± {np.std(diffs, ddof=1):.2f} [{low:+.2f}, {high:+.2f}]"


def decide(diffs: list[float], threshold: float = 0.0) -> str:
    """Whether "the mean difference is at least ``threshold``" holds by its 95 % interval:
    ``"holds"``, ``"does not hold"``, ``"undecided"`` or ``"one seed"``."""
    if len(diffs) < 2:
        return "one seed"
    _, low, high = interval(diffs)
    return "holds" if low >= threshold else "does not hold" if high < threshold else "undecided"


def verdict(diffs: list[float], threshold: float = 0.0) -> str:
    """Words for "the mean difference is at least ``threshold``" that follow its 95 % interval."""
    decision = decide(diffs, threshold)
    if decision == "one seed":
        return "cannot be judged from one seed"
    _, low, high = interval(diffs)
    where = {"holds": "lies above", "does not hold": "lies below", "undecided": "contains"}[decision]
    return f"{'is undecided' if decision == 'undecided' else decision} (the 95 % interval [{low:+.2f}, {high:+.2f}] {where} {threshold:g})"
