"""Epoch throughput against the isolated step's, and each method's epoch time against BP's.

For each run (mode:model:method), in one process, on real Fashion-MNIST kept
on the device: the training epoch as ``sidjax.run`` executes it (compiled
chunks of steps, batches gathered on the device), the median of --epochs
epochs after one that compiles and warms up; and the same step alone, as
training runs it (its state donated, a batch already on the device): the
median over --rounds rounds of --round-steps steps each, dispatched back to
back with one host sync per round, after 3 warm-up steps. Their ratio says
how much of the device the epoch keeps busy (1.0: none of it waits for the
host). Each method's epoch time is also divided by BP's on the same network.
With --json, the results so far are written after every run, so a run cut
short loses only itself.

    python -m experiments.bench_epoch --runs trunk:simplecnn:sid,trunk:simplecnn:bp --limit-train 12800

Expected on a 2-core x86 CPU (jax 0.10.2): epoch/step ~1.0 (the host is
idle either way); ~6 minutes for the SimpleCNN trunk pair at 12 800 examples.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from experiments.benchlib import environment, write_json
from sidjax import TrainConfig, load_dataset, make_learner
from sidjax.train.members import Members, seed_keys
from sidjax.train.plan import make_plan
from sidjax.train.session import Session

DEFAULT_RUNS = ",".join(
    ["trunk:simplecnn:sid", "trunk:simplecnn:bp"]
    + [f"blockwise:{m}:{method}" for m in ("simplecnn", "resnet18") for method in ("sid", "dgl", "bp")]
)


def bench_run(spec: str, args, dataset) -> dict:
    mode, model, method = spec.split(":")
    config = TrainConfig(mode=mode, model=model, method=method, num_modules=10, num_blocks=args.num_blocks,
                         batch_size=args.batch_size, limit_train=args.limit_train, epochs=1 + args.epochs,
                         tiny=args.tiny)  # fmt: skip
    plan = make_plan(config, dataset)
    session = Session(plan, dataset, Members.of_seeds((0,)))
    epochs = [session.train(epoch).seconds for epoch in session.epochs()]  # the first compiles and autotunes
    step_s = time_step(plan, dataset, args)
    examples = plan.steps_per_epoch * config.batch_size
    epoch_s = float(np.median(epochs[1:]))
    return {
        "run": spec,
        "epoch_s": epoch_s,
        "epochs_timed": args.epochs,
        "first_epoch_s": epochs[0],
        "epoch_examples_per_s": examples / epoch_s,
        "step_s": step_s,
        "step_examples_per_s": config.batch_size / step_s,
        "epoch_over_step_throughput": (examples / epoch_s) / (config.batch_size / step_s),
        "steps_per_chunk": plan.steps_per_chunk,
    }


def time_step(plan, dataset, args) -> float:
    """The isolated step as training runs it: donated state, no host sync inside a round; median per step."""
    config = plan.config
    learner = make_learner(plan.network, config.optimizer_tx(1), config.method, config.loss(),
                           execution=config.execution, donate=True)  # fmt: skip
    state = learner.init(plan.build(seed_keys(0)[0])[1])
    idx = np.arange(config.batch_size)
    batch = jax.device_put((dataset.normalise(dataset.train_images[idx]), dataset.train_labels[idx]))
    key = seed_keys(0)[1]
    for _ in range(3):  # compile and warm up
        state, metrics = learner.step(state, batch, key)
    jax.block_until_ready((state, metrics))
    rounds = []
    for _ in range(args.rounds):
        begin = time.perf_counter()
        for _ in range(args.round_steps):
            state, metrics = learner.step(state, batch, key)
        jax.block_until_ready((state, metrics))
        rounds.append((time.perf_counter() - begin) / args.round_steps)
    return float(np.median(rounds))


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
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first (median)")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds of the isolated step (median)")
    parser.add_argument("--round-steps", type=int, default=5, help="steps per round, one host sync each")
    parser.add_argument("--tiny", action="store_true", help="the models' tiny variants (smoke runs)")
    parser.add_argument("--manual-dir", default=None, help="the Fashion-MNIST files (default: Debian's)")
    parser.add_argument("--json", default=None, help="write the results here, after every run")
    args = parser.parse_args(argv)
    dataset = load_dataset("fashion_mnist", manual_dir=args.manual_dir)
    env = environment()
    results = []
    for spec in args.runs.split(","):
        results.append(bench_run(spec, args, dataset))
        write_json(args.json, {**vars(args), **env, "results": results})
    bp_time = {r["run"].rsplit(":", 1)[0]: r["epoch_s"] for r in results if r["run"].endswith(":bp")}
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
