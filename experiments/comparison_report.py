"""The comparison's part of RESULTS.md: every method at its own learning rate, chosen on validation, beside
the cell's floor; the verdicts and the claims rows they give; the grid in an appendix.

A cell is a network and its data (``mlp_trunk``, ``lenet``, ...). In each,
every method's grid trained on a selection seed and its point was chosen by
the late validation accuracy (``<run>/grid/selection.json``); seeds 0..2
then trained at that point. A method counts only where it beats the cell's
floor (a linear classifier on the pixels; for LeNet also LeNet with frozen
random convolutions) on validation: its late validation accuracy minus the
floor's, paired by seed, has a 95 % interval above 0. The window is the
report's one (``report.LATE``): the mean of the last 5 epochs.
"""

from __future__ import annotations

import json
import os

import numpy as np

from sidjax.train.stats import decide, interval_text, mean_std

FLOOR = "linear"
FLOORS = {"lenet": ("linear", "bp_random_convolutions")}  # a cell's floors beyond the linear one
CELLS = {
    "mlp_trunk": "MLP trunk, L = 10, Fashion-MNIST (55 000 training, 5 000 validation examples), 20 epochs",
    "mlp4_blockwise": "four dense units (blockwise MLP), Fashion-MNIST (55 000 / 5 000), 30 epochs",
    "lenet": "biotorch's LeNet, Fashion-MNIST (55 000 / 5 000), SGD with momentum, 20 epochs",
    "simplecnn_trunk": "SimpleCNN trunk, L = 10, 10 000 Fashion-MNIST examples (2 000 validation), 15 epochs",
    "simplecnn_blockwise": "SimpleCNN cut into K = 4 units, 10 000 examples (2 000 validation), 15 epochs",
}
COMPARED = {"noprop": "NoProp (as the SID authors ran it)", "fa": "feedback alignment",
            "dfa": "direct feedback alignment", "ff": "Forward-Forward", "hsic": "the HSIC bottleneck"}  # fmt: skip
STRONG = 3.0  # points: what "strongly outperforms" needs here


def selections(results_dir: str, experiment) -> dict[str, dict]:
    """Each tuned run's selection record (its own grid's, or the run it follows)."""
    found = {}
    for name, config in experiment.runs.items():
        tuned = experiment.follows.get(name, name if config.grid else None)
        path = os.path.join(results_dir, experiment.name, tuned or "", "grid", "selection.json")
        if tuned and os.path.exists(path):
            with open(path) as f:
                found[name] = json.load(f)
    return found


def _spread(values: list[float]) -> str:
    return mean_std(values, 100) if values else "—"


def _by_seed(runs: dict, field: str) -> dict[int, float]:
    return {s: r["summary"][field] for s, r in runs.items() if field in r["summary"]}


def paired(found: dict, a: str, b: str, field: str = "late_test_accuracy") -> list[float]:
    """``a - b`` in points for each seed both runs have."""
    x, y = _by_seed(found.get(a, {}), field), _by_seed(found.get(b, {}), field)
    return [100 * (x[s] - y[s]) for s in sorted(set(x) & set(y))]


def floor_of(cell: str) -> tuple[str, ...]:
    return FLOORS.get(cell, (FLOOR,))


def above_floors(found: dict, cell: str, method: str) -> str:
    """``"yes"``, ``"no"`` or ``"undecided"``: its late validation accuracy beats every floor of the cell
    (paired by seed, 95 % interval above 0); a floor itself is not judged."""
    name = f"{cell}/{method}"
    floors = [f"{cell}/{f}" for f in floor_of(cell) if f"{cell}/{f}" in found and f != method]
    if method in floor_of(cell) or not floors:
        return "—"
    decisions = [decide(paired(found, name, f, "late_val_accuracy")) for f in floors]
    if all(d == "holds" for d in decisions):
        return "yes"
    return "no" if any(d == "does not hold" for d in decisions) else "undecided"


def flattened(runs: dict) -> str:
    """How much the mean validation accuracy still rose over the last 5 epochs against the 5 before."""
    curves = [[r.get("val_accuracy") for r in run["metrics"]] for run in runs.values()]
    if not curves or any(v is None for c in curves for v in c) or len(curves[0]) < 10:
        return "—"
    mean = 100 * np.mean(np.asarray(curves, dtype=float), axis=0)
    gain = mean[-5:].mean() - mean[-10:-5].mean()
    return f"{'flat' if gain < 0.5 else 'rising'} ({gain:+.2f})"


def _chosen(record: dict | None) -> str:
    if record is None:
        return "—"
    grid = ", ".join(f"{k} {', '.join(f'{v:g}' for v in values)}" for k, values in record["grid"].items())
    if record["chosen"] is None:
        return f"every point diverged ({grid})"
    point = ", ".join(f"{v:g}" for v in record["chosen"]["point"].values())
    diverged = [p["name"] for p in record["points"] if p["diverged"]]
    return (f"{point} of {grid} ({100 * record['chosen']['late_val_accuracy']:.2f} %)"
            + (f"; diverged: {', '.join(diverged)}" if diverged else ""))  # fmt: skip


