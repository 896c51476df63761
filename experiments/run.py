"""Run an experiment config (or several) over its seeds; results go to results/<experiment>/.

    python experiments/run.py label_noise                     # every run x seed of the config
    python experiments/run.py depth --only 'trunk/*'          # the runs matching a pattern
    python experiments/run.py label_noise depth alpha --smoke # tiny variants (what CI runs)
    python experiments/run.py --list                          # the experiments and their runs

Each run writes ``<results>/<experiment>/<run>/seed<k>/`` (config.json,
metrics.jsonl, orbax checkpoints, summary.json). Running again continues:
finished runs are skipped, interrupted ones resume from their last checkpoint
to the same result as an uninterrupted run. A run that fails (e.g. a dataset
that cannot be downloaded) is reported in one line and the others go on; the
exit status is 1 if any failed.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import configs  # noqa: E402
from train import OneLineParser  # noqa: E402

from sidjax.data import Dataset, DatasetUnavailableError, load_dataset  # noqa: E402
from sidjax.experiment import ConfigError, run  # noqa: E402


def run_experiment(
    experiment: configs.Experiment,
    results_dir: str,
    *,
    only: str = "*",
    seeds: tuple[int, ...] | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    datasets: dict[str, Dataset] | None = None,
) -> tuple[dict[tuple[str, int], dict], list[str]]:
    """Runs the selected runs x seeds; returns ({(run, seed): summary}, [failure lines]).

    ``datasets`` caches loaded datasets by name (filled as they are loaded).
    """
    selected = experiment.select(only)
    if not selected:
        raise ConfigError(f"--only {only!r} matches none of {experiment.name}'s runs (see --list)")
    for name, config in selected.items():
        try:
            config.validate()
        except ConfigError as err:
            raise ConfigError(f"{experiment.name}/{name}: {err}") from err
    datasets = {} if datasets is None else datasets
    summaries, failures = {}, []
    for name, config in selected.items():
        for seed in seeds if seeds is not None else experiment.seeds:
            out = os.path.join(results_dir, experiment.name, name, f"seed{seed}")
            label = f"{experiment.name}/{name}/seed{seed}"
            try:
                if config.dataset not in datasets:
                    datasets[config.dataset] = load_dataset(
                        config.dataset, data_dir, manual_dir, image_size=config.image_size
                    )
                print(f"== {label}", flush=True)
                summaries[(name, seed)] = s = run(
                    dataclasses.replace(config, seed=seed),
                    out,
                    dataset=datasets[config.dataset],
                    progress=progress,
                    overwrite=overwrite,
                    resume=not overwrite,
                )
                print(
                    f"   final test accuracy {s['final_test_accuracy']:.4f} "
                    f"(best {s['best_test_accuracy']:.4f}), {s['time_per_epoch_s']:.1f} s/epoch",
                    flush=True,
                )
            except (ConfigError, DatasetUnavailableError, FloatingPointError) as err:
                failures.append(f"{label}: {err}")
                print(f"   failed: {err}", flush=True)
    return summaries, failures


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("experiments", nargs="*", help=f"one or more of: {', '.join(configs.NAMES)}")
    p.add_argument("--only", default="*", help="fnmatch pattern of run names (default: all)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    p.add_argument("--smoke", action="store_true", help="the tiny variants: 1 epoch, few examples")
    p.add_argument("--results", default=None, help="default: results/, or runs/smoke/ with --smoke")
    p.add_argument("--data-dir", default=None, help="TFDS data dir")
    p.add_argument("--manual-dir", default=None, help="directory with upstream dataset archives")
    p.add_argument("--overwrite", action="store_true", help="redo runs that already have results")
    p.add_argument("--progress", action="store_true", help="tqdm bar per epoch")
    p.add_argument("--list", action="store_true", help="list experiments and runs, then exit")
    args = p.parse_args(argv)
    names = args.experiments or (list(configs.NAMES) if args.list else [])
    if not names:
        p.error("name at least one experiment (or --list)")
    try:
        experiments = [configs.load(n) for n in names]
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except KeyError as err:
        p.exit(2, f"error: {err.args[0]}\n")
    except ValueError:
        p.exit(2, f"error: --seeds takes integers separated by commas, got {args.seeds!r}\n")
    if args.smoke:
        experiments = [e.smoke() for e in experiments]
    if args.list:
        for e in experiments:
            print(f"{e.name} (seeds {', '.join(map(str, e.seeds))}): {e.doc.splitlines()[0]}")
            for name in e.select(args.only):
                print(f"  {name}")
        return 0
    results = args.results or ("runs/smoke" if args.smoke else "results")
    failures = []
    for e in experiments:
        try:
            failures += run_experiment(
                e,
                results,
                only=args.only,
                seeds=seeds,
                data_dir=args.data_dir,
                manual_dir=args.manual_dir,
                progress=args.progress,
                overwrite=args.overwrite,
            )[1]
        except ConfigError as err:
            p.exit(2, f"error: {err}\n")
    if failures:
        print(f"{len(failures)} run(s) failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
