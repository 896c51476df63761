"""Memory and time of BP, BP+remat and blockwise SID (each execution) against K, side by side.

For one model, batch size and input shape, and each K in --ks, this builds
the blockwise network and measures, in one process:

* compiled memory of the step beyond its arguments
  (``sidjax.memory_beyond_arguments``: temp buffers plus outputs that do not
  reuse a donated argument; params, optimizer state and the batch are
  arguments, common to all methods, and not counted). Every step donates its
  state, as training does. ``sid_stages`` runs one program per block on one
  device (``placement="stages:K"``); it is charged its largest block program's
  memory plus that block's input activations;
* the median step time over --steps steps after compilation, methods timed in
  interleaved rounds so load drift hits all alike;
* on accelerators, the device's peak bytes in use (a high-water mark of the
  whole process: for a per-method device peak run one method per process,
  ``--variants bp`` and so on).

``sid_sequential`` is the whole blockwise step as one program, blocks walked
in order (``sidjax.units.walk``); ``sid_vmap`` needs equal blocks (stacked).

    python -m experiments.bench_memory --model vit_tiny --input-shape 32,32,3 --batch-size 64 --ks 4,8

Expected on a 2-core x86 CPU (jax 0.10.2): ~5 minutes for ViT-Tiny, batch 64,
K in {4, 8}, 5 steps each.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from experiments.benchlib import Bench, environment, measure, write_json
from sidjax import ARCHITECTURES, SIDLoss, make_blockwise_network, make_learner
from sidjax.errors import ConfigError

# (label, method, execution); "stages" is one program per block
VARIANTS = [
    ("bp", "bp", "fused"),
    ("bp_remat", "bp_remat", "fused"),
    ("sid_fused", "sid", "fused"),
    ("sid_sequential", "sid", "sequential"),
    ("sid_vmap", "sid", "vmap"),
    ("sid_stages", "sid", "stages"),
]


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def bench(network, variables, tx, method: str, execution: str) -> Bench:
    if execution == "stages":
        learner = make_learner(network, tx, method, SIDLoss(), placement=f"stages:{network.num_units}",
                               devices=jax.devices()[:1])  # fmt: skip
    else:
        learner = make_learner(network, tx, method, SIDLoss(), execution=execution, donate=True)
    return Bench(learner, learner.init(jax.tree.map(jnp.copy, variables)))


def bench_k(args, k: int, shape, x, labels, on_memory=None) -> dict:
    network, variables = make_blockwise_network(
        args.model, shape, args.num_classes, k, jax.random.key(0), tiny=args.tiny
    )
    tx = optax.adam(1e-3)
    wanted = args.variants.split(",")
    benches = {
        label: bench(network, variables, tx, method, execution)
        for label, method, execution in VARIANTS
        if label in wanted and (execution != "vmap" or network.stacked)  # vmap needs equal blocks
    }

    def result(out):  # step times are missing while only the memory is known
        bp, nan = out.get("bp"), float("nan")
        for v in out.values():
            v["process_peak_device_bytes"] = peak_device_bytes()
            v["memory_vs_bp"] = v["memory_bytes"] / bp["memory_bytes"] if bp else nan
            v["time_vs_bp"] = v.get("median_step_s", nan) / bp.get("median_step_s", nan) if bp else nan
        return {"num_blocks": k, "stacked": network.stacked, "methods": out}

    memory_known = None if on_memory is None else (lambda out: on_memory(result(out)))
    return result(measure(benches, (x, labels), jax.random.key(1), args.steps, memory_known))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="vit_tiny", choices=tuple(ARCHITECTURES))
    parser.add_argument("--input-shape", default="32,32,3", help="H,W,C")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ks", default="1,2,4,8", help="comma-separated K values")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (0: memory only)")
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS), help="subset to run")
    parser.add_argument("--tiny", action="store_true", help="the model's tiny variant (smoke tests)")
    parser.add_argument(
        "--json", default=None, help="write the results here, after each memory phase and each K"
    )
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
    print(f"{'K':>3} {'method':<15}{'mem MiB':>10}{'vs BP':>8}{'step ms':>10}{'vs BP':>8}")
    results = []
    for k_text in args.ks.split(","):
        try:  # the results so far are written after every K, and a K's memory before its timing
            result = bench_k(args, int(k_text), shape, x, labels,
                             lambda partial: write_json(args.json, {**header, "results": [*results, partial]}))  # fmt: skip
        except (ValueError, ConfigError) as err:  # a cut the architecture does not allow
            print(f"{k_text:>3} skipped: {err}")
            continue
        results.append(result)
        write_json(args.json, {**header, "results": results})
        for label, m in result["methods"].items():
            print(
                f"{result['num_blocks']:>3} {label:<15}{m['memory_bytes'] / 2**20:>10.1f}{m['memory_vs_bp']:>8.2f}"
                f"{1e3 * m['median_step_s']:>10.1f}{m['time_vs_bp']:>8.2f}",
                flush=True,
            )
    return {**header, "results": results}


if __name__ == "__main__":
    main()
