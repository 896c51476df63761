"""experiments/device_check.sh: one line for what is missing; SMOKE=1 runs every step of the real check."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "device_check.sh")


def _check(tmp_path, timeout=300, **env):  # the checks start Python ~10 times: slow on a loaded machine
    return subprocess.run(["bash", SCRIPT], env={**os.environ, "OUT": str(tmp_path / "out"), **env},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"PYTHON": "no-such-python"},
            "error: no no-such-python here; set PYTHON to the interpreter that has jax",
        ),
        ({"PYTHON": "/bin/false"}, "error: /bin/false cannot import jax"),
        (
            {"SIDJAX_FASHION_MNIST_DIR": "/nowhere"},
            "error: Fashion-MNIST not found: copy its four IDX .gz files",
        ),
        ({}, "error: jax sees no accelerator here"),
    ],
)
def test_what_is_missing_is_one_line_naming_the_fix(tmp_path, env, message):
    proc = _check(tmp_path, **{"PYTHON": sys.executable, **env})
    assert proc.returncode == 1 and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, (
        proc.stderr
    )
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.slow
def test_smoke_runs_every_step_and_writes_every_result(tmp_path):
    """The whole check on tiny settings (~7.5 min on 2 cores under load)."""
    proc = _check(tmp_path, timeout=1200, SMOKE="1", PYTHON=sys.executable)
    out = tmp_path / "out"
    assert proc.returncode == 0, (out / "environment.txt").read_text()
    files = sorted(os.listdir(out))
    assert files == ["environment.txt", "epoch.json", "memory_vit_k4.json", "memory_vit_k8.json", "steps.log",
                     "tests.log"]  # fmt: skip
    assert len(json.loads((out / "epoch.json").read_text())["results"]) == 7
    for k in (4, 8):
        (result,) = json.loads((out / f"memory_vit_k{k}.json").read_text())["results"]
        assert result["num_blocks"] == k and result["methods"]["sid_stages"]["memory_vs_bp"] < 1
    tests = (out / "tests.log").read_text()
    assert tests.count(" PASSED") == 24 and "24 passed" in tests
