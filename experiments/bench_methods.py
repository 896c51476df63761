"""Step time and compiled memory of every method of the comparison, side by side on each network.

For each network of ``experiments/configs/comparison.py`` the methods' steps
(one seed, the run's batch size) are compiled, then timed in interleaved
rounds (one round per batch size), so that machine-load drift hits all alike; the medians, their ratio
to SID's and XLA's compiled memory beyond the arguments are printed and
written as JSON (``experiments.report`` puts them in RESULTS.md).

    python -m experiments.bench_methods --json results/comparison/bench_methods.json
    python -m experiments.bench_methods --only mlp4_blockwise --steps 5

Expected on a 2-core x86 CPU: a few minutes; HSIC's batch is 512 (its
authors'), so compare its examples/s.
"""

from __future__ import annotations

import argparse

import jax

from experiments.benchlib import Bench, environment, measure, write_json
from experiments.configs import comparison, smoke_config
from sidjax.train.plan import make_plan


def networks(smoke: bool = False) -> dict[str, dict[str, object]]:
    """network -> method -> its config, as the comparison runs them (``smoke``: their tiny variants)."""
    found: dict[str, dict[str, object]] = {}
    for name, config in comparison.EXPERIMENT.runs.items():
        network, method = name.split("/")
        found.setdefault(network, {})[method] = smoke_config(config) if smoke else config
    return found


def bench_network(configs: dict, steps: int) -> dict[str, dict[str, float]]:
    """One network's methods, measured side by side."""
    benches, batches = {}, {}
    for method, config in configs.items():
        plan = make_plan(config)
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
    args = parser.parse_args(argv)
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
