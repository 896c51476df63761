"""Experiment configs, the sweep runner (seeds together), and the report."""

import dataclasses
import json

import pytest

from experiments import configs, report
from experiments import run as runner
from sidjax import TrainConfig
from sidjax.data import DatasetUnavailableError
from sidjax.train.plan import make_plan


@pytest.mark.parametrize("name", configs.NAMES)
def test_config_documents_itself_and_plans_without_data(name):
    experiment = configs.load(name)
    for line in ("Command:", "Hardware:", "Expected"):
        assert line in experiment.doc, f"{name}'s docstring lacks {line!r}"
    for config in experiment.runs.values():
        if not config.dataset.startswith("cifar"):  # CIFAR's plan is the same; its data is not here
            make_plan(config)
    assert experiment.smoke().runs, "the smoke variant keeps no run"


@pytest.mark.parametrize("name", configs.NAMES)
def test_smoke_variant_runs_end_to_end_on_real_data(name, fashion_mnist, tmp_path):
    smoke = configs.load(name).smoke()
    summaries, failures = runner.run_experiment(
        smoke, str(tmp_path), datasets={"fashion_mnist": fashion_mnist}
    )
    assert not failures
    assert set(summaries) == {(run_name, seed) for run_name in smoke.runs for seed in smoke.seeds}
    for (run_name, seed), summary in summaries.items():
        written = json.loads((tmp_path / name / run_name / f"seed{seed}" / "summary.json").read_text())
        assert written == summary and written["seed"] == seed
        assert written["seeds_trained_together"] == len(smoke.seeds)
    # Running again skips the finished runs: the same summaries, read back.
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
    assert failures == ["two/cifar: cifar10 cannot be downloaded here"]
    assert list(summaries) == [("fm", 0)] and (tmp_path / "two" / "fm" / "seed0" / "summary.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["label_noise", "--only", "nothing*"])
    assert exit_info.value.code == 2
    assert "--only 'nothing*' matches none of label_noise's runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.main(["no_such_experiment"])
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err


def test_optimizer_recipes():
    sgd = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="cosine").optimizer_tx(100)
    import jax.numpy as jnp

    params = {"w": jnp.ones(3)}
    updates, _ = sgd.update({"w": jnp.zeros(3)}, sgd.init(params), params)
    assert jnp.allclose(updates["w"], -0.1 * 5e-4)  # L2 decay alone, at the full learning rate
    adamw = TrainConfig(weight_decay=0.1).optimizer_tx(10)
    updates, _ = adamw.update({"w": jnp.zeros(3)}, adamw.init(params), params)
    assert jnp.allclose(updates["w"], -1e-3 * 0.1)  # decoupled decay: lr * wd * w
    assert TrainConfig(alpha=(0.9, 0.5, 0.1), num_modules=3).loss().alphas(3).tolist() == pytest.approx(
        [0.9, 0.5, 0.1]
    )


def _write_run(directory, final, best=None, epochs=2, **extra):
    directory.mkdir(parents=True)
    metrics = [{"epoch": e + 1, "test_accuracy": final if e + 1 == epochs else 0.5} for e in range(epochs)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    summary = {
        "final_test_accuracy": final, "best_test_accuracy": best or final, "best_epoch": epochs,
        "epochs": epochs, "time_per_epoch_s": 2.0, "examples_per_s": 100.0,
        "per_unit_accuracy": [0.5, final], "per_unit_kl": [0.9, 0.4], "num_train": 60000,
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
    assert "| noise40/sid | 3/3 | 82.00 ± 2.00 | 82.00 ± 2.00 | 2.0 | 100 |" in text
    assert "| noise40/bp | 3/3 | 72.00 ± 2.00 |" in text
    assert "| 40 | 82.00 ± 2.00 | 72.00 ± 2.00 | +10.00 |" in text
    assert (
        "| noise0/* (2 runs) | 0/3 | not yet run: `python -m experiments.run label_noise --only 'noise0/*'`"
        in text
    )
    assert "| cifar10/* (16 runs) | 0/2 | not yet run:" in text
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
