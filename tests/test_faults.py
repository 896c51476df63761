"""Faults, staged for real: killed and interrupted runs, damaged checkpoints and metrics, failed starts."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import records, tiny_config

from sidjax import ConfigError
from sidjax.data import DatasetUnavailableError
from sidjax.train.runner import TrainingDiverged, run

TRAIN = [sys.executable, "-m", "sidjax", "train", "--model", "mlp", "--num-modules", "3", "--epochs", "5",
         "--limit-train", "24000", "--limit-test", "1000", "--batch-size", "64", "--no-progress"]  # fmt: skip
# ~0.7 s per epoch on a 2-core CPU: a signal sent after epoch 1 arrives with ~3 s of the run left, even under load
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}


# A shell that starts a job in the background (``make test &``, nohup) ignores SIGINT for it and its
# children, and Python then never raises KeyboardInterrupt: the run gets the handler a terminal gives
# it (set in the child, not by a fork hook, which JAX's threads make unsafe).
WITH_SIGINT = [sys.executable, "-c", "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('sidjax', run_name='__main__', alter_sys=True)"]  # fmt: skip


def _stop_after(out, epochs: int, sig) -> subprocess.CompletedProcess:
    """Starts a 5-epoch run and sends ``sig`` once ``epochs`` epochs are recorded."""
    proc = subprocess.Popen([*WITH_SIGINT, *TRAIN[3:], "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= epochs) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert not (out / "summary.json").exists(), "stopped too late: the run had finished"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run every fault is compared with."""
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run([*TRAIN, "--out", str(out)], env=ENV, check=True, capture_output=True)
    return records(out / "metrics.jsonl")


