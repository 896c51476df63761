"""NoProp's prediction is random: the test accuracy of each finished NoProp run for several noise draws.

For every ``<results>/<experiment>/**/noprop/seed<k>/`` run directory, loads its
final checkpoint, evaluates the prediction for starting-noise draws 0..D-1 on
the run's own test split (its ``limit_test``) and writes ``draws.json`` beside
``summary.json``; the report shows the spread.

    python -m experiments.noprop_draws results/comparison --draws 5
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os

import numpy as np

from sidjax import Dataset, Network, Variables, evaluate, load_dataset, load_run
from sidjax.methods.noprop import Denoise


def draw_accuracies(
    network: Network, variables: Variables, dataset: Dataset, draws: int = 5, batch_size: int = 1000
) -> list[float]:
    """Test accuracy of a trained NoProp network's prediction for starting-noise draws ``0 .. draws-1``.

    ``dataset``: a ``sidjax.Dataset`` whose test split is evaluated (apply the
    run's ``limit_test`` first: ``dataset.subset(None, limit_test)``).
    """
    return [
        evaluate(dataclasses.replace(network, inference=Denoise(draw)), variables, dataset, batch_size)[
            "accuracy"
        ]
        for draw in range(draws)
    ]


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
