"""Shared measuring for the benchmarks: compiled memory and interleaved step times."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from sidjax import Learner


class Bench(NamedTuple):
    """One thing to measure: a learner (its step and how its compiled memory is read) and a fresh state."""

    learner: Learner
    state: Any


def measure(
    benches: dict[str, Bench],
    batch: tuple,
    key: jax.Array,
    num_steps: int,
    on_memory: Callable[[dict[str, dict[str, float]]], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Compiled memory and the median of ``num_steps`` interleaved step times per labelled learner.

    Each is compiled and warmed up (2 steps) first; then rounds run one step
    of each in turn, so machine-load drift hits all alike. ``num_steps=0``
    measures memory only. ``on_memory(results)`` is called once every memory
    is known, before any step is timed (to write them where a cut-short run
    keeps them).
    """
    states, results = {}, {}
    for label, bench in benches.items():
        results[label] = {"memory_bytes": bench.learner.memory_bytes(bench.state, batch, key)}
    if on_memory is not None:
        on_memory(results)
    for label, bench in benches.items():
        state = bench.state
        for _ in range(2 if num_steps else 0):
            state, _ = bench.learner.step(state, batch, key)
        states[label] = jax.block_until_ready(state)
    times = {label: [] for label in benches}
    for _ in range(num_steps):
        for label, bench in benches.items():
            start = time.perf_counter()
            states[label], _ = bench.learner.step(states[label], batch, key)
            jax.block_until_ready(states[label])
            times[label].append(time.perf_counter() - start)
    for label in benches:
        results[label]["median_step_s"] = float(np.median(times[label])) if num_steps else float("nan")
    return results


def environment() -> dict[str, str]:
    """What a benchmark ran on."""
    return {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", "(none)"),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_version": jax.__version__,
    }


def write_json(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
