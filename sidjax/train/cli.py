"""The command line, generated from ``TrainConfig``: ``sidjax train`` and ``sidjax compare``.

Every ``TrainConfig`` field is a flag (``--num-modules`` for ``num_modules``),
grouped as ``sidjax.train.config.GROUPS``, with its docstring line as help, its
default shown and its choices from the tables (``METHODS``,
``ARCHITECTURES``, ...). Bad input exits with status 2 and one line naming
the flag, before any data is loaded wherever it does not depend on the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import shlex
import sys
import types
import typing
from typing import Any

from sidjax import distributed
from sidjax._version import __version__
from sidjax.architectures import ARCHITECTURES
from sidjax.data import DATASETS, DatasetUnavailableError
from sidjax.errors import ConfigError
from sidjax.heads import BELIEF_INPUTS, HEADS
from sidjax.losses import DIVERGENCES
from sidjax.methods import EXECUTIONS, METHODS, MODES
from sidjax.ops import CONV_IMPLS
from sidjax.train.config import GRID_FIELDS, GROUPS, LR_SCHEDULES, OPTIMIZERS, TrainConfig, field_help
from sidjax.train.signals import check_stop, stop_signals
from sidjax.train.stats import interval_text, mean_std

CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES,
    "head": tuple(HEADS),
    "belief_input": BELIEF_INPUTS,
    "divergence": DIVERGENCES,
    "optimizer": OPTIMIZERS,
    "schedule": LR_SCHEDULES,
    "execution": EXECUTIONS,
    "conv_impl": CONV_IMPLS,
}
ENVIRONMENT = """environment variables read:
  SIDJAX_FASHION_MNIST_DIR   Fashion-MNIST's original files (default /usr/share/datasets/fashion-mnist)
  SIDJAX_CACHE_DIR           decoded image folders (default ~/.cache/sidjax)
  TFDS_DATA_DIR              TFDS's data directory, for datasets read through TFDS
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
                             a multi-process run (as --coordinator-address, --num-processes, --process-id)
  JAX_PLATFORMS, XLA_FLAGS   JAX's own: the backend, and e.g. simulated CPU devices"""


class OneLineParser(argparse.ArgumentParser):
    """Bad command lines get one line, ``error: ...``, and exit status 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def parse_numbers(kind: type) -> Any:
    """``"0.5"`` -> 0.5; ``"0.9,0.5,0.1"`` -> a tuple (per-unit alpha, several seeds, a grid's values)."""

    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__}s separated by commas, got {text!r}"
            ) from None
        return values[0] if len(values) == 1 else values

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _add_field(group, field: dataclasses.Field, help_text: str) -> None:
    names = [flag(field.name)] + (["--seeds"] if field.name == "seed" else [])
    kind = typing.get_type_hints(TrainConfig)[field.name]
    args = typing.get_args(kind)
    kw: dict[str, Any] = {
        "default": field.default,
        "dest": field.name,
        "help": help_text.rstrip(".") + " (default: %(default)s)",
    }
    if kind is bool or set(args) == {bool, type(None)}:
        kw["action"] = argparse.BooleanOptionalAction
    elif field.name in ("alpha", "seed", *GRID_FIELDS):
        number = int if field.name == "seed" else float
        kw["type"], kw["metavar"] = parse_numbers(number), "X[,X...]" if number is float else "N[,N...]"
    elif isinstance(kind, types.UnionType) and type(None) in args:
        kw["type"] = next(a for a in args if a is not type(None))
    else:
        kw["type"] = kind
    if kw.get("type") in (int, float):
        kw["metavar"] = "N" if kw["type"] is int else "X"
    if field.name in CHOICES:
        kw["choices"] = CHOICES[field.name]
    if field.name == "init_from":
        kw["metavar"] = "DIR"
    if field.name == "dataset":
        kw["help"] = f"{' | '.join(DATASETS)} | folder:/root (default: %(default)s)"
    if field.name == "method":  # every method with its one-line summary, from the table
        kw["metavar"] = "NAME|MODULE:METHOD"
        kw["help"] = (
            "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
            + "; or your own sidjax.Method as package.module:attribute (default: %(default)s)"
        )
    if field.name == "model":
        kw["type"], kw["metavar"] = model_name, "NAME|MODULE:FACTORY"
        kw["help"] = (f"{' | '.join(ARCHITECTURES)}, or your own network: package.module:factory, a function "
                      "key -> (network, variables) (default: %(default)s)")  # fmt: skip
    group.add_argument(*names, **kw)


