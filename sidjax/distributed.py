"""Multi-process (multi-host) runs: ``jax.distributed.initialize`` from flags or environment.

Every process runs the same program on the same data with the same seed;
``jax.devices()`` then lists the devices of all processes, a mesh built from
them spans every host, and ``sidjax.parallel`` places global arrays on it (each
process supplies its own shards). Collectives between processes use gloo on
CPU and NCCL on GPU. Only process 0 writes result files.
"""

from __future__ import annotations

import os

import jax

ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins a multi-process run if one is configured; returns whether it did.

    Each argument falls back to its environment variable (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). With none set this is a single-process
    run and nothing happens. Must be called before JAX touches a device.

    Raises:
      ValueError: some but not all of the three are given, or they are malformed.
    """
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    values = {k: v if v is not None else os.environ.get(ENV[k]) for k, v in given.items()}
    if all(v is None for v in values.values()):
        return False
    missing = [f"--{k.replace('_', '-')} (or ${ENV[k]})" for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"a multi-process run needs all three settings; missing {', '.join(missing)}")
    try:
        num, pid = int(values["num_processes"]), int(values["process_id"])
    except ValueError:
        raise ValueError(
            f"--num-processes and --process-id must be integers, got {values['num_processes']!r}, "
            f"{values['process_id']!r}"
        ) from None
    if num < 1 or not 0 <= pid < num:
        raise ValueError(f"--process-id must lie in [0, {num}) for --num-processes {num}, got {pid}")
    jax.distributed.initialize(str(values["coordinator_address"]), num, pid)
    return True
