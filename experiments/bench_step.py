"""Step-time benchmark: SID (two-phase) vs BP on the same network and batch.

Both steps are compiled first, then timed in interleaved rounds (one SID step,
one BP step, ...) so that machine-load drift hits both alike; the medians,
their ratio, examples/s and XLA's compiled memory (beyond the arguments) are printed and
optionally written as JSON.

    python -m experiments.bench_step                      # SimpleCNN, L=10, batch 128
    python -m experiments.bench_step --model mlp --steps 50 --json out.json
    python -m experiments.bench_step --mode blockwise --tiny --num-modules 4   # blockwise SimpleCNN, K=4

Expected on a 2-core x86 CPU (jax 0.10.2): ~0.5 s per step, SID/BP ~1.0,
SID ~250 examples/s; takes ~1 minute.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from experiments.benchlib import Bench, environment, measure, write_json
from sidjax import ARCHITECTURES, SIDLoss, make_blockwise_network, make_learner, make_network
from sidjax.ops import CONV_IMPLS


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="simplecnn", choices=tuple(ARCHITECTURES))
    parser.add_argument("--mode", default="trunk", choices=("trunk", "blockwise"))
    parser.add_argument("--num-modules", type=int, default=10, help="L (trunk) or K (blockwise)")
    parser.add_argument("--tiny", action="store_true", help="the architecture's small widths")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-shape", default="28,28,1", help="H,W,C (default Fashion-MNIST)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--conv-impl", default="xla", choices=CONV_IMPLS)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.num_modules < 1:
        parser.error("--steps, --batch-size and --num-modules must be >= 1")

    shape = tuple(int(s) for s in args.input_shape.split(","))
    build = make_network if args.mode == "trunk" else make_blockwise_network
    network, variables = build(
        args.model,
        shape,
        args.num_classes,
        args.num_modules,
        jax.random.key(0),
        conv_impl=args.conv_impl,
        tiny=args.tiny,
    )
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(1), (args.batch_size, *shape))
    labels = jax.random.randint(jax.random.key(2), (args.batch_size,), 0, args.num_classes)
    benches = {}
    for method in ("sid", "bp"):
        learner = make_learner(network, tx, method, SIDLoss(), donate=True)
        benches[method] = Bench(learner, learner.init(jax.tree.map(jnp.copy, variables)))
    results = measure(benches, (x, labels), jax.random.key(3), args.steps)
    for r in results.values():
        r["examples_per_s"] = args.batch_size / r["median_step_s"]
    ratio = results["sid"]["median_step_s"] / results["bp"]["median_step_s"]
    report = {
        "model": args.model,
        "mode": args.mode,
        "num_modules": args.num_modules,
        "batch_size": args.batch_size,
        "input_shape": shape,
        "conv_impl": args.conv_impl,
        "steps": args.steps,
        **environment(),
        "methods": results,
        "sid_over_bp_time": ratio,
    }
    print(
        f"{args.model}, L={args.num_modules}, batch {args.batch_size}, input {shape}, conv_impl={args.conv_impl}, "
        f"{report['backend']} ({report['device']}), median of {args.steps} interleaved steps"
    )
    print(f"{'method':<10}{'step ms':>10}{'examples/s':>12}{'mem MiB':>10}")
    for m, r in results.items():
        print(
            f"{m:<10}{1e3 * r['median_step_s']:>10.1f}{r['examples_per_s']:>12.1f}{r['memory_bytes'] / 2**20:>10.1f}"
        )
    print(f"SID/BP step time: {ratio:.3f}")
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
