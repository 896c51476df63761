"""Step time and compiled memory of every method, side by side: the comparison's networks, and every local
rule in every execution it runs beside backprop.

For each network of ``experiments/configs/comparison.py`` the methods' steps
(one seed, the run's batch size) are compiled, then timed in interleaved
rounds (one round per batch size), so that machine-load drift hits all alike; the medians, their ratio
to SID's and XLA's compiled memory beyond the arguments are printed and
written as JSON (``experiments.report`` puts them in RESULTS.md).

    python -m experiments.bench_methods --json results/comparison/bench_methods.json
    python -m experiments.bench_methods --only mlp4_blockwise --steps 5
    python -m experiments.bench_methods --executions --json results/bench_executions_cpu.json

Expected on a 2-core x86 CPU: a few minutes; HSIC's batch is 512 (its
authors'), so compare its examples/s.

``--executions``: on SimpleCNN cut into K = 4 units (Fashion-MNIST's
28x28x1, batch 128) and ViT-Tiny cut into K = 8 (32x32x3, batch 64), backprop
and backprop with remat, and SID, DGL, Forward-Forward and the HSIC
bottleneck in each execution they run (``fused``, ``sequential``, ``vmap``
where the units stack), one batch size for all; memory and time as ratios to
BP's. The goal: every local rule's sequential step on ViT-Tiny at K = 8 within
0.3x BP's memory at 1.2x its time. About 20 minutes on that CPU.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from experiments.benchlib import Bench, environment, measure, write_json
from experiments.configs import comparison, smoke_config
from sidjax import METHODS, make_blockwise_network, make_learner
from sidjax.train.cli import own_model
from sidjax.train.plan import make_plan


def networks(smoke: bool = False) -> dict[str, dict[str, object]]:
    """network -> method -> its config, as the comparison runs them (``smoke``: their tiny variants)."""
    found: dict[str, dict[str, object]] = {}
    for name, config in comparison.EXPERIMENT.runs.items():
        network, method = name.split("/")
        config = config.for_point(config.points()[0])  # a grid's steps cost the same at every point
        found.setdefault(network, {})[method] = smoke_config(config) if smoke else config
    return found


def bench_network(configs: dict, steps: int) -> dict[str, dict[str, float]]:
    """One network's methods, measured side by side."""
    benches, batches = {}, {}
    for method, config in configs.items():
        plan = make_plan(config, model=own_model(config))
        _, variables = plan.build(jax.random.key(0))
        benches[method] = Bench(plan.learner, plan.learner.init(variables))
        shape = (config.batch_size, *plan.info.input_shape)
        batches[method] = (jax.random.normal(jax.random.key(1), shape),
                           jax.random.randint(jax.random.key(2), shape[:1], 0, plan.info.num_classes))  # fmt: skip
    results = {}
    for size in sorted({c.batch_size for c in configs.values()}):  # HSIC's batch is its own: its own round
        group = {m: b for m, b in benches.items() if configs[m].batch_size == size}
        results.update(measure(group, batches[next(iter(group))], jax.random.key(3), steps))
    for method, r in results.items():
        r["batch_size"] = configs[method].batch_size
        r["examples_per_s"] = r["batch_size"] / r["median_step_s"]
    return results


RULE_NETWORKS = {  # name -> (architecture, one example's shape, K, batch)
    "simplecnn_K4": ("simplecnn", (28, 28, 1), 4, 128),
    "vit_tiny_K8": ("vit_tiny", (32, 32, 3), 8, 64),
}
RULES = ("sid", "dgl", "ff", "hsic")


def rule_benches(architecture: str, shape: tuple, k: int, batch: int, tiny: bool) -> dict[str, Bench]:
    """BP, BP + remat and every local rule in every execution it runs, on one blockwise network."""
    benches = {}
    for method in ("bp", "bp_remat", *RULES):
        spec = METHODS[method]
        built = make_blockwise_network(architecture, shape, 10, k, jax.random.key(0), tiny=tiny,
                                       belief_input=spec.default_belief_input("blockwise"))  # fmt: skip
        network, variables = spec.adapt(*built, jax.random.key(1))
        executions = [e for e in ("fused", "sequential", "vmap") if e in spec.executions]
        for execution in executions if method in RULES else ["fused"]:
            if execution == "vmap" and not network.stacked:
                continue
            learner = make_learner(network, optax.adam(1e-3), spec, execution=execution, batch_size=batch)
            benches[method if method not in RULES else f"{method} {execution}"] = Bench(
                learner, learner.init(variables)
            )
    return benches


def bench_executions(steps: int, tiny: bool) -> dict[str, dict]:
    """Per network, each row's memory and time, and their ratios to BP's."""
    found = {}
    for name, (architecture, shape, k, batch) in RULE_NETWORKS.items():
        shape = (16, 16, 3) if tiny and architecture == "vit_tiny" else shape
        benches = rule_benches(architecture, shape, k if not tiny else 4, batch if not tiny else 16, tiny)
        x = jax.random.normal(jax.random.key(2), (batch if not tiny else 16, *shape))
        results = measure(benches, (x, jnp.arange(x.shape[0]) % 10), jax.random.key(3), steps)
        bp = results["bp"]
        for r in results.values():
            r["memory_vs_bp"] = r["memory_bytes"] / bp["memory_bytes"]
            r["time_vs_bp"] = r["median_step_s"] / bp["median_step_s"]
        found[name] = results
        print(f"{name}:  row  step ms  memory MiB  memory/BP  time/BP")
        for row, r in results.items():
            print(f"  {row:18s} {1000 * r['median_step_s']:8.1f} {r['memory_bytes'] / 2**20:10.1f} "
                  f"{r['memory_vs_bp']:9.2f} {r['time_vs_bp']:8.2f}")  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_methods", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", default=None, help="one network of the comparison (default: all)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--smoke", action="store_true", help="the configs' tiny variants (what the tests run)"
    )
    parser.add_argument("--executions", action="store_true", help="every local rule in every execution vs BP")
    args = parser.parse_args(argv)
    if args.executions:
        report = {"steps": args.steps, **environment(), "networks": bench_executions(args.steps, args.smoke)}
        write_json(args.json, report)
        return report
    report = {"steps": args.steps, **environment(), "networks": {}}
    for network, configs in networks(args.smoke).items():
        if args.only not in (None, network):
            continue
        results = bench_network(configs, args.steps)
        report["networks"][network] = results
        sid = results["sid"]
        print(f"{network}:  method  step ms  examples/s  memory MiB  time/SID  memory/SID")
        for method, r in results.items():
            print(f"  {method:8s} {1000 * r['median_step_s']:8.1f} {r['examples_per_s']:10.0f} "
                  f"{r['memory_bytes'] / 2**20:10.1f} {r['median_step_s'] / sid['median_step_s']:9.2f} "
                  f"{r['memory_bytes'] / sid['memory_bytes']:10.2f}")  # fmt: skip
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