def section(experiment, found: dict, plots: str, rel: str, results_dir: str, curve_grid) -> str:
    """Per cell, each method at its chosen point: the grid and choice, test accuracy over seeds, whether it
    beats the floor on validation, SID − it (late, paired), whether its validation curve flattened."""
    chosen = selections(results_dir, experiment)
    lines = ["| cell | method | chosen lr of the grid (late validation, selection seed) | final test % | "
             "late test % | late validation % | above the floor | SID − it, late test (points) | validation curve, "
             "last 5 vs the 5 before |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    verdicts, panels = [], {}
    for cell in dict.fromkeys(n.split("/")[0] for n in experiment.runs):
        sid, names = f"{cell}/sid", [n for n in experiment.runs if n.startswith(cell + "/")]
        if not any(n in found for n in names):
            continue
        panels[cell] = {}
        for name in names:
            runs, method = found.get(name), name.split("/", 1)[1]
            if not runs:
                lines.append(f"| {cell} | {method} | not yet run | | | | | | |")
                continue
            floor = above_floors(found, cell, method)
            diff = "—" if name == sid else interval_text(paired(found, sid, name))
            lines.append(
                f"| {cell} | {method} | {_chosen(chosen.get(name))} | "
                f"{_spread([r['summary']['final_test_accuracy'] for r in runs.values()])} | "
                f"{_spread(list(_by_seed(runs, 'late_test_accuracy').values()))} | "
                f"{_spread(list(_by_seed(runs, 'late_val_accuracy').values()))} | {floor} | {diff} | "
                f"{flattened(runs)} |"
            )
            curves = [
                [100 * r["val_accuracy"] for r in run["metrics"] if "val_accuracy" in r]
                for run in runs.values()
            ]
            if all(curves) and len({len(c) for c in curves}) == 1:
                mean = np.mean(np.asarray(curves, dtype=float), axis=0)
                panels[cell][method] = (np.arange(1, len(mean) + 1), mean, None)
            if method in COMPARED and sid in found:
                verdicts.append(
                    f"- {cell}: SID against {COMPARED[method]}: {claim_status(found, cell, method)}."
                )
    panels = {cell: series for cell, series in panels.items() if series}
    figure = []
    if panels:
        curve_grid(os.path.join(plots, "comparison_validation.png"), "validation accuracy per epoch at the chosen "
                   "learning rate, mean over seeds", "validation accuracy (%)", panels, own_legends=True)  # fmt: skip
        figure = [
            "",
            f"![each method's validation accuracy per epoch, per cell]({rel}/comparison_validation.png)",
        ]
    return "\n".join(lines + [""] + verdicts + figure)


def claim_status(found: dict, cell: str, method: str) -> str:
    """The status of "SID strongly outperforms <method>" in one cell, in words that follow the intervals:
    not comparable where either is below the floor; "reproduced" only where SID is ahead by ``STRONG``
    points or more."""
    for who in (method, "sid"):
        if above_floors(found, cell, who) != "yes":
            what = "SID" if who == "sid" else method
            return f"not comparable ({what} is not above the floor on validation)"
    diffs = paired(found, f"{cell}/sid", f"{cell}/{method}")
    ahead, strong = decide(diffs), decide(diffs, STRONG)
    if strong == "holds":
        return f"reproduced: SID ahead by {STRONG:g} points or more"
    if ahead == "holds":
        size = "by less than" if strong == "does not hold" else "by undecided size relative to"
        return f"not reproduced as strong: SID ahead, {size} {STRONG:g} points"
    return {"does not hold": "not reproduced: SID is not ahead", "undecided": "undecided at these seeds"}.get(
        ahead, "cannot be judged from one seed"
    )


def claims_rows(found: dict, no_provenance) -> list[str]:
    """One row per cell and compared method of the claims table."""
    rows = []
    for cell, setting in CELLS.items():
        for method, title in COMPARED.items():
            sid, other = f"{cell}/sid", f"{cell}/{method}"
            if sid not in found or other not in found:
                continue
            diffs = paired(found, sid, other)
            rows.append(
                f"| SID strongly outperforms {title} | {setting}, each at its learning rate chosen on validation, "
                f"{len(diffs)} seeds | {claim_status(found, cell, method)} | SID − {method}, last 5 epochs: "
                f"{interval_text(diffs)} points; {method} ends at "
                f"{mean_std([r['summary']['final_test_accuracy'] for r in found[other].values()], 100)} %, the "
                f"floor at {_floor_text(found, cell)}{no_provenance(found, sid, other)} |"
            )
    return rows


def _floor_text(found: dict, cell: str) -> str:
    texts = [f"{mean_std([r['summary']['final_test_accuracy'] for r in found[f'{cell}/{f}'].values()], 100)} % ({f})"
             for f in floor_of(cell) if f"{cell}/{f}" in found]  # fmt: skip
    return ", ".join(texts) or "— (not yet run)"


def appendix(experiment, found: dict, results_dir: str) -> str:
    """Every grid point of every tuned run: its late validation accuracy, and (marked) its test accuracy."""
    lines = ["### Appendix: every point of every grid (for the record; a point's test accuracy chose nothing)", "",
             "| run | point | late validation % (selection seed) | diverged | late test % (selection seed; not a "
             "result) |", "|---|---|---|---|---|"]  # fmt: skip
    for name, record in selections(results_dir, experiment).items():
        if name in experiment.follows:
            continue
        tests = {n: rows for n, rows in record["appendix_test_accuracy"].items() if n != "note"}
        if record["chosen"] is not None:
            tests[record["chosen"]["name"]] = record["chosen"]["test"]
        for point in record["points"]:
            val = "—" if point["late_val_accuracy"] is None else f"{100 * point['late_val_accuracy']:.2f}"
            test = _spread([t["late_test_accuracy"] for t in tests.get(point["name"], [])])
            mark = " (chosen)" if record["chosen"] and record["chosen"]["name"] == point["name"] else ""
            lines.append(
                f"| {name} | {point['name']}{mark} | {val} | {'yes' if point['diverged'] else 'no'} | {test} |"
            )
    return "\n".join(lines) if len(lines) > 4 else ""
