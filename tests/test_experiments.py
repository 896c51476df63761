"""Experiment configs, the runner, resume after a kill, and the report."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import configs  # noqa: E402
import report  # noqa: E402
import run as runner  # noqa: E402
import train  # noqa: E402

from sidjax.data import DatasetUnavailableError  # noqa: E402
from sidjax.experiment import ConfigError, TrainConfig, run  # noqa: E402


@pytest.mark.parametrize("name", configs.NAMES)
def test_config_documents_itself_and_validates(name):
    experiment = configs.load(name)
    for line in ("Command:", "Hardware:", "Expected"):
        assert line in experiment.doc, f"{name}'s docstring lacks {line!r}"
    for config in experiment.runs.values():
        config.validate()
    assert experiment.smoke().runs, "the smoke variant keeps no run"


@pytest.mark.parametrize("name", configs.NAMES)
def test_smoke_variant_runs_end_to_end_on_real_data(name, fashion_mnist, tmp_path):
    smoke = configs.load(name).smoke()
    summaries, failures = runner.run_experiment(
        smoke, str(tmp_path), datasets={"fashion_mnist": fashion_mnist}
    )
    assert not failures
    assert set(summaries) == {(run_name, smoke.seeds[0]) for run_name in smoke.runs}
    for (run_name, seed), summary in summaries.items():
        assert (tmp_path / name / run_name / f"seed{seed}" / "summary.json").exists()
        assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    # Running again skips the finished runs: same summaries, no new epochs.
    again, _ = runner.run_experiment(smoke, str(tmp_path), datasets={"fashion_mnist": fashion_mnist})
    assert again == summaries


def test_runner_reports_a_failing_run_and_goes_on(tmp_path, fashion_mnist, monkeypatch, capsys):
    def unavailable(name, *args, **kwargs):
        raise DatasetUnavailableError(f"{name} cannot be downloaded here")

    monkeypatch.setattr(runner, "load_dataset", unavailable)
    tiny = configs.smoke_config(TrainConfig(model="mlp", num_modules=2))
    experiment = configs.Experiment(
        "two", "doc", {"cifar": dataclasses.replace(tiny, dataset="cifar10"), "fm": tiny}, seeds=(0,)
    )
    summaries, failures = runner.run_experiment(
        experiment, str(tmp_path), datasets={"fashion_mnist": fashion_mnist}
    )
    assert failures == ["two/cifar/seed0: cifar10 cannot be downloaded here"]
    assert list(summaries) == [("fm", 0)] and (tmp_path / "two" / "fm" / "seed0" / "summary.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["label_noise", "--only", "nothing*"])
    assert exit_info.value.code == 2
    assert "--only 'nothing*' matches none of label_noise's runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.main(["no_such_experiment"])
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err


TRAIN = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), "--model", "mlp",
         "--num-modules", "3", "--epochs", "5", "--limit-train", "6000", "--limit-test", "1000",
         "--batch-size", "64", "--no-progress"]  # fmt: skip


def _records(path):
    """metrics.jsonl without the timings, which differ between runs."""
    return [
        {k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
        for line in path.read_text().splitlines()
    ]


def test_resume_after_kill_equals_the_uninterrupted_run(tmp_path, fashion_mnist):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*TRAIN, "--out", str(killed)], env=env, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "killed too late: the run had finished"
    epochs_before = len(_records(metrics))
    assert 2 <= epochs_before < 5

    resumed = subprocess.run(
        [*TRAIN, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    whole = tmp_path / "whole"
    subprocess.run([*TRAIN, "--out", str(whole)], env=env, check=True, capture_output=True)

    assert [r["epoch"] for r in _records(metrics)] == [1, 2, 3, 4, 5]  # appended, none repeated
    assert _records(metrics) == _records(whole / "metrics.jsonl")  # losses, accuracies, KLs: exactly
    summary = json.loads((killed / "summary.json").read_text())
    assert (
        summary["final_test_accuracy"]
        == json.loads((whole / "summary.json").read_text())["final_test_accuracy"]
    )


def test_resume_refuses_other_settings_and_returns_a_finished_run(tmp_path, fashion_mnist):
    config = TrainConfig(model="mlp", num_modules=2, epochs=1, limit_train=256, limit_test=128, batch_size=64)
    first = run(config, str(tmp_path), dataset=fashion_mnist, progress=False)
    assert run(config, str(tmp_path), dataset=fashion_mnist, progress=False, resume=True) == first
    other = TrainConfig(**{**config.__dict__, "alpha": 0.9})
    with pytest.raises(ConfigError, match=r"--resume: .* other settings \(alpha=0.5\)"):
        run(other, str(tmp_path), dataset=fashion_mnist, progress=False, resume=True)
    # More epochs under a constant schedule continue from the checkpoint of epoch 1.
    longer = run(TrainConfig(**{**config.__dict__, "epochs": 2}), str(tmp_path), dataset=fashion_mnist,
                 progress=False, resume=True)  # fmt: skip
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and longer["epochs"] == 2


def test_optimizer_recipes_and_alpha_schedule():
    sgd = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine").optimizer_tx(100)
    import jax.numpy as jnp
    import optax

    params = {"w": jnp.ones(3)}
    state = sgd.init(params)
    grads = {"w": jnp.zeros(3)}
    updates, state = sgd.update(grads, state, params)
    assert jnp.allclose(updates["w"], -0.1 * 5e-4)  # L2 decay alone, at the full learning rate
    assert optax.cosine_decay_schedule(0.1, 100)(100) == 0.0
    config = TrainConfig(alpha=(0.9, 0.5, 0.1), num_modules=3)
    config.validate()
    assert config.loss().alphas(3).tolist() == pytest.approx([0.9, 0.5, 0.1])
    with pytest.raises(ConfigError, match="--alpha has 3 values but the network has 10 units"):
        TrainConfig(alpha=(0.9, 0.5, 0.1)).validate()
    assert train.parse_alpha("0.9,0.1") == (0.9, 0.1) and train.parse_alpha("0.3") == 0.3


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--optimizer", "rmsprop"], "--optimizer must be one of"),
        (["--schedule", "linear"], "--schedule must be one of"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--resume"], "--resume needs --out"),
        (["--alpha", "0.9,0.1"], "--alpha has 2 values but the network has 10 units"),
        (["--mesh", "3,1"], "the mesh's data axis (3) must divide the batch size (128)"),
        (["--mesh", "1,3"], "the mesh's module axis (3) must divide the number of modules (10)"),
        (["--mesh", "2"], "expected DATA,MODULE"),
        (["--mesh", "2,2", "--mode", "blockwise"], "--mesh takes DATA,MODULE for --mode trunk"),
        (
            ["--pipeline", "pipelined"],
            "--pipeline pipelined places blocks on devices: it needs --mode blockwise",
        ),
        (["--pipeline", "pipelined", "--mode", "blockwise", "--devices", "3"], "3 devices cannot each hold"),
        (["--num-processes", "2"], "a multi-process run needs all three settings"),
    ],
)
def test_bad_recipe_flags_exit_with_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*flags, "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def _write_run(directory, final, best=None, epochs=2, **extra):
    directory.mkdir(parents=True)
    metrics = [{"epoch": e + 1, "test_accuracy": final if e + 1 == epochs else 0.5} for e in range(epochs)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    summary = {
        "final_test_accuracy": final, "best_test_accuracy": best or final, "best_epoch": epochs,
        "epochs": epochs, "time_per_epoch_s": 2.0, "examples_per_s": 100.0,
        "per_module_accuracy": [0.5, final], "per_module_kl": [0.9, 0.4], "num_train": 60000,
        "host": "x86_64, 2 cpus", "backend": "cpu", "device": "cpu", "jax_version": "0.0", **extra,
    }  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary))


def test_report_tables_come_from_the_result_files(tmp_path):
    results = tmp_path / "results"
    for seed, (sid, bp) in enumerate([(0.80, 0.70), (0.82, 0.74), (0.84, 0.72)]):
        _write_run(results / "label_noise" / "noise40" / "sid" / f"seed{seed}", sid)
        _write_run(results / "label_noise" / "noise40" / "bp" / f"seed{seed}", bp)
    _write_run(results / "depth" / "trunk" / "L02" / "sid" / "seed0", 0.8)
    _write_run(results / "pipeline" / "pipelined" / "seed0", 0.8)
    text = report.report(str(results), str(tmp_path / "RESULTS.md"), str(results / "plots"))
    assert "| noise40/sid | 3/3 | 82.00 ± 2.00 | 82.00 ± 2.00 | 2.0 ± 0.0 | 100 ± 0 |" in text
    assert "| noise40/bp | 3/3 | 72.00 ± 2.00 |" in text
    assert "| 40 | 82.00 ± 2.00 | 72.00 ± 2.00 | +10.00 |" in text
    assert (
        "| noise0/* (2 runs) | 0/3 | not yet run: `python experiments/run.py label_noise --only 'noise0/*'`"
        in text
    )
    assert "| cifar10/* (16 runs) | 0/1 | not yet run:" in text
    assert "| 2 | 80.00 | not yet run | 50.00 → 80.00 | 0.900 → 0.400 | 1/1 |" in text
    assert "| pipelined | 50.00 / 80.00 |" in text
    for png in ("label_noise_accuracy", "training_curves", "depth_module_kl", "depth_accuracy"):
        assert (results / "plots" / f"{png}.png").stat().st_size > 1000
    assert "](results/plots/label_noise_accuracy.png)" in text


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda s: s.pop("final_test_accuracy"), "missing field 'final_test_accuracy'"),
        (lambda s: s.update(best_epoch="two"), "field 'best_epoch' is 'two'"),
    ],
)
def test_report_names_the_file_and_field_of_a_bad_result(tmp_path, damage, message, capsys):
    run_dir = tmp_path / "results" / "alpha" / "alpha0.5" / "seed0"
    _write_run(run_dir, 0.8)
    summary = json.loads((run_dir / "summary.json").read_text())
    damage(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "R.md")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(run_dir / "summary.json") in err and message in err
    assert "\n" not in err
