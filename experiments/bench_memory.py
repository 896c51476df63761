"""Memory and time of BP, BP+remat and blockwise SID (each execution mode) vs K.

For one model, batch size and input shape, and each K in --ks, this builds
the blockwise network and measures, in one process:

* compiled temp memory, XLA's ``memory_analysis().temp_size_in_bytes`` of the
  step (params, optimizer state and the batch are arguments, common to all
  methods, and not counted). For ``sequential`` SID, whose K jits run one
  after another, it is the largest over blocks of (that block's temp + its
  input and output activations);
* the median step time over --steps steps after compilation, methods timed in
  interleaved rounds so load drift hits all alike;
* on accelerators, the device's peak bytes in use. That is a high-water mark
  of the whole process, so for a per-method device peak run one method per
  process (``--variants bp``, ``--variants sid_sequential``, ...).

Prints a table with ratios to BP and writes JSON (--json).

    python experiments/bench_memory.py --model vgg11 --input-shape 32,32,3 --batch-size 64
    XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false python experiments/bench_memory.py

Expected on a 2-core x86 CPU (jax 0.10.2): ~10 minutes for VGG-11, batch 64,
K in {1, 2, 4, 8}, 5 steps each.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import optax  # noqa: E402
from benchlib import environment, measure, write_json  # noqa: E402

from sidjax import ARCHITECTURES, SIDLoss, make_blockwise_network, make_train_step  # noqa: E402

# (label, method, execution)
VARIANTS = [
    ("bp", "bp", "fused"),
    ("bp_remat", "bp_remat", "fused"),
    ("sid_fused", "sid", "fused"),
    ("sid_sequential", "sid", "sequential"),
    ("sid_vmap", "sid", "vmap"),
]


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def bench_k(args, k: int, shape, x, labels) -> dict:
    network, params = make_blockwise_network(
        args.model, shape, args.num_classes, k, jax.random.key(0), tiny=args.tiny
    )
    tx = optax.adam(1e-3)
    steps = {
        label: make_train_step(network, tx, method, SIDLoss(), execution=execution)
        for label, method, execution in VARIANTS
        if label in args.variants.split(",") and (execution != "vmap" or network.stacked)
    }  # blocks of different structure cannot be vmapped
    out = measure(steps, params, tx, (x, labels), jax.random.key(1), args.steps)
    bp = out.get("bp")
    for v in out.values():
        v["process_peak_device_bytes"] = peak_device_bytes()
        v["temp_vs_bp"] = v["temp_bytes"] / bp["temp_bytes"] if bp else float("nan")
        v["time_vs_bp"] = v["median_step_s"] / bp["median_step_s"] if bp else float("nan")
    return {"num_blocks": k, "stacked": network.stacked, "methods": out}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg11", choices=tuple(ARCHITECTURES))
    parser.add_argument("--input-shape", default="32,32,3", help="H,W,C")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ks", default="1,2,4,8", help="comma-separated K values")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (0: memory only)")
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS), help="subset to run")
    parser.add_argument("--tiny", action="store_true", help="the model's tiny variant (smoke tests)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    x = jax.random.normal(jax.random.key(2), (args.batch_size, *shape))
    labels = jax.random.randint(jax.random.key(3), (args.batch_size,), 0, args.num_classes)
    header = {"model": args.model, "input_shape": shape, "batch_size": args.batch_size, "steps": args.steps}
    header.update(environment())
    print(
        f"{args.model}, input {shape}, batch {args.batch_size}, {header['backend']} ({header['device']}), "
        f"jax {jax.__version__}, XLA_FLAGS={header['xla_flags']}, median of {args.steps} steps"
    )
    print(f"{'K':>3} {'method':<15}{'temp MB':>10}{'vs BP':>8}{'step ms':>10}{'vs BP':>8}")
    results = []
    for k_text in args.ks.split(","):
        try:
            result = bench_k(args, int(k_text), shape, x, labels)
        except ValueError as err:  # a cut the architecture does not allow
            print(f"{k_text:>3} skipped: {err}")
            continue
        results.append(result)
        for label, m in result["methods"].items():
            print(
                f"{result['num_blocks']:>3} {label:<15}{m['temp_bytes'] / 2**20:>10.1f}{m['temp_vs_bp']:>8.2f}"
                f"{1e3 * m['median_step_s']:>10.1f}{m['time_vs_bp']:>8.2f}",
                flush=True,
            )
    report = {**header, "results": results}
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
