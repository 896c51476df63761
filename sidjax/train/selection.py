"""Choosing a grid's point on the validation split, never on the test split.

The chosen point is the one whose members (its seeds) have the best mean
*late* validation accuracy: the mean over the last ``late_epochs`` epochs,
a window fixed by the config before the run. A point where any seed
diverged is not eligible, and is kept in the record. The record
(``selection.json`` beside the grid's directories) holds the grid, every
point's validation curve per seed, the choice and the chosen point's test
accuracy; the other points' test accuracies stand apart, in an appendix,
because reading them to choose would be choosing on the test set.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from sidjax.errors import ConfigError
from sidjax.train.config import TrainConfig
from sidjax.train.files import write_atomic
from sidjax.train.members import Member, point_name
from sidjax.train.plan import Plan
from sidjax.train.records import diverged_epoch

SELECTION = "selection.json"
CRITERION = "the best mean over seeds of the validation accuracy averaged over the last late_epochs epochs"


def late_mean(history: list[dict[str, Any]], key: str, window: int) -> float:
    """The mean of ``key`` over the last ``window`` records of ``history`` (nan where it has none)."""
    values = [r[key] for r in history[-window:] if key in r]
    return float(np.mean(values)) if values else float("nan")


def choose(
    config: TrainConfig, histories: dict[Member, list[dict]], diverged: dict[Member, int | None]
) -> dict:
    """The selection record of a finished grid.

    Args:
      config: the grid's config (``validation`` > 0).
      histories: every member's epoch records.
      diverged: each member's first diverged epoch, or None.

    Returns:
      ``{"grid", "late_epochs", "criterion", "points": [...], "chosen": {...},
      "appendix_test_accuracy": {...}}``; ``chosen`` is None where every
      point diverged.
    """
    if not config.validation:
        raise ConfigError(
            "choosing a grid's point needs a validation split: set validation > 0", "validation"
        )
    window, points = min(config.late_epochs, config.epochs), []
    for point in config.points():
        members = [m for m in histories if m.point == point]
        rows = [
            {
                "seed": m.seed,
                "val_curve": [r.get("val_accuracy") for r in histories[m]],
                "late_val_accuracy": late_mean(histories[m], "val_accuracy", window),
                "diverged_in_epoch": diverged[m],
            }
            for m in members
        ]
        eligible = all(row["diverged_in_epoch"] is None for row in rows)
        score = float(np.mean([row["late_val_accuracy"] for row in rows])) if eligible else None
        points.append({"name": point_name(point), "point": dict(point), "late_val_accuracy": score,
                       "diverged": not eligible, "seeds": rows})  # fmt: skip
    scored = [
        p for p in points if p["late_val_accuracy"] is not None and not math.isnan(p["late_val_accuracy"])
    ]
    best = max(scored, key=lambda p: p["late_val_accuracy"], default=None)  # the first of equals
    tests = {point_name(m.point): [] for m in histories}
    for m, history in histories.items():
        tests[point_name(m.point)].append(_test(history, window) | {"seed": m.seed})
    chosen = None if best is None else {**{k: best[k] for k in ("name", "point", "late_val_accuracy")},
                                        "test": tests[best["name"]]}  # fmt: skip
    return {
        "grid": {k: list(v) for k, v in config.grid.items()},
        "late_epochs": window,
        "criterion": CRITERION,
        "points": points,
        "chosen": chosen,
        "appendix_test_accuracy": {
            "note": "the other points' test accuracy: never used to choose, not to be reported as results",
            **{name: rows for name, rows in tests.items() if best is None or name != best["name"]},
        },
    }


def _test(history: list[dict], window: int) -> dict[str, float]:
    return {"final_test_accuracy": history[-1]["test_accuracy"] if history else float("nan"),
            "late_test_accuracy": late_mean(history, "test_accuracy", window)}  # fmt: skip


def write_selection(out_dir: str, record: dict) -> str:
    """Writes ``record`` as ``out_dir/selection.json``; its path."""
    path = os.path.join(out_dir, SELECTION)
    write_atomic(path, json.dumps(record, indent=2))
    return path


def read_selection(out_dir: str) -> dict:
    """The selection record of the grid in ``out_dir`` (``ConfigError`` where there is none)."""
    path = os.path.join(out_dir, SELECTION)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{out_dir} holds no {SELECTION}: it is not a finished grid with a validation split"
        ) from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path} is damaged ({err}); run the grid again with resume to rewrite it"
        ) from None


def describe_choice(record: dict) -> str:
    """One line: the chosen point and its late validation accuracy, or that none could be chosen."""
    chosen = record["chosen"]
    if chosen is None:
        return "no point of the grid could be chosen: every point diverged"
    values = ", ".join(f"{k} {v:g}" for k, v in chosen["point"].items())
    return (f"chosen on validation: {values} (late validation accuracy {chosen['late_val_accuracy']:.4f} over "
            f"the last {record['late_epochs']} epochs)")  # fmt: skip


def select_point(plan: Plan, histories: dict[Member, list[dict]], out_dir: str | None, log) -> None:
    """Chooses the grid's point on the validation split and writes ``selection.json`` (where there is a
    split and a directory)."""
    if not plan.config.validation:
        log(
            "a grid without a validation split: no point is chosen (set validation to hold some examples out)"
        )
        return
    record = choose(plan.config, histories, {m: diverged_epoch(plan, h) for m, h in histories.items()})
    where = f"; {write_selection(out_dir, record)}" if out_dir is not None else ""
    log(describe_choice(record) + where)