def build_parser(prog: str | None = None, description: str = "") -> argparse.ArgumentParser:
    """The flags of every ``TrainConfig`` field, grouped, plus where to write and read."""
    parser = OneLineParser(prog=prog, description=description, epilog=ENVIRONMENT,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    helps, fields = field_help(), {f.name: f for f in dataclasses.fields(TrainConfig)}
    for group_name, names in GROUPS.items():
        group = parser.add_argument_group(group_name)
        for name in names:
            _add_field(group, fields[name], helps[name])
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", default=None, help="write config.json, metrics.jsonl, checkpoints and summary.json here"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (once this one is under way)"
    )
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last intact checkpoint"
    )
    run.add_argument("--data-dir", default=None, help="TFDS data directory (default: $TFDS_DATA_DIR)")
    run.add_argument("--manual-dir", default=None, help="a directory holding the dataset's original files")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    hosts = parser.add_argument_group("multi-process")
    hosts.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    hosts.add_argument("--num-processes", type=int, default=None, help="how many processes")
    hosts.add_argument("--process-id", type=int, default=None, help="this process's index")
    return parser


def model_name(text: str) -> str:
    """A built-in architecture's name, or ``package.module:factory`` (imported when the run starts)."""
    if text in ARCHITECTURES or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither one of {tuple(ARCHITECTURES)} nor package.module:factory"
    )


def import_model(spec: str) -> Any:
    """The object ``package.module:factory`` names (the current directory importable, as with ``python -m``)."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as err:  # a missing module or name, a syntax error, an error its code raises on import
        raise ConfigError(
            f"model {spec}: cannot import it ({type(err).__name__}: {err}); the module must be importable "
            "from the current directory or the environment",
            "model",
        ) from None
    return found


def own_model(config: TrainConfig) -> Any:
    """Your own network named by ``--model package.module:factory``, else None (a built-in architecture)."""
    return import_model(config.model) if ":" in config.model else None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed flags (``ConfigError`` as ``TrainConfig`` raises it)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


FIELDS_WITH_UNDERSCORES = tuple(f.name for f in dataclasses.fields(TrainConfig) if "_" in f.name)
# what messages say in Python terms (run's arguments), and the flags that say it on the command line
PYTHON_TERMS = {"resume=True": "--resume", "overwrite=True": "--overwrite", "out_dir": "--out"}


def error_line(err: Exception) -> str:
    """One line for the user: the setting it names (its first mention), and any field with an underscore, become flags."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    field = getattr(err, "field", None)
    if field and "_" not in field:
        message = re.sub(rf"(?<![-\w']){field}\b", flag(field), message, count=1)
    for name in FIELDS_WITH_UNDERSCORES:
        message = re.sub(rf"(?<![-\w]){name}\b", flag(name), message)
    for term, flag_name in PYTHON_TERMS.items():
        message = re.sub(rf"(?<![-\w]){re.escape(term)}", flag_name, message)
    return f"error: {message}"


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run."""
    prog = [sys.argv[0]] if sys.argv[0] else ["sidjax"]  # as it was typed
    if prog[0].endswith("__main__.py"):
        prog = ["python", "-m", "sidjax"]
    argv = [a for a in argv if a != "--overwrite"]
    return shlex.join([*prog, *argv, *([] if "--resume" in argv else ["--resume"])])


def guarded(parser: argparse.ArgumentParser, argv: list[str], work) -> Any:
    """Runs ``work()``; every expected failure becomes one line and an exit status.

    ``argv`` is the command's flags; the parser's prog (``sidjax train``) names the command.
    """
    from sidjax.train.rundir import RunWriteError
    from sidjax.train.runner import RunInterrupted, RunStopped, TrainingDiverged

    command = [parser.prog.split()[-1], *argv]
    try:
        return work()
    except (ConfigError, DatasetUnavailableError) as err:
        parser.exit(2, error_line(err) + "\n")
    except TrainingDiverged as err:
        parser.exit(1, error_line(err) + "\n")
    except RunWriteError as err:  # a full disk, a quota, a file-size limit
        then = f"continue with: {resume_command(command)}" if err.saved else "run the same command again"
        parser.exit(1, f"error: {err.what}; {err.ADVICE}, then {then}\n")
    except RunInterrupted as err:
        saved = "holds epochs" in str(err)
        hint = f"; continue with: {resume_command(command)}" if saved else "; run the same command again"
        parser.exit(130, f"{err}{hint}\n")
    except (
        RunStopped
    ) as err:  # a scheduler's or a cloud's stop signal: 128 + its number, as the shell reports it
        hint = f"; continue with: {resume_command(command)}" if err.saved else "; run the same command again"
        parser.exit(128 + err.signum, f"{err}{hint}\n")


def _start(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[2:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:  # before anything touches a device
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as err:
        parser.exit(2, error_line(err) + "\n")
    return args, argv


def _run(args: argparse.Namespace, config: TrainConfig, out: str | None, dataset=None) -> list[dict]:
    """The run's summaries, one per seed."""
    from sidjax.train.runner import run

    result = run(config, out, model=own_model(config), dataset=dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                 progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume)  # fmt: skip
    return [r.summary for r in (result if isinstance(result, list) else [result])]


