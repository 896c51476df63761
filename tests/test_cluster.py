"""Run directories on shared machines, staged for real: full disks, nohup, read-only parents,
symlinks, claims from other machines, readers while a run trains, runaway losses."""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from conftest import records, tiny_config
from test_faults import _damage, _resume

from sidjax import ConfigError
from sidjax.train import claim as claim_module
from sidjax.train import rundir
from sidjax.train.rundir import RunDir, RunWriteError
from sidjax.train.runner import DIVERGED, load_run, run

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}
SHORT = [sys.executable, "-m", "sidjax", "train", "--model", "mlp", "--num-modules", "3", "--limit-train", "2048",
         "--limit-test", "512", "--batch-size", "64", "--no-progress"]  # fmt: skip  # 32 steps an epoch, ~1 s


def _one_line(proc: subprocess.CompletedProcess) -> str:
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, proc.stderr
    return line


# --- a full disk or a file-size limit while a checkpoint is written ---


def test_a_file_size_limit_at_a_checkpoint_is_one_line_and_resume_continues_exactly(tmp_path):
    out = tmp_path / "run"
    subprocess.run([*SHORT, "--epochs", "1", "--out", str(out)], env=ENV, check=True, capture_output=True)
    limit = 100_000  # bytes: metrics lines fit, the checkpoint's array file (~7 MB) does not
    # Without the test session's compilation cache: its writes would hit the limit too.
    no_cache = {**ENV, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    limited = subprocess.run([*SHORT, "--epochs", "2", "--out", str(out), "--resume"], env=no_cache, capture_output=True,
                             text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))  # fmt: skip
    line = _one_line(limited)
    assert limited.returncode == 1, line
    assert line.startswith(
        f"error: could not write the checkpoint of epoch 2 in {out} (the file-size limit"
    ), line
    assert "the checkpoint of epoch 1 is intact" in line and "continue with: " in line, line
    assert os.listdir(out / "checkpoints") == ["32"], "the half-written checkpoint was left behind"
    uninterrupted = records(out / "metrics.jsonl")  # epoch 2 was recorded before its checkpoint failed
    assert len(uninterrupted) == 2
    command = line.split("continue with: ")[1].split()
    resumed = subprocess.run([sys.executable, *command[1:]], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert records(out / "metrics.jsonl") == uninterrupted, "resumed from epoch 1 to the same numbers"


def test_a_write_that_fails_inside_orbax_is_one_line_and_leaves_the_earlier_checkpoint(
    tmp_path, fashion_mnist, monkeypatch
):
    """Failures no check foresees (a quota, a disk filled meanwhile) come from orbax's writer."""
    out = tmp_path / "run"
    run(tiny_config(epochs=1), str(out), dataset=fashion_mnist, progress=False)
    message = ('OUT_OF_RANGE: Error writing "params.units.0" in OCDBT database at local file "/x/": Failed to '
               "write 6234816 bytes to file 14: Disk quota exceeded [os_error_code='122']")  # fmt: skip

    def failing_save(self, step, args):
        os.makedirs(
            os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp"), exist_ok=True
        )  # half-written
        raise ValueError(message)

    monkeypatch.setattr(rundir.ocp.CheckpointManager, "save", failing_save)
    with pytest.raises(RunWriteError) as raised:
        _resume(out, fashion_mnist, epochs=2)
    assert str(raised.value) == (
        f"could not write the checkpoint of epoch 2 in {out} (Disk quota exceeded); the checkpoint of epoch 1 is "
        "intact; free space on that disk (or raise the quota or file-size limit) and run again with resume=True"
    )
    assert raised.value.saved and os.listdir(out / "checkpoints") == ["8"]
    assert not (tmp_path / ".run.lock").exists(), "the claim was not released"


# --- signals the run was started to ignore ---


def test_nohup_keeps_the_run_going_when_its_terminal_closes(tmp_path):
    out = tmp_path / "run"
    ignoring = [sys.executable, "-c", "import runpy, signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                "runpy.run_module('sidjax', run_name='__main__', alter_sys=True)"]  # fmt: skip  # as nohup starts it
    proc = subprocess.Popen([*ignoring, *SHORT[3:], "--epochs", "3", "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the terminal closed"
    proc.send_signal(signal.SIGHUP)  # the terminal closes
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


def test_a_signal_ignored_at_the_start_stays_ignored_inside_stop_signals():
    from sidjax.train.signals import stop_signals

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals() as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.signum == signal.SIGUSR1, "the ignored SIGHUP was recorded as a stop"
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


# --- where the run directory sits ---


def test_a_writable_out_in_a_read_only_parent_is_one_line(tmp_path):
    """A container volume mounted read-only with a writable directory in it (a real read-only mount,
    in a private mount namespace: root ignores file modes)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private read-only mount")
    src, parent = tmp_path / "src", tmp_path / "volume"
    (src / "out").mkdir(parents=True)
    parent.mkdir()
    train = " ".join([*SHORT, "--epochs", "1"])
    script = (f"mount --bind {src} {parent} && mount -o remount,ro,bind {parent} && mount --bind {src / 'out'} "
              f"{parent / 'out'} || exit 99; {train} --out {parent / 'out'}; echo rc=$?; "
              f"{train} --out {parent / 'out' / 'run'} >/dev/null; echo rc=$?")  # fmt: skip
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode == 99 or "Operation not permitted" in proc.stderr:
        pytest.skip(f"this machine cannot make a private read-only mount: {proc.stderr.strip()}")
    assert proc.stdout.split() == ["rc=2", "rc=0"], proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line == (
        f"error: --out {parent / 'out'}: its parent {parent} is read-only, and a run keeps its lock file (and a new "
        f"run its staging directory) beside its directory; name a directory inside it, e.g. {parent / 'out' / 'run'}"
    )
    assert (src / "out" / "run" / "summary.json").exists(), "the suggested out did not work"


def test_resume_with_fewer_epochs_than_recorded_refuses_and_changes_nothing(tmp_path, fashion_mnist):
    out = tmp_path / "run"
    run(tiny_config(epochs=2), str(out), dataset=fashion_mnist, progress=False)
    before = {name: (out / name).read_bytes() for name in ("summary.json", "run.json", "metrics.jsonl")}
    with pytest.raises(
        ConfigError, match=r"already holds 2 finished epochs, more than the 1 asked for; nothing was"
    ):
        _resume(out, fashion_mnist, epochs=1)
    assert {name: (out / name).read_bytes() for name in before} == before


def _lock(out) -> str:
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock")


def test_a_claim_from_another_machine_is_honoured_until_it_goes_unrenewed(tmp_path, fashion_mnist):
    out = tmp_path / "run"
    run(tiny_config(epochs=1), str(out), dataset=fashion_mnist, progress=False)
    before = (out / "metrics.jsonl").read_bytes()
    host = "node-" + socket.gethostname() + "-elsewhere"
    with open(_lock(out), "w") as f:
        f.write(f"pid 4242 on {host}, since 2026-12-01T00:00:00+0000")
    with pytest.raises(
        ConfigError, match=rf"claimed by pid 4242 on {host} \(another machine\), renewed \d+ s ago"
    ):
        _resume(out, fashion_mnist, epochs=2)
    assert (out / "metrics.jsonl").read_bytes() == before and "4242" in open(_lock(out)).read()
    stale = time.time() - rundir.STALE_CLAIM_S - 60
    os.utime(_lock(out), (stale, stale))
    messages = []
    _resume(out, fashion_mnist, epochs=2, log=messages.append)
    assert any(f"(pid 4242 on {host}, since" in m and "has not renewed its claim for 11 minutes" in m
               for m in messages), messages  # fmt: skip
    assert len(records(out / "metrics.jsonl")) == 2 and not os.path.exists(_lock(out))


def test_a_writer_renews_its_claim_while_it_holds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(claim_module, "RENEW_CLAIM_S", 0.05)
    claim = RunDir(str(tmp_path / "run"), tiny_config())
    claim.claim()
    try:
        old = time.time() - 3600
        os.utime(_lock(claim.path), (old, old))
        time.sleep(0.5)
        assert time.time() - os.stat(_lock(claim.path)).st_mtime < 5, "the claim was not renewed"
    finally:
        claim.release()
    assert not os.path.exists(_lock(claim.path))


# --- losses that run away ---


def test_a_finite_runaway_loss_is_divergence_and_leaves_nothing(tmp_path):
    """Adam at lr 1000 ends at chance with a loss of ~1e19 that is still finite."""
    proc = subprocess.run([*SHORT, "--epochs", "1", "--lr", "1000", "--out", str(tmp_path / "r")], env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    line = _one_line(proc)
    assert proc.returncode == 1, line
    assert line.startswith(
        "error: training diverged in epoch 1: the last unit's training cross-entropy is "
    ), line
    assert (
        "over 100 times a uniform guess's (2.30); the learning rate is the likely cause: lower it (now 1000)"
        in line
    )
    assert os.listdir(tmp_path) == [], "a staging directory or claim was left behind"


def test_healthy_runs_stay_far_below_the_divergence_threshold(fashion_mnist):
    """The threshold against real numbers: lr 3e-2 overshoots to a CE of ~7 in epoch 1, 30x below it."""
    limit = DIVERGED * np.log(fashion_mnist.num_classes)
    for lr in (1e-3, 3e-2):
        history = []
        run(tiny_config(epochs=2, lr=lr), dataset=fashion_mnist, progress=False, on_epoch=history.append)
        assert max(r["train_ce"] for r in history) < limit / 20, (lr, history)


# --- reading a run ---


def test_load_run_while_the_run_trains_always_loads_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    writer = subprocess.Popen([*SHORT, "--epochs", "6", "--limit-train", "4096", "--checkpoint-steps", "8",
                               "--steps-per-chunk", "8", "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip  # a checkpoint every 8 steps
    deadline = time.time() + 240
    while not (out / "config.json").exists() and time.time() < deadline:
        assert writer.poll() is None, writer.communicate()
        time.sleep(0.02)
    loads, seen = 0, set()
    while writer.poll() is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a skipped checkpoint would be a warning: none may be
            loaded = load_run(str(out))
        assert loaded.state is not None and int(np.asarray(loaded.state.step).max()) > 0
        loads += 1
        seen.add(loaded.summary["loaded_checkpoint"])
    assert writer.returncode == 0, writer.communicate()
    assert loads >= 3 and len(seen) >= 2, (loads, seen)  # read while the checkpoints kept changing


def test_load_run_says_which_checkpoint_it_falls_back_to_and_describes_it(tmp_path, fashion_mnist):
    out = tmp_path / "run"
    run(tiny_config(epochs=3), str(out), dataset=fashion_mnist, progress=False)
    history = records(out / "metrics.jsonl")
    _damage(out, 3)
    with pytest.warns(
        UserWarning, match="checkpoint of epoch 3 is damaged .*; loaded the checkpoint of epoch 2"
    ):
        loaded = load_run(str(out))
    assert loaded.summary["loaded_checkpoint"] == "epoch 2" and loaded.summary["epochs_done"] == 3
    assert loaded.summary["test_accuracy"] == history[1]["test_accuracy"], (
        "the summary describes another epoch"
    )
    second = load_run(str(out), epoch=2)
    assert jax.tree.all(jax.tree.map(np.array_equal, second.state, loaded.state))
    assert second.summary["epoch"] == 2


@pytest.mark.parametrize(
    "where, epoch, message",
    [
        ("run", "2", "epoch must be an int, a finished epoch's number; got '2'"),
        ("run/config.json", None, "is a file; give the run's directory"),
        ("missing", None, "holds no run: no such directory"),
    ],
)
def test_load_run_refuses_bad_arguments_in_one_line(tmp_path, fashion_mnist, where, epoch, message):
    run(tiny_config(epochs=1), str(tmp_path / "run"), dataset=fashion_mnist, progress=False)
    with pytest.raises(ConfigError, match=message):
        load_run(str(tmp_path / where), epoch)


def test_a_symlinked_out_is_the_same_run(tmp_path, fashion_mnist):
    out = tmp_path / "run"
    run(tiny_config(epochs=1), str(out), dataset=fashion_mnist, progress=False)
    os.symlink(out, tmp_path / "latest")
    assert RunDir(str(tmp_path / "latest"), tiny_config()).path == str(out.resolve())
    run(tiny_config(epochs=2), str(tmp_path / "latest"), dataset=fashion_mnist, progress=False, resume=True)
    assert len(records(out / "metrics.jsonl")) == 2 and (tmp_path / "latest").is_symlink()
