"""NoProp's prediction is random: the test accuracy of each finished NoProp run for several noise draws.

For every ``<results>/<experiment>/**/noprop/seed<k>/`` run directory, loads its
final checkpoint, evaluates the prediction for starting-noise draws 0..D-1 on
the run's own test split (its ``limit_test``) and writes ``draws.json`` beside
``summary.json``; the report shows the spread.

    python -m experiments.noprop_draws results/comparison --draws 5
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from sidjax import load_dataset, load_run
from sidjax.noprop import draw_accuracies


def measure(run_dir: str, draws: int) -> dict:
    """``{"draws": D, "accuracies": [...]}`` for one run directory (draw 0 is what the run reported)."""
    loaded = load_run(run_dir)
    dataset = load_dataset(loaded.summary["dataset"]).subset(None, loaded.summary.get("limit_test"))
    return {"draws": draws, "accuracies": draw_accuracies(loaded.network, loaded.variables, dataset, draws)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m experiments.noprop_draws", description=__doc__.splitlines()[0]
    )
    p.add_argument("results", help="a results directory, e.g. results/comparison")
    p.add_argument("--draws", type=int, default=5)
    args = p.parse_args(argv)
    for summary in sorted(
        glob.glob(os.path.join(args.results, "**", "noprop", "seed*", "summary.json"), recursive=True)
    ):
        run_dir = os.path.dirname(summary)
        found = measure(run_dir, args.draws)
        with open(os.path.join(run_dir, "draws.json"), "w") as f:
            json.dump(found, f, indent=2)
        acc = 100 * np.asarray(found["accuracies"])
        print(f"{run_dir}: {acc.mean():.2f} ± {acc.std(ddof=1):.2f} % over {args.draws} draws")


if __name__ == "__main__":
    main()