def _describe(grid: dict, s: dict) -> str:
    """One run's line: what trained (as its summary records it), its grid point and seed, its numbers."""
    point = "".join(f"{name} {s[name]:g}, " for name in grid)
    return (
        f"{s['method']} {s['model']} ({s['mode']}) on {s['dataset']}, {point}seed {s['seed']}: final test accuracy "
        f"{s['final_test_accuracy']:.4f} (best {s['best_test_accuracy']:.4f} at epoch {s['best_epoch']}), "
        f"{s['time_per_epoch_s']:.1f} s/epoch, {s['examples_per_s']:.0f} examples/s"
    )


def train(argv: list[str] | None = None) -> list[dict]:
    """``sidjax train``: one configuration (several seeds together where ``--seed`` lists them)."""
    parser = build_parser("sidjax train", "Train one network with SID, DGL or BP and write its results.")
    args, argv = _start(parser, argv)
    config = guarded(parser, argv, lambda: config_from_args(args))
    summaries = guarded(parser, argv, lambda: _run(args, config, args.out))
    for summary in summaries:
        print(_describe(config.grid, summary))
    return summaries


def comparison_table(summaries: dict[str, list[dict]], chosen: dict[str, str]) -> str:
    """Markdown: one row per method over its seeds (mean ± std), and its paired difference from the first
    method with the 95 % interval, at the final epoch and over the late epochs."""
    first = next(iter(summaries))
    lines = ["| method | chosen on validation | seeds | final test % | late test % | best test % | "
             f"− {first}, final (points) | − {first}, late (points) | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, result in summaries.items():
        values = {
            k: [s[k] for s in result]
            for k in ("final_test_accuracy", "late_test_accuracy", "best_test_accuracy")
        }
        diffs = {
            k: _paired(summaries[first], result, k) for k in ("final_test_accuracy", "late_test_accuracy")
        }
        same = method == first
        lines.append(
            f"| {method} | {chosen.get(method, '—')} | {len(result)} | "
            f"{' | '.join(mean_std(v, 100) for v in values.values())} | "
            f"{'—' if same else interval_text(diffs['final_test_accuracy'])} | "
            f"{'—' if same else interval_text(diffs['late_test_accuracy'])} | {result[0]['time_per_epoch_s']:.1f} |"
        )
    return "\n".join(lines)


def _paired(reference: list[dict], other: list[dict], key: str) -> list[float]:
    """``other - reference`` in points, seed by seed."""
    ref = {s["seed"]: s[key] for s in reference}
    return [100 * (s[key] - ref[s["seed"]]) for s in other if s["seed"] in ref]


def compare(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """``sidjax compare``: several methods on the same network, data and budget, each at its own point of
    the grid where one is given (chosen on validation); mean ± std over seeds and paired differences."""
    parser = build_parser("sidjax compare", "SID vs BP (or any --methods) side by side on the same data.")
    parser.set_defaults(model="mlp", epochs=10, out="runs/compare")
    parser.add_argument("--methods", default="sid,bp", help="comma-separated names (or package.module:attribute "
                        "of your own rules), run in this order; the first is the one compared with (default: sid,bp)")  # fmt: skip
    parser.add_argument("--select-seeds", default="100", type=parse_numbers(int), help="with a grid (e.g. --lr "
                        "1e-4,1e-3 and --validation N): the seeds each method's grid trains on to choose its point; "
                        "--seeds then train at it (default: %(default)s)")  # fmt: skip
    args, argv = _start(parser, argv)
    chosen: dict[str, str] = {}

    def work():
        from sidjax.data import load_dataset
        from sidjax.train.plan import make_plan
        from sidjax.train.tuning import at_chosen_point

        base = config_from_args(args)
        if base.grid and isinstance(base.seed, int):
            base = dataclasses.replace(base, seed=(base.seed,))  # a grid's runs sit beside their seed<k>/
        configs = {m: dataclasses.replace(base, method=m) for m in args.methods.split(",")}
        for config in configs.values():
            make_plan(config, model=own_model(config))  # every method's settings, before the data is loaded
        dataset = load_dataset(base.dataset, args.data_dir, args.manual_dir, image_size=base.image_size)
        found = {}
        with stop_signals() as stop:
            for m, config in configs.items():
                check_stop(stop, f"before method {m}")
                selects = args.select_seeds if isinstance(args.select_seeds, tuple) else (args.select_seeds,)
                point = at_chosen_point(config, os.path.join(args.out, m), selects, model=own_model(config),
                                        dataset=dataset, progress=not args.no_progress, overwrite=args.overwrite,
                                        resume=args.resume)  # fmt: skip
                chosen[m] = ", ".join(f"{k} {getattr(point, k):g}" for k in config.grid) or "—"
                found[m] = _run(args, point, os.path.join(args.out, m), dataset)
        return found

    summaries = guarded(parser, argv, work)
    base, first = config_from_args(args), next(iter(summaries.values()))[0]
    lr = base.lr or "each method's default"
    header = (
        f"{base.dataset}, {base.model} ({base.mode}), {'L' if base.mode == 'trunk' else 'K'}={base.depth}, "
        f"alpha={base.alpha}, {base.optimizer} lr {lr} ({base.schedule}), batch {base.batch_size}, "
        f"{base.epochs} epochs, {first['num_train']} train / {first['num_test']} test examples; "
        f"{first['host']}, {first['backend']} ({first['device']}). Late: the mean of the last {base.late_epochs} "
        "epochs; paired differences per seed: mean ± std [95 % interval]"
    )
    table = comparison_table(summaries, chosen)
    print("\n" + header + "\n\n" + table)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    return summaries


COMMANDS = {"train": train, "compare": compare}


def main(argv: list[str] | None = None) -> None:
    """``sidjax {train,compare} [flags]``."""
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: sidjax {train,compare} [flags]   (sidjax train --help for the flags; sidjax --version)"
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return
    if argv and argv[0] in ("-V", "--version"):
        print(f"sidjax {__version__}")
        return
    if not argv or argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; {usage}" if argv else usage, file=sys.stderr)
        sys.exit(2)
    COMMANDS[argv[0]](argv[1:])
