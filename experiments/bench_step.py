"""Step-time benchmark: SID (two-phase) vs BP on the same network and batch.

Both steps are compiled first, then timed in interleaved rounds (one SID step,
one BP step, ...) so that machine-load drift hits both alike; the medians,
their ratio, examples/s and XLA's compiled temp memory are printed and
optionally written as JSON.

    python experiments/bench_step.py                      # SimpleCNN, L=10, batch 128
    python experiments/bench_step.py --model mlp --steps 50 --json out.json

Expected on a 2-core x86 CPU (jax 0.10.2): ~0.5 s per step, SID/BP ~1.0-1.1,
SID ~250 examples/s; takes ~1 minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from sidjax import ARCHITECTURES, SIDLoss, init_train_state, make_network, make_train_step  # noqa: E402
from sidjax.ops import CONV_IMPLS  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simplecnn", choices=tuple(ARCHITECTURES))
    parser.add_argument("--num-modules", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-shape", default="28,28,1", help="H,W,C (default Fashion-MNIST)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (>= 20)")
    parser.add_argument("--conv-impl", default="xla", choices=CONV_IMPLS)
    parser.add_argument("--methods", default="sid,bp")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.num_modules < 1:
        parser.error("--steps, --batch-size and --num-modules must be >= 1")

    shape = tuple(int(s) for s in args.input_shape.split(","))
    network, params = make_network(
        args.model, shape, args.num_classes, args.num_modules, jax.random.key(0), conv_impl=args.conv_impl
    )
    tx = optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(1), (args.batch_size, *shape))
    labels = jax.random.randint(jax.random.key(2), (args.batch_size,), 0, args.num_classes)
    key = jax.random.key(3)
    methods = args.methods.split(",")

    states, steps, temp_bytes = {}, {}, {}
    for method in methods:
        state = init_train_state(jax.tree.map(jnp.copy, params), tx)
        step = make_train_step(network, tx, method, SIDLoss(), donate=True)
        compiled = step.lower(state, (x, labels), key).compile()
        temp_bytes[method] = compiled.memory_analysis().temp_size_in_bytes
        for _ in range(2):  # compile and warm up
            state, _ = step(state, (x, labels), key)
        jax.block_until_ready(state)
        states[method], steps[method] = state, step

    times = {m: [] for m in methods}
    for _ in range(args.steps):
        for method in methods:
            start = time.perf_counter()
            states[method], metrics = steps[method](states[method], (x, labels), key)
            jax.block_until_ready(states[method])
            times[method].append(time.perf_counter() - start)

    result = {
        "model": args.model,
        "num_modules": args.num_modules,
        "batch_size": args.batch_size,
        "input_shape": shape,
        "conv_impl": args.conv_impl,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "steps": args.steps,
        "median_step_s": {m: float(np.median(t)) for m, t in times.items()},
        "examples_per_s": {m: args.batch_size / float(np.median(t)) for m, t in times.items()},
        "temp_bytes": temp_bytes,
    }
    print(
        f"{args.model}, L={args.num_modules}, batch {args.batch_size}, input {shape}, "
        f"conv_impl={result['conv_impl']}, {result['backend']} ({result['device']}), "
        f"median of {args.steps} interleaved steps"
    )
    print(f"{'method':<10}{'step ms':>10}{'examples/s':>12}{'temp MB':>10}")
    for m in methods:
        print(
            f"{m:<10}{1e3 * result['median_step_s'][m]:>10.1f}"
            f"{result['examples_per_s'][m]:>12.1f}{temp_bytes[m] / 2**20:>10.1f}"
        )
    if "sid" in methods and "bp" in methods:
        ratio = result["median_step_s"]["sid"] / result["median_step_s"]["bp"]
        result["sid_over_bp_time"] = ratio
        print(f"SID/BP step time: {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
