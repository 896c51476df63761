"""The main job: SID vs BP on the same network, data and budget, side by side.

    python experiments/compare.py                                   # default: ~3 min on 2 CPU cores
    python experiments/compare.py --model simplecnn --epochs 3      # paper network, ~25 min on 2 cores

Default: Fashion-MNIST (offline from Debian's files if needed), MLP extractor,
L=10 belief modules, alpha=0.5, Adam 1e-3, batch 128, 10 epochs, full data.
Each method's metrics.jsonl and summary.json go to ``--out/<method>/`` and a
table of final-epoch test accuracy (best over epochs beside it), time per
epoch and examples/s is printed and written to ``--out/comparison.md``.
Accepts every flag of ``experiments/train.py``.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from train import build_parser, config_from_args  # noqa: E402

from sidjax.data import DatasetUnavailableError, load_dataset  # noqa: E402
from sidjax.experiment import ConfigError, run  # noqa: E402


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown table of the runs' summaries, one row per method."""
    lines = [
        "| method | final test acc. | best (epoch) | s/epoch | examples/s |",
        "|---|---|---|---|---|",
    ]
    for method, s in summaries.items():
        lines.append(
            f"| {method.upper()} | {100 * s['final_test_accuracy']:.2f} % | "
            f"{100 * s['best_test_accuracy']:.2f} % ({s['best_epoch']}) | "
            f"{s['time_per_epoch_s']:.1f} | {s['examples_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = build_parser()
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(model="mlp", epochs=10, out="runs/compare")
    parser.add_argument("--methods", default="sid,bp", help="comma-separated, run in this order")
    args = parser.parse_args(argv)
    base = config_from_args(args)
    summaries = {}
    try:
        for method in args.methods.split(","):
            dataclasses.replace(base, method=method).validate()
        dataset = load_dataset(base.dataset, args.data_dir, args.manual_dir, image_size=base.image_size)
        for method in args.methods.split(","):
            config = dataclasses.replace(base, method=method)
            print(f"== {method.upper()}: {config}", flush=True)
            summaries[method] = run(
                config,
                os.path.join(args.out, method),
                dataset=dataset,
                progress=not args.no_progress,
                overwrite=args.overwrite,
                resume=args.resume,
            )
    except (ConfigError, DatasetUnavailableError) as err:
        parser.exit(2, f"error: {err}\n")
    table = comparison_table(summaries)
    n = summaries[next(iter(summaries))]
    header = (
        f"{base.dataset}, {base.model} ({base.mode}), {'L' if base.mode == 'trunk' else 'K'}={base.depth}, alpha={base.alpha}, "
        f"Adam {base.lr}, batch {base.batch_size}, {base.epochs} epochs, {n['num_train']} train / "
        f"{n['num_test']} test examples, seed {base.seed}; {n['host']}, {n['backend']}"
    )
    print("\n" + header + "\n\n" + table)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    return summaries


if __name__ == "__main__":
    main()
