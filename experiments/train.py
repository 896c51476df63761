"""Train one network with SID or BP and write metrics.jsonl + summary.json.

    python experiments/train.py --method sid --model mlp --epochs 10 --out runs/sid_mlp
    python experiments/train.py --method bp --model simplecnn --epochs 2 --out runs/bp_cnn

Defaults are the authors' settings (SimpleCNN, L=10, alpha=0.5, Adam 1e-3,
batch 128). See README.md for timings on named hardware.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sidjax.data import DatasetUnavailableError  # noqa: E402
from sidjax.distributed import initialize  # noqa: E402
from sidjax.experiment import ConfigError, TrainConfig, run  # noqa: E402


class OneLineParser(argparse.ArgumentParser):
    """Bad command lines get one line, ``error: ...``, and exit status 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_alpha(text: str) -> float | tuple[float, ...]:
    """``"0.5"`` -> 0.5; ``"0.9,0.5,0.1"`` -> a per-unit schedule."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def parse_mesh(text: str) -> tuple[int, int]:
    """``"2,4"`` -> (2, 4): data and module axis sizes."""
    try:
        data, module = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DATA,MODULE (two integers), got {text!r}") from None
    return data, module


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default=d.method, help="sid | bp | bp_remat | dgl")
    p.add_argument(
        "--mode", default=d.mode, help="trunk (authors' shared extractor) | blockwise (no global backprop)"
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="fashion_mnist | mnist | cifar10 | cifar100 | folder:/path (train/ and test/, one sub-directory "
        "per class, e.g. Tiny-ImageNet)",
    )
    p.add_argument("--image-size", type=int, default=d.image_size, help="image folders are resized to this")
    p.add_argument("--model", default=d.model, help="mlp | simplecnn | vgg11 | resnet18 | vit_tiny")
    p.add_argument("--num-modules", type=int, default=d.num_modules, help="L belief modules (trunk mode)")
    p.add_argument("--num-blocks", type=int, default=d.num_blocks, help="K blocks (blockwise mode)")
    p.add_argument("--execution", default=d.execution, help="auto | vmap | fused | sequential")
    p.add_argument(
        "--pipeline",
        default=d.pipeline,
        help="blockwise, blocks placed on devices: off | synchronous (the exact step) | pipelined "
        "(one-step-stale inputs, no update locking)",
    )
    p.add_argument(
        "--devices", type=int, default=d.devices, help="stages for --pipeline (0: one per block if available)"
    )
    p.add_argument(
        "--mesh",
        type=parse_mesh,
        default=None,
        help="trunk: DATA,MODULE device mesh (batch split DATA ways, modules MODULE ways)",
    )
    p.add_argument("--coordinator-address", default=None, help="multi-process: host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="multi-process: how many")
    p.add_argument("--process-id", type=int, default=None, help="multi-process: this one's index")
    p.add_argument(
        "--alpha",
        type=parse_alpha,
        default=d.alpha,
        help="fidelity weight: one value, or one per unit comma-separated (e.g. 0.9,0.7,0.5,0.3)",
    )
    p.add_argument("--divergence", default=d.divergence, help="forward (authors' code) | reverse (paper)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument(
        "--label-noise", type=float, default=d.label_noise, help="symmetric noise rate on train labels"
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--optimizer", default=d.optimizer, help="adam | sgd (momentum)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="sgd momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay, or L2 for sgd")
    p.add_argument("--schedule", default=d.schedule, help="constant | cosine learning rate")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N test examples")
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=None, help="default: on for CIFAR"
    )
    p.add_argument("--conv-impl", default=d.conv_impl, help="xla | shifted")
    p.add_argument("--tiny", action="store_true", help="narrow architecture variants (smoke runs)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="epochs between orbax checkpoints in --out/checkpoints (0: none)",
    )
    p.add_argument(
        "--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    p.add_argument(
        "--manual-dir", default=None, help="directory with the upstream dataset archives (offline)"
    )
    p.add_argument("--out", default=None, help="write metrics.jsonl and summary.json here")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Before anything touches a device: JAX_COORDINATOR_ADDRESS etc. or the flags.
        initialize(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    config = config_from_args(args)
    try:
        config.validate()
        summary = run(
            config,
            args.out,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            resume=args.resume,
        )
    except (ConfigError, DatasetUnavailableError) as err:
        parser.exit(2, f"error: {err}\n")
    print(
        f"{config.method} {config.model} ({config.mode}) on {config.dataset}: final test accuracy "
        f"{summary['final_test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f} at epoch "
        f"{summary['best_epoch']}), {summary['time_per_epoch_s']:.1f} s/epoch, "
        f"{summary['examples_per_s']:.0f} examples/s"
    )
    return summary


if __name__ == "__main__":
    main()