def test_kill_then_resume_equals_the_uninterrupted_run(tmp_path, whole):
    out = tmp_path / "run"
    _stop_after(out, 1, signal.SIGKILL)
    assert 1 <= len(records(out / "metrics.jsonl")) < 5
    resumed = subprocess.run([*TRAIN, "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert records(out / "metrics.jsonl") == whole  # losses, accuracies, KLs: exactly


def test_ctrl_c_says_where_the_run_is_and_how_to_continue(tmp_path, whole):
    out = tmp_path / "run"
    stopped = _stop_after(out, 1, signal.SIGINT)
    assert stopped.returncode == 130
    line = stopped.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert f"interrupted; {out} holds epochs 1.." in line and "continue with: " in line and "--resume" in line
    command = line.split("continue with: ")[1].split()
    assert command[:4] == ["python", "-m", "sidjax", "train"]
    resumed = subprocess.run([sys.executable, *command[1:]], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert records(out / "metrics.jsonl") == whole


def _finished(tmp_path, fashion_mnist, epochs=3):
    out = tmp_path / "run"
    run(tiny_config(epochs=epochs), str(out), dataset=fashion_mnist, progress=False)
    return out


def _resume(out, fashion_mnist, epochs=3, log=lambda message: None, **changes):
    return run(tiny_config(epochs=epochs, **changes), str(out), dataset=fashion_mnist, progress=False, resume=True,
               log=log)  # fmt: skip


STEPS_PER_EPOCH = 8  # tiny_config: 512 examples in batches of 64; checkpoints are named by the global step


def _checkpoint(out, epoch: int):
    """The directory of the checkpoint taken at the end of ``epoch``."""
    return out / "checkpoints" / str(epoch * STEPS_PER_EPOCH)


def _damage(out, epoch: int) -> None:
    """Overwrites the middle of every array file of the checkpoint of ``epoch``."""
    damaged = 0
    for root, _, files in os.walk(_checkpoint(out, epoch) / "state"):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            if size > 256 and "metadata" not in name:
                with open(path, "r+b") as f:
                    f.seek(size // 2)
                    f.write(os.urandom(64))
                damaged += 1
    assert damaged


def test_a_damaged_checkpoint_is_skipped_for_an_earlier_intact_one(tmp_path, fashion_mnist):
    out = _finished(tmp_path, fashion_mnist)
    expected = records(out / "metrics.jsonl")
    for path in ("summary.json",):
        os.remove(out / path)
    _damage(out, 3)
    messages = []
    run(
        tiny_config(epochs=3),
        str(out),
        dataset=fashion_mnist,
        progress=False,
        resume=True,
        log=messages.append,
    )
    assert any("checkpoint of epoch 3" in m and ("damaged" in m or "cannot be read" in m) for m in messages)
    assert any("resuming from the checkpoint of epoch 2" in m for m in messages), messages
    assert records(out / "metrics.jsonl") == expected
    os.remove(out / "summary.json")  # epoch 3's checkpoint was written again: a resume now starts there
    messages.clear()
    _resume(out, fashion_mnist, log=messages.append)
    assert not any("skipped" in m or "resuming" in m for m in messages), messages


def test_a_checkpoint_without_its_manifest_is_not_trusted(tmp_path, fashion_mnist):
    """A kill between orbax's save and the manifest leaves files nobody vouches for."""
    out = _finished(tmp_path, fashion_mnist)
    expected = records(out / "metrics.jsonl")
    os.remove(out / "summary.json")
    os.remove(_checkpoint(out, 3) / "files.sha256.json")
    messages = []
    _resume(out, fashion_mnist, log=messages.append)
    assert messages[0].endswith("the checkpoint of epoch 3 is damaged (no checksum manifest: the run was stopped "
                                "while saving it); skipped"), messages  # fmt: skip
    assert records(out / "metrics.jsonl") == expected


def test_no_intact_checkpoint_refuses_and_changes_nothing(tmp_path, fashion_mnist):
    out = _finished(tmp_path, fashion_mnist)
    os.remove(out / "summary.json")
    before = (out / "metrics.jsonl").read_text()
    for epoch in (2, 3):
        _damage(out, epoch)
    with pytest.raises(ConfigError, match="holds 3 finished epochs but nothing to continue from"):
        _resume(out, fashion_mnist)
    assert (out / "metrics.jsonl").read_text() == before
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(ConfigError, match="no intact checkpoint of a recorded epoch is left"):
        _resume(out, fashion_mnist)
    assert (out / "metrics.jsonl").read_text() == before


def test_a_torn_metrics_line_resumes(tmp_path, fashion_mnist):
    out = _finished(tmp_path, fashion_mnist)
    expected = records(out / "metrics.jsonl")
    os.remove(out / "summary.json")
    text = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(text[: len(text) - 40])  # the last line, torn
    _resume(out, fashion_mnist)
    assert records(out / "metrics.jsonl") == expected


def test_a_failed_start_leaves_nothing_and_overwrite_keeps_the_old_run_until_the_new_one_is_under_way(
    tmp_path, fashion_mnist, monkeypatch
):
    import sidjax.train.plan

    out = tmp_path / "run"

    def unavailable(*args, **kwargs):
        raise DatasetUnavailableError("fashion_mnist: no files here")

    monkeypatch.setattr(sidjax.train.plan, "load_dataset", unavailable)  # where run loads the config's data
    with pytest.raises(DatasetUnavailableError):
        run(tiny_config(), str(out), progress=False)
    assert not out.exists() and not os.listdir(tmp_path)
    monkeypatch.undo()
    old = _finished(tmp_path, fashion_mnist, epochs=2)
    before = {p: (old / p).read_text() for p in ("metrics.jsonl", "summary.json", "config.json")}
    with pytest.raises(
        TrainingDiverged, match="training diverged in epoch 1.*learning rate is the likely cause"
    ):
        run(tiny_config(lr=1e12), str(old), dataset=fashion_mnist, progress=False, overwrite=True)
    assert {p: (old / p).read_text() for p in before} == before  # the old run is untouched
    assert sorted(os.listdir(tmp_path)) == ["run"], "the diverged start left its staging directory"
    summary = run(
        tiny_config(epochs=1), str(old), dataset=fashion_mnist, progress=False, overwrite=True
    ).summary
    assert json.loads((old / "summary.json").read_text())["epochs"] == summary["epochs"] == 1
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_resume_refuses_other_settings_returns_a_finished_run_and_grows(tmp_path, fashion_mnist):
    out = _finished(tmp_path, fashion_mnist, epochs=1)
    first = json.loads((out / "summary.json").read_text())
    assert _resume(out, fashion_mnist, epochs=1).summary == first
    with pytest.raises(ConfigError, match=r"resume: .* other settings \(alpha=0.5\)"):
        _resume(out, fashion_mnist, epochs=1, alpha=0.9)
    longer = _resume(out, fashion_mnist, epochs=2).summary
    assert [r["epoch"] for r in records(out / "metrics.jsonl")] == [1, 2] and longer["epochs"] == 2


def test_divergence_is_one_line_from_the_command_line(tmp_path):
    proc = subprocess.run([*TRAIN, "--epochs", "1", "--lr", "1e12", "--out", str(tmp_path / "r")], env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith("error: training diverged in epoch 1")
        and "\n" not in proc.stderr.strip()
    )
    assert not (tmp_path / "r").exists()


def test_a_damaged_checkpoint_from_the_command_line_is_one_line_and_no_traceback(tmp_path):
    """Orbax's reader of a damaged array file left asyncio tracebacks at exit: the files' sha256 stops it first."""
    out, short = tmp_path / "run", [*TRAIN[:TRAIN.index("--epochs")], "--epochs", "2", "--limit-train", "512",
                                    "--limit-test", "256", "--batch-size", "64", "--no-progress"]  # fmt: skip
    subprocess.run([*short, "--out", str(out)], env=ENV, check=True, capture_output=True)
    os.remove(out / "summary.json")
    _damage(out, 2)
    resumed = subprocess.run([*short, "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr
    assert resumed.stdout.splitlines()[:2] == [
        f"{out}: the checkpoint of epoch 2 is damaged (file checksum mismatch); skipped",
        "resuming from the checkpoint of epoch 1; epochs 2..2 run again",
    ]


# --- a cluster's faults: stop signals, two writers, stale claims, kills between step checkpoints ---

STEPS = [
    "--checkpoint-steps",
    "100",
]  # 375 steps per epoch in chunks of 25: checkpoints at steps 100, 200, 300


def _start(out, *extra) -> subprocess.Popen:
    return subprocess.Popen([*TRAIN, *STEPS, *extra, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(proc, path, timeout=240) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


SCRIPT = """
import sys

import sidjax

config = sidjax.TrainConfig(model="mlp", num_modules=3, epochs=5, limit_train=24000, limit_test=1000,
                            batch_size=64, checkpoint_steps=100)
sidjax.run(config, sys.argv[1], progress=False)  # RunStopped is not caught: the script ends on it
"""


def test_a_stop_signal_ends_a_python_script_with_128_plus_its_number_and_says_why(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "train.py"), str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(proc, out / "checkpoints" / "100" / "files.sha256.json")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert "stopped by SIGTERM in epoch 1 at step " in stdout and f"{out} holds a checkpoint" in stdout, (
        stdout
    )


def _resume_cli(out) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRAIN, *STEPS, "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True
    )


# SIGTERM end to end here; every stop signal is recorded in test_stop_signals_are_recorded_inside_and_restored_outside.
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_stop_signal_checkpoints_where_the_run_is_and_resumes_to_the_same_numbers(tmp_path, whole, sig):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(proc, out / "checkpoints" / "100" / "files.sha256.json")  # under way, inside epoch 1
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    line = stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith(f"stopped by {sig.name} ") and f"{out} holds a checkpoint of that point" in line, (
        line
    )
    command = line.split("continue with: ")[1].split()
    assert command[:4] == ["python", "-m", "sidjax", "train"] and command[-1] == "--resume"
    assert not (out / "summary.json").exists()
    resumed = subprocess.run([sys.executable, *command[1:]], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint of epoch" in resumed.stdout
    assert records(out / "metrics.jsonl") == whole  # the partial epoch's metrics included


def test_a_kill_between_step_checkpoints_resumes_to_the_same_numbers_and_takes_over_the_stale_claim(
    tmp_path, whole
):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(proc, out / "checkpoints" / "200" / "files.sha256.json")
    proc.kill()  # SIGKILL: no handler runs, the claim's file still names the dead process
    proc.communicate()
    assert f"pid {proc.pid} " in (tmp_path / ".run.lock").read_text()
    resumed = _resume_cli(out)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"its last writer (pid {proc.pid} on " in resumed.stdout and "taking the run over" in resumed.stdout
    )
    assert records(out / "metrics.jsonl") == whole


def test_a_second_process_on_a_run_directory_is_refused_and_writes_nothing(tmp_path, whole):
    out = tmp_path / "run"
    first = _start(out, "--epochs", "100")  # long enough to be running throughout; stopped below
    _wait_for(first, out / "checkpoints" / "100" / "files.sha256.json")
    os.symlink(out, tmp_path / "latest")  # a second writer through a symlink is the same run
    for extra, where in ((["--resume"], out), (["--overwrite"], out), (["--resume"], tmp_path / "latest")):
        second = subprocess.run([*TRAIN, *STEPS, "--epochs", "100", *extra, "--out", str(where)], env=ENV,
                                capture_output=True, text=True)  # fmt: skip
        line = second.stderr.strip()
        assert second.returncode == 2 and "\n" not in line, line
        assert f"is being written by another sidjax process (pid {first.pid} on " in line, line
    assert first.poll() is None, "the first run ended before the second was refused"
    assert not (tmp_path / ".run.incoming").exists() and not (tmp_path / ".run.replaced").exists()
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    found = records(out / "metrics.jsonl")
    shared = min(len(found), len(whole))  # it may have recorded more epochs than the 5 compared with
    assert shared >= 1 and found[:shared] == whole[:shared]  # undisturbed (a constant schedule: same epochs)
    assert not (tmp_path / ".run.lock").exists()  # released cleanly: nothing to take over


def test_stop_signals_are_recorded_inside_and_restored_outside():
    from sidjax.train.signals import STOP_SIGNALS, stop_signals

    # A suite run under nohup ignores SIGHUP, and stop_signals keeps an ignored signal ignored
    # (tests/test_cluster.py); here every signal is honoured.
    ignored = [s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN]
    for sig in ignored:
        signal.signal(sig, signal.SIG_DFL)
    try:
        before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            with stop_signals() as stop:
                assert not stop
                os.kill(os.getpid(), sig)
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not replace the first
                assert stop.signum == sig and stop.name == sig.name
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


def test_a_stop_signal_without_checkpoint_steps_stops_at_the_next_chunk_boundary(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([*TRAIN, "--steps-per-chunk", "25", "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip  # no --checkpoint-steps
    _wait_for(proc, tmp_path / ".run.incoming" / "run.json")  # the stop handlers are in place before it
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    step = int(stderr.split(" at step ")[1].split()[0])
    assert "stopped by SIGTERM in epoch 1 at step " in stderr and step % 25 == 0 and step < 375, (
        "a stop signal is honoured at the next chunk boundary inside the epoch, not at its end: " + stderr
    )  # that such a checkpoint resumes exactly: test_a_stop_signal_checkpoints_where_the_run_is_...
    assert json.loads((out / "checkpoints" / str(step) / "position.json").read_text())["step"] == step


def test_seeds_trained_together_resume_mid_epoch_to_each_seeds_uninterrupted_numbers(tmp_path):
    two = [sys.executable, "-m", "sidjax", "train", "--model", "mlp", "--num-modules", "3", "--epochs", "2",
           "--limit-train", "6400", "--limit-test", "500", "--batch-size", "64", "--no-progress", "--seeds", "0,1",
           "--steps-per-chunk", "10"]  # fmt: skip  # 100 steps an epoch
    steps = ["--checkpoint-steps", "20"]
    whole = tmp_path / "whole"
    subprocess.run([*two, "--out", str(whole)], env=ENV, check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.Popen([*two, *steps, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(proc, out / "seed1" / "checkpoints" / "20" / "files.sha256.json")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert " in epoch 1 at step " in stderr, "stopped inside the epoch: " + stderr
    positions = [
        json.loads((out / f"seed{s}" / "checkpoints" / "20" / "position.json").read_text()) for s in (0, 1)
    ]
    assert positions[0]["metrics"]["loss"] != positions[1]["metrics"]["loss"], (
        "a mid-epoch checkpoint of seeds trained together keeps each seed's own partial metrics"
    )
    resumed = subprocess.run(
        [*two, *steps, "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    for seed in (0, 1):
        assert records(out / f"seed{seed}" / "metrics.jsonl") == records(
            whole / f"seed{seed}" / "metrics.jsonl"
        ), (
            f"seed {seed}: resumed mid-epoch equals its uninterrupted run, the partial epoch's metrics included"
        )
