"""Run experiment configs over their seeds; results go to results/<experiment>/<run>/seed<k>/.

    python -m experiments.run label_noise                     # every run of the config, seeds together
    python -m experiments.run depth --only 'trunk/*'          # the runs matching a pattern
    python -m experiments.run label_noise depth alpha --smoke # tiny variants (what CI runs)
    python -m experiments.run --list                          # the experiments and their runs

The seeds of a run train together in one program (``TrainConfig.seed`` as a
tuple) and each writes the files a separate run of that seed would write. A
run whose config is a grid (``lr`` several values) is tuned: the grid trains
on the experiment's selection seeds in ``<run>/grid/``, its point is chosen
on the validation split (``<run>/grid/selection.json``), then the seeds
train at that point. A run that follows a tuned one trains at its point.
Running again continues: finished seeds are skipped, interrupted ones resume
from their last intact checkpoint to the same numbers as an uninterrupted
run. A run that fails (e.g. a dataset that cannot be had) is reported in one
line and the others go on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from experiments import configs
from sidjax.data import Dataset, DatasetUnavailableError, load_dataset
from sidjax.errors import ConfigError
from sidjax.train.cli import OneLineParser, error_line, own_model
from sidjax.train.plan import make_plan
from sidjax.train.runner import RunStopped, TrainingDiverged, run
from sidjax.train.selection import read_selection
from sidjax.train.signals import StopRequest, check_stop, stop_signals
from sidjax.train.tuning import at_chosen_point


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
    stop: StopRequest | None = None,
) -> tuple[dict[tuple[str, int], dict], list[str]]:
    """Runs the selected runs, each over its seeds together; returns ({(run, seed): summary}, [failures]).

    Every selected config is checked (``make_plan``) before any data is
    loaded. ``datasets`` caches loaded datasets by name. ``stop``: a stop
    signal recorded between runs ends the sweep there (``RunStopped``).
    """
    selected = experiment.select(only)
    if not selected:
        raise ConfigError(f"--only {only!r} matches none of {experiment.name}'s runs (see --list)")
    seeds = tuple(seeds if seeds is not None else experiment.seeds)
    selected = {name: _resolved(config, results_dir, experiment) for name, config in selected.items()}
    for name, config in selected.items():
        if config.init_from is not None and not os.path.exists(config.init_from):
            continue  # starts from a run of this selection: checked once that run has trained
        try:
            make_plan(
                dataclasses.replace(config, seed=seeds if len(seeds) > 1 else seeds[0]),
                model=own_model(config),
            )
        except ConfigError as err:
            raise ConfigError(f"{experiment.name}/{name}: {error_line(err)[len('error: ') :]}") from err
        except DatasetUnavailableError:
            pass  # reported per run below, with the others going on
    datasets = {} if datasets is None else datasets
    summaries, failures = {}, []
    for name, config in sorted(selected.items(), key=lambda item: item[0] in experiment.follows):
        label = f"{experiment.name}/{name}"
        out = os.path.join(results_dir, experiment.name, name)
        check_stop(stop, f"before {label}")
        try:
            if config.dataset not in datasets:
                datasets[config.dataset] = load_dataset(
                    config.dataset, data_dir, manual_dir, image_size=config.image_size
                )
            if name in experiment.follows:
                config = config.for_point(_chosen(results_dir, experiment, experiment.follows[name]))
            elif config.grid:
                print(
                    f"== {label}: the grid on seeds {', '.join(map(str, experiment.select_seeds))}",
                    flush=True,
                )
                config = at_chosen_point(dataclasses.replace(config, seed=seeds), out, experiment.select_seeds,
                                         model=own_model(config), dataset=datasets[config.dataset], progress=progress,
                                         overwrite=overwrite, resume=not overwrite)  # fmt: skip
            print(f"== {label} (seeds {', '.join(map(str, seeds))})", flush=True)
            together = dataclasses.replace(config, seed=seeds)
            if len(seeds) == 1:  # the same directory layout: out/seed<k>
                together, out = (
                    dataclasses.replace(config, seed=seeds[0]),
                    os.path.join(out, f"seed{seeds[0]}"),
                )
            result = run(together, out, model=own_model(config), dataset=datasets[config.dataset], progress=progress,
                         overwrite=overwrite, resume=not overwrite)  # fmt: skip
            for seed, r in zip(seeds, result if isinstance(result, list) else [result], strict=True):
                s = summaries[(name, seed)] = r.summary
                print(f"   seed {seed}: final test accuracy {s['final_test_accuracy']:.4f} "
                      f"(best {s['best_test_accuracy']:.4f}), {s['time_per_epoch_s']:.1f} s/epoch", flush=True)  # fmt: skip
        except (ConfigError, DatasetUnavailableError, TrainingDiverged) as err:
            failures.append(f"{label}: {error_line(err)[len('error: ') :]}")
            print(f"   failed: {err}", flush=True)
    return summaries, failures


def _chosen(results_dir: str, experiment: configs.Experiment, tuned: str) -> tuple:
    """The point chosen on validation for the tuned run ``tuned`` (``ConfigError`` where there is none)."""
    record = read_selection(os.path.join(results_dir, experiment.name, tuned, "grid"))
    if record["chosen"] is None:
        raise ConfigError(f"{experiment.name}/{tuned}: every point of its grid diverged; nothing to train at")
    return tuple(record["chosen"]["point"].items())


def _resolved(config, results_dir: str, experiment: configs.Experiment):
    """``config`` with a relative ``init_from`` (another run of the experiment) under ``results_dir``."""
    if config.init_from is None or os.path.isabs(config.init_from):
        return config
    return dataclasses.replace(config, init_from=os.path.join(results_dir, experiment.name, config.init_from))


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m experiments.run", description=__doc__.splitlines()[0])
    p.add_argument("experiments", nargs="*", help=f"one or more of: {', '.join(configs.NAMES)}")
    p.add_argument("--only", default="*", help="fnmatch pattern of run names (default: all)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    p.add_argument("--smoke", action="store_true", help="the tiny variants: 1 epoch, few examples")
    p.add_argument("--results", default=None, help="default: results/, or runs/smoke/ with --smoke")
    p.add_argument("--data-dir", default=None, help="TFDS data dir")
    p.add_argument("--manual-dir", default=None, help="a directory holding the dataset's original files")
    p.add_argument("--overwrite", action="store_true", help="redo runs that already have results")
    p.add_argument("--progress", action="store_true", help="a progress bar per epoch")
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
    with stop_signals() as stop:  # a stop between runs ends the sweep there, as one inside a run does
        for e in experiments:
            try:
                failures += run_experiment(e, results, only=args.only, seeds=seeds, data_dir=args.data_dir,
                                           manual_dir=args.manual_dir, progress=args.progress,
                                           overwrite=args.overwrite, stop=stop)[1]  # fmt: skip
            except ConfigError as err:
                p.exit(2, f"error: {err}\n")
            except (
                RunStopped
            ) as err:  # the run in progress checkpointed where it was: the same command continues
                p.exit(128 + err.signum, f"{err}; run the same command again to continue\n")
    if failures:
        print(f"{len(failures)} run(s) failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
