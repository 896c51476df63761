"""Parallel throughput: BP (data-parallel) vs synchronous vs pipelined blockwise SID on 1..8 devices.

One blockwise network (default ViT-Tiny cut into K = 8 blocks, 32x32x3,
batch 128) is trained on D devices for each D, one process per D:
- ``bp``: end-to-end backprop, batch split D ways (a (D, 1) mesh, ``sidjax.parallel``);
- ``sid_sync``: the exact blockwise step, blocks in D stages (``sidjax.stages``);
- ``sid_pipelined``: one-step-stale inputs, all stages update at once;
- ``sid_pipelined_mesh`` (stacked blocks only, e.g. ViT with K dividing 12):
  the pipelined step as one program, blocks split over a (1, D) mesh.
Each process compiles and warms up every method, then times interleaved
steps; examples/s come from the median step. The table gives each method's
scaling ratio (examples/s on D devices / on 1). Goal on accelerators:
pipelined SID >= 0.8 * K x one device at D = K.

    python -m experiments.bench_parallel --tiny --num-blocks 4 --devices 1,2,4   # CPU, simulated: ~1 min
    python -m experiments.bench_parallel --json out.json                         # GPU/TPU: real devices

On a CPU the D devices are simulated (``--xla_force_host_platform_device_count``)
and share the same cores: this proves the code runs, not that it scales.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax

from sidjax.train.cli import OneLineParser

METHODS = ("bp", "sid_sync", "sid_pipelined", "sid_pipelined_mesh")


def worker(args) -> dict:
    """Runs in a process that sees >= ``args.worker`` devices; returns examples/s per method."""
    import numpy as np
    import optax

    from experiments.benchlib import environment
    from sidjax import SIDLoss, make_blockwise_network, make_learner

    d = args.worker
    devices = jax.devices()[:d]
    shape = tuple(int(v) for v in args.input_shape.split(","))
    network, variables = make_blockwise_network(
        args.model, shape, 10, args.num_blocks, jax.random.key(0), tiny=args.tiny
    )
    tx = optax.adam(1e-3)
    key = jax.random.key(1)
    x = np.asarray(jax.random.normal(key, (args.batch_size, *shape)))
    y = np.asarray(jax.random.randint(key, (args.batch_size,), 0, 10))

    learners = {"bp": make_learner(network, tx, "bp", placement=f"mesh:{d},1", devices=devices,
                                   batch_size=args.batch_size)}  # fmt: skip
    for label, pipelined in (("sid_sync", False), ("sid_pipelined", True)):
        learners[label] = make_learner(network, tx, "sid", SIDLoss(0.5), pipelined=pipelined, placement="stages",
                                       devices=devices, batch_size=args.batch_size)  # fmt: skip
    if network.stacked and args.num_blocks % d == 0:
        learners["sid_pipelined_mesh"] = make_learner(network, tx, "sid", SIDLoss(0.5), execution="vmap",
                                                      pipelined=True, placement=f"mesh:1,{d}", devices=devices,
                                                      batch_size=args.batch_size)  # fmt: skip
    runs = {label: (learner.step, learner.init(variables)) for label, learner in learners.items()}
    states = {}
    for label, (step, state) in runs.items():
        for _ in range(2):
            state, _ = step(state, (x, y), key)
        states[label] = jax.block_until_ready(state)
    times = {label: [] for label in runs}
    for _ in range(args.steps):
        for label, (step, _) in runs.items():
            start = time.perf_counter()
            states[label], metrics = step(states[label], (x, y), key)
            jax.block_until_ready((states[label], metrics))
            times[label].append(time.perf_counter() - start)
    return {
        "devices": d,
        "median_step_s": {m: float(np.median(t)) for m, t in times.items()},
        "examples_per_s": {m: args.batch_size / float(np.median(t)) for m, t in times.items()},
        **environment(),
    }


def table(results: list[dict], k: int) -> str:
    methods = [m for m in METHODS if all(m in r["examples_per_s"] for r in results)]
    base = {m: results[0]["examples_per_s"][m] for m in methods} if results[0]["devices"] == 1 else None
    lines = [
        "| devices | "
        + " | ".join(f"{m} ex/s" for m in methods)
        + " | "
        + " | ".join(f"{m} ×1-dev" for m in methods)
        + " |",
        "|---" * (1 + 2 * len(methods)) + "|",
    ]
    for r in results:
        ratios = [f"{r['examples_per_s'][m] / base[m]:.2f}" if base else "—" for m in methods]
        lines.append(
            f"| {r['devices']} | " + " | ".join(f"{r['examples_per_s'][m]:.0f}" for m in methods) + " | "
            + " | ".join(ratios) + " |"
        )  # fmt: skip
    lines.append(f"\nGoal on accelerators: sid_pipelined ×1-dev >= {0.8 * k:.1f} at {k} devices (0.8·K).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4,8", help="device counts, one process each")
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--num-blocks", type=int, default=8)
    p.add_argument("--input-shape", default="32,32,3")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per method")
    p.add_argument("--tiny", action="store_true", help="narrow architecture (CPU smoke)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return {}
    try:
        counts = [int(v) for v in args.devices.split(",")]
    except ValueError:
        p.error(f"--devices takes integers separated by commas, got {args.devices!r}")
    bad = [c for c in counts if c < 1 or c > args.num_blocks or args.batch_size % c]
    if bad:
        p.error(
            f"--devices {bad}: each count must lie in [1, --num-blocks ({args.num_blocks})] and divide --batch-size"
        )
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results, skipped = [], []
    for count in counts:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if jax.default_backend() == "cpu":  # simulate the devices; they share the same cores
            env["XLA_FLAGS"] = (
                f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
            )
        elif count > jax.device_count():
            skipped.append(count)
            continue
        command = [sys.executable, "-m", "experiments.bench_parallel", *forwarded, "--worker", str(count)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            p.exit(1, f"error: the {count}-device process failed:\n{proc.stderr[-3000:]}\n")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"{count} device(s): " + ", ".join(f"{m} {v:.0f} ex/s" for m, v in results[-1]["examples_per_s"].items()), flush=True)  # fmt: skip
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
        "results": results,
        "skipped_device_counts": skipped,
        "note": "simulated CPU devices share the host's cores: ratios show overhead, not speed-up"
        if jax.default_backend() == "cpu" else "real devices",
    }  # fmt: skip
    print("\n" + table(results, args.num_blocks) + "\n" + report["note"])
    if skipped:
        print(f"skipped (not enough devices): {skipped}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
