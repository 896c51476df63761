"""Multi-process runs: 2 processes on localhost (gloo CPU collectives) == one process."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import needs_devices

from sidjax import TrainConfig, run
from sidjax.distributed import initialize

FLAGS = ["--model", "mlp", "--num-modules", "8", "--epochs", "1", "--limit-train", "1024", "--limit-test", "256",
         "--batch-size", "64", "--placement", "mesh:2,4", "--no-progress"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@needs_devices(8)
def test_two_processes_train_like_one(tmp_path, fashion_mnist):
    """Each process has 4 CPU devices; the (2, 4) mesh spans both. Process 1 gets its settings
    from the environment, process 0 from flags; only process 0 writes files."""
    address = f"localhost:{_free_port()}"
    base_env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    train = [sys.executable, "-m", "sidjax", "train", *FLAGS]
    procs = [
        subprocess.Popen([*train, "--out", str(tmp_path / "p0"), "--coordinator-address", address,
                          "--num-processes", "2", "--process-id", "0"], env=base_env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([*train, "--out", str(tmp_path / "p1")],
                         env={**base_env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                              "JAX_PROCESS_ID": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not (tmp_path / "p1").exists()
    two = json.loads((tmp_path / "p0" / "summary.json").read_text())
    assert two["num_processes"] == 2

    config = TrainConfig(model="mlp", num_modules=8, epochs=1, limit_train=1024, limit_test=256, batch_size=64,
                         placement="mesh:2,4")  # fmt: skip
    one = run(config, str(tmp_path / "single"), dataset=fashion_mnist, progress=False).summary
    assert one["num_processes"] == 1
    assert two["final_test_accuracy"] == pytest.approx(one["final_test_accuracy"], abs=2 / 256)
    assert two["per_unit_kl"] == pytest.approx(one["per_unit_kl"], abs=1e-4)
    m2, m1 = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in ("p0", "single"))
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"coordinator_address": "localhost:1"}, "missing --num-processes (or $JAX_NUM_PROCESSES)"),
        (
            {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
            "--process-id must lie in [0, 2)",
        ),
    ],
)
def test_incomplete_multi_process_settings_fail_clearly(kwargs, message, monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        initialize(**kwargs)
    assert initialize() is False  # nothing configured: a single-process run
