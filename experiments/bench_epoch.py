"""Epoch throughput against the isolated step's, and each method's epoch time against BP's.

For each run (mode:model:method), in one process, on real Fashion-MNIST kept
on the device: the training epoch as ``sidjax.run`` executes it (compiled
chunks of steps, batches gathered on the device), timed over its second
epoch; and the same jitted step alone on a batch already on the device,
median of --steps steps after warm-up. Their ratio says how much of the
device the epoch keeps busy (1.0: none of it waits for the host). Each
method's epoch time is also divided by BP's on the same network.

    python -m experiments.bench_epoch --runs trunk:simplecnn:sid,trunk:simplecnn:bp --limit-train 12800

Expected on a 2-core x86 CPU (jax 0.10.2): epoch/step ~1.0 (the host is
idle either way); ~3 minutes for the SimpleCNN trunk pair at 12 800 examples.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchlib import environment, write_json
from sidjax.config import TrainConfig
from sidjax.data import load_dataset
from sidjax.epoch import fits_on_device, prepare_data, train_epoch
from sidjax.steps import make_train_step
from sidjax.trainer import build_network, make_plan, make_trainer, seed_keys

DEFAULT_RUNS = ",".join(
    ["trunk:simplecnn:sid", "trunk:simplecnn:bp"]
    + [f"blockwise:{m}:{method}" for m in ("simplecnn", "resnet18") for method in ("sid", "dgl", "bp")]
)


def bench_run(spec: str, args, dataset) -> dict:
    mode, model, method = spec.split(":")
    config = TrainConfig(mode=mode, model=model, method=method, num_modules=10, num_blocks=args.num_blocks,
                         batch_size=args.batch_size, limit_train=args.limit_train, epochs=2)  # fmt: skip
    plan = make_plan(config, dataset)
    trainer = make_trainer(plan, dataset, (0,))
    data = prepare_data(plan, dataset, (0,), trainer, fits_on_device(plan, dataset))
    params = build_network(config, plan.info.input_shape, plan.info.num_classes, seed_keys(0)[0])[1]
    state = trainer.init([jax.tree.map(jnp.copy, params)])  # the chunks donate their state
    epochs = []
    for epoch in (1, 2):  # the first epoch compiles and autotunes
        state, _, seconds = train_epoch(plan, trainer, state, data, (0,), epoch)
        epochs.append(seconds)
    step = make_train_step(
        plan.network, config.optimizer_tx(1), method, config.loss(), execution=config.execution
    )
    state = trainer.init([jax.tree.map(jnp.copy, params)])
    idx = np.arange(config.batch_size)
    batch = (
        jax.device_put(dataset.normalise(dataset.train_images[idx])),
        jax.device_put(dataset.train_labels[idx]),
    )
    key = seed_keys(0)[1]
    times = []
    for _ in range(args.steps + 3):
        begin = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - begin)
    step_s = float(np.median(times[3:]))
    examples = plan.steps_per_epoch * config.batch_size
    return {
        "run": spec,
        "epoch_s": epochs[1],
        "first_epoch_s": epochs[0],
        "epoch_examples_per_s": examples / epochs[1],
        "step_s": step_s,
        "step_examples_per_s": config.batch_size / step_s,
        "epoch_over_step_throughput": (examples / epochs[1]) / (config.batch_size / step_s),
        "steps_per_chunk": plan.steps_per_chunk,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_epoch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated mode:model:method")
    parser.add_argument("--num-blocks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--limit-train", type=int, default=None, help="examples per epoch (default: all 60 000)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed isolated steps")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    dataset = load_dataset("fashion_mnist")
    results = [bench_run(spec, args, dataset) for spec in args.runs.split(",")]
    bp_time = {r["run"].rsplit(":", 1)[0]: r["epoch_s"] for r in results if r["run"].endswith(":bp")}
    env = environment()
    print(
        f"Fashion-MNIST, batch {args.batch_size}, {env['backend']} ({env['device']}), jax {env['jax_version']}"
    )
    print("| run | epoch s | epoch ex/s | step ms | step ex/s | epoch/step throughput | epoch time / BP's |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        net = r["run"].rsplit(":", 1)[0]
        r["epoch_time_vs_bp"] = r["epoch_s"] / bp_time[net] if net in bp_time else float("nan")
        print(f"| {r['run']} | {r['epoch_s']:.2f} | {r['epoch_examples_per_s']:.0f} | {1e3 * r['step_s']:.2f} | "
              f"{r['step_examples_per_s']:.0f} | {r['epoch_over_step_throughput']:.2f} | {r['epoch_time_vs_bp']:.2f} |")  # fmt: skip
    report = {**vars(args), **env, "results": results}
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
