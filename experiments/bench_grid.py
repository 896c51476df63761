"""A grid of learning rates and seeds in one program against the same runs one by one.

For G learning rates times S seeds (``TrainConfig(lr=..., seed=...)``), in
one process on real Fashion-MNIST kept on the device: the grid as
``sidjax.run`` trains it (one compiled program, its G*S members vmapped, or
unrolled for convolutions on CPU), then each of the G*S runs alone, each in
its own program. Every run first trains one epoch that compiles and warms
up; then --epochs timed epochs (median), the grid and the separate runs in
turn, so that drift in the machine's load hits both. Reported: the grid's
epoch time against the separate runs' summed epoch times (the goal is at
most 1.1 on CPU), and how many programs the grid compiled while its timed
epochs trained (the goal is none: one chunk program, compiled once before).

    python -m experiments.bench_grid --model mlp --lrs 1e-4,3e-4,1e-3,3e-3 --seeds 0,1 --json results/bench_grid_cpu.json

Expected on a 2-core x86 CPU (jax 0.10.2): about 2 minutes; the grid at or
below the separate runs' summed time (vmapped dense members share each
batch's gather and normalisation, and one program dispatch).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

import jax
import numpy as np

from experiments.benchlib import environment, write_json
from sidjax import TrainConfig, load_dataset
from sidjax.train.members import Members
from sidjax.train.plan import make_plan
from sidjax.train.session import Session


@contextlib.contextmanager
def counting_compiles(counter: list):
    """Counts XLA compilations inside the block (JAX's monitoring events)."""

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def session(config: TrainConfig, dataset) -> Session:
    """A session with nothing written; its first epoch compiled, trained and warm."""
    s = Session(make_plan(config, dataset), dataset, Members.of(config))
    s.compile()
    s.train(1)
    return s


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_grid", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--mode", default="trunk")
    parser.add_argument("--method", default="sid")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--limit-train", type=int, default=12800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first (median)")
    parser.add_argument("--tiny", action="store_true", help="the models' tiny variants (smoke runs)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    lrs, seeds = tuple(float(v) for v in args.lrs.split(",")), tuple(int(s) for s in args.seeds.split(","))
    dataset = load_dataset("fashion_mnist")
    base = TrainConfig(model=args.model, mode=args.mode, method=args.method, limit_train=args.limit_train,
                       batch_size=args.batch_size, epochs=1 + args.epochs, tiny=args.tiny, lr=lrs, seed=seeds)  # fmt: skip
    grid = session(base, dataset)
    alone = [session(dataclasses.replace(base, lr=lr, seed=s), dataset) for lr in lrs for s in seeds]
    grid_times, alone_times, compiles = [], [[] for _ in alone], []
    for epoch in range(2, 2 + args.epochs):
        with counting_compiles(compiles):
            grid_times.append(grid.train(epoch).seconds)
        for times, s in zip(alone_times, alone, strict=True):
            times.append(s.train(epoch).seconds)
    grid_s = float(np.median(grid_times))
    separate_s = float(sum(np.median(t) for t in alone_times))
    report = {
        **vars(args), **environment(),
        "members": len(lrs) * len(seeds),
        "grid_epoch_s": grid_s,
        "separate_epochs_summed_s": separate_s,
        "grid_over_separate": grid_s / separate_s,
        "grid_compile_s": grid.compile_time,
        "compiles_during_timed_grid_epochs": len(compiles),
        "cpu_convolutions_unrolled": grid.plan.cpu_convolutions,
    }  # fmt: skip
    print(f"{args.model} ({args.mode}, {args.method}), {len(lrs)} learning rates x {len(seeds)} seeds, "
          f"{args.limit_train} examples, {report['backend']} ({report['device']}): grid epoch {grid_s:.2f} s, "
          f"separate runs {separate_s:.2f} s summed, ratio {report['grid_over_separate']:.3f}; "
          f"{len(compiles)} compiles while the grid trained")  # fmt: skip
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
