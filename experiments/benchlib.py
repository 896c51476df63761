"""Shared measuring for the benchmarks: compiled temp memory and interleaved step times."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sidjax import init_train_state
from sidjax.steps import step_temp_bytes as temp_bytes


def measure(
    steps: dict[str, Callable],
    params: Any,
    tx: optax.GradientTransformation,
    batch: tuple,
    key: jax.Array,
    num_steps: int,
) -> dict[str, dict[str, float]]:
    """Temp bytes and the median of ``num_steps`` interleaved step times per labelled step.

    Every step starts from its own copy of ``params``; each is compiled and
    warmed up (2 steps) first; then rounds run one step of each in turn, so
    machine-load drift hits all alike. ``num_steps=0`` measures memory only.
    """
    states, results = {}, {}
    for label, step in steps.items():
        state = init_train_state(jax.tree.map(jnp.copy, params), tx)
        results[label] = {"temp_bytes": temp_bytes(step, state, batch, key)}
        for _ in range(2 if num_steps else 0):
            state, _ = step(state, batch, key)
        states[label] = jax.block_until_ready(state)
    times = {label: [] for label in steps}
    for _ in range(num_steps):
        for label, step in steps.items():
            start = time.perf_counter()
            states[label], _ = step(states[label], batch, key)
            jax.block_until_ready(states[label])
            times[label].append(time.perf_counter() - start)
    for label in steps:
        results[label]["median_step_s"] = float(np.median(times[label])) if num_steps else float("nan")
    return results


def environment() -> dict[str, str]:
    """What a benchmark ran on."""
    return {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", "(none)"),
        "jax_version": jax.__version__,
    }


def write_json(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
