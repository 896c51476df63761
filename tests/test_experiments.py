"""Experiment configs, the sweep runner (seeds together), and the report."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import configs, report
from experiments import run as runner
from experiments.lenet import lenet, lenet_random_convolutions
from sidjax import METHODS, TrainConfig
from sidjax.data import DatasetUnavailableError
from sidjax.train.cli import own_model
from sidjax.train.plan import make_plan


@pytest.mark.parametrize("name", configs.NAMES)
def test_config_documents_itself_and_plans_without_data(name):
    experiment = configs.load(name)
    for line in ("Command:", "Hardware:", "Expected"):
        assert line in experiment.doc, f"{name}'s docstring lacks {line!r}"
    for config in experiment.runs.values():
        # CIFAR's plan is the same; its data is not here. A run that starts from another's trained network
        # (init_from) plans once that one has trained: the smoke variant runs both.
        if not config.dataset.startswith("cifar") and config.init_from is None:
            make_plan(config, model=own_model(config))
    assert experiment.smoke().runs, "the smoke variant keeps no run"


def test_lenet_with_random_convolutions_trains_only_its_dense_layers():
    def arrays(tree):
        return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    _, usual = lenet(jax.random.key(3))
    _, fixed = lenet_random_convolutions(jax.random.key(3))
    assert all("['head']['fc" in p for p in arrays(fixed.params)), "a convolution reaches the optimizer"
    # fc1 and fc2 learn; conv1..3 are held (a kernel and a bias each).
    assert len(arrays(fixed.params)) == 4 and len(arrays(fixed.stats)) == 6
    # The same initial network: the convolutions, as drawn, sit with the stats.
    same, held = arrays(usual.params), {**arrays(fixed.params), **arrays(fixed.stats)}
    assert held.keys() == same.keys() and all(np.array_equal(held[p], same[p]) for p in same)


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


def _write_run(directory, final, best=None, epochs=2, memorised=None, last=None, **extra):
    directory.mkdir(parents=True)
    metrics = [{"epoch": e + 1, "test_accuracy": final if e + 1 == epochs else 0.5} for e in range(epochs)]
    metrics[-1].update(last or {})
    for record, value in zip(metrics, memorised or [], strict=False):
        record["train_flipped_memorised"] = value
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
    _write_run(results / "depth" / "trunk" / "L02" / "sid" / "seed0", 0.8, git_commit="abcdef0123",
               git_modified=True, git_modified_paths=["experiments/configs/depth.py"],
               last={"train_unit_accuracy": [0.6, 0.95]})  # fmt: skip
    _write_run(results / "pipeline" / "pipelined" / "seed0", 0.8, git_commit="0123456789", git_modified=False)
    text = report.report(str(results), str(tmp_path / "RESULTS.md"), str(results / "plots"))
    # late mean: the last 2 epochs of a 2-epoch run, (0.5 + final) / 2; no commit recorded: "none"
    assert (
        "| noise40/sid | 3/3 | 82.00 ± 2.00 | 66.00 ± 1.00 | 82.00 ± 2.00 | 2.0 | 100 | none (no provenance) |"
        in text
    )
    assert "| trunk/L02/sid | 1/2 | 80.00 | 65.00 | 80.00 | 2.0 | 100 | abcdef0* |" in text  # a modified tree
    assert (
        "| pipelined | 1/1 | 80.00 | 65.00 | 80.00 | 2.0 | 100 | 0123456† |" in text
    )  # compared sidjax/ only
    assert "| noise40/bp | 3/3 | 72.00 ± 2.00 |" in text
    assert "| 40 | 82.00 ± 2.00 | 72.00 ± 2.00 | +10.00 |" in text
    assert (
        "| noise0/* (2 runs) | 0/3 | not yet run: `python -m experiments.run label_noise --only 'noise0/*'`"
        in text
    )
    assert "| cifar10/* (16 runs) | 0/2 | not yet run:" in text
    assert "| 2 | 80.00 | not yet run | 50.00 → 80.00 | 0.900 → 0.400 | 1/1 |" in text
    assert "| pipelined | 50.00 / 80.00 |" in text
    assert "![per-module training and test accuracy](results/plots/depth_module_train_test.png)" in text
    for png in (
        "label_noise_accuracy",
        "training_curves",
        "depth_module_kl",
        "depth_accuracy",
        "depth_module_train_test",
    ):
        assert (results / "plots" / f"{png}.png").stat().st_size > 1000
    assert "](results/plots/label_noise_accuracy.png)" in text


def test_the_memorisation_report_pairs_seeds_and_states_what_it_found(tmp_path):
    results = tmp_path / "results" / "label_noise" / "memorise" / "noise40"
    finals = {
        "sid_a0.5": (0.60, 0.62),
        "bp": (0.55, 0.56),
        "bp_ls0.5": (0.58, 0.57),
        "bp_ls0.1": (0.61, 0.61),
    }
    for method, values in finals.items():
        for seed, final in enumerate(values):
            late = method == "sid_a0.5"  # SID passes half of the flipped labels at epoch 3, BP at epoch 2
            _write_run(results / method / f"seed{seed}", final, best=0.8, epochs=3,
                       memorised=[0.1, 0.3 if late else 0.6, 0.9], test_accuracy_at_best_val=0.79)  # fmt: skip
    text = report.report(str(tmp_path / "results"), str(tmp_path / "RESULTS.md"), str(tmp_path / "plots"))
    # late mean over the last 3 epochs (0.5, 0.5, final): 53.33 and 54.00
    assert (
        "| 40 | sid_a0.5 | 61.00 ± 1.41 | 53.67 ± 0.47 | 80.00 ± 0.00 | 19.00 ± 1.41 | 79.00 ± 0.00 | 90.00 ± 0.00 | "
        "3.0 ± 0.0 |" in text
    )
    # per seed: 5, 6; 2, 5; -1, 1. Two seeds: t(0.975, 1) = 12.706, half-width 12.706 * std / sqrt(2)
    assert (
        "| 40 | +5.50 ± 0.71 [-0.85, +11.85] | +3.50 ± 2.12 [-15.56, +22.56] | +0.00 ± 1.41 [-12.71, +12.71] | — |"
        in text
    )
    assert "SID (alpha 0.5) ends at 61.00 % against BP's 55.50 % (paired SID − BP +5.50 ± 0.71 [-0.85, +11.85] " \
        "points at the final epoch" in text  # fmt: skip
    assert "SID at least 3 points above BP: at the final epoch it is undecided (the 95 % interval [-0.85, " \
        "+11.85] contains 3)" in text, "the words follow the interval, not the mean"  # fmt: skip
    assert "0.5 ends at 57.50 % (SID − it +3.50 ± 2.12 [-15.56, +22.56])" in text
    assert "at epoch 3 on average, BP at 2 (1 epochs later)" in text
    for png in ("label_noise_memorise_test", "label_noise_memorise_flipped"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000


def test_the_comparison_judges_each_method_against_the_floor_and_sid_in_the_late_window(tmp_path):
    results = tmp_path / "results" / "comparison" / "mlp4_blockwise"
    # (final test, late validation) per seed; the floor's late validation is 0.84 at every seed
    runs = {"sid": [(0.89, 0.88), (0.90, 0.89), (0.88, 0.87)], "fa": [(0.85, 0.86), (0.86, 0.86), (0.84, 0.86)],
            "ff": [(0.80, 0.83), (0.81, 0.83), (0.82, 0.83)], "linear": [(0.84, 0.84)] * 3}  # fmt: skip
    for method, seeds in runs.items():
        for seed, (final, val) in enumerate(seeds):
            _write_run(results / method / f"seed{seed}", final, epochs=3, late_val_accuracy=val)
    text = report.report(str(tmp_path / "results"), str(tmp_path / "RESULTS.md"), str(tmp_path / "plots"))
    # late test: the last 3 epochs (0.5, 0.5, final); SID - FA per seed 4/3 points. FA's validation beats
    # the floor's by 2 points at every seed, FF's is 1 point below it.
    assert ("| mlp4_blockwise | fa | — | 85.00 ± 1.00 | 61.67 ± 0.33 | 86.00 ± 0.00 | yes | "
            "+1.33 ± 0.00 [+1.33, +1.33] |") in text  # fmt: skip
    assert "| mlp4_blockwise | ff | — | 81.00 ± 1.00 | 60.33 ± 0.33 | 83.00 ± 0.00 | no |" in text
    assert ("- mlp4_blockwise: SID against feedback alignment: not reproduced as strong: SID ahead, by less "
            "than 3 points.") in text  # fmt: skip
    assert "SID against Forward-Forward: not comparable (ff is not above the floor on validation)." in text
    assert "| mlp4_blockwise | linear | — | 84.00 ± 0.00 |" in text
    assert "| mlp4_blockwise | dgl | not yet run |" in text


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


def test_the_heads_report_pairs_seeds_and_checks_the_goals_with_the_validation_choice(tmp_path):
    results = tmp_path / "results" / "blockwise_heads"
    finals = {  # (final test, final validation) per seed
        "mlp/sid": [(0.80, 0.70), (0.82, 0.70)], "mlp/dgl": [(0.81, 0.7), (0.81, 0.7)],
        "mlp/bp": [(0.83, 0.7), (0.83, 0.7)], "dgl/sid": [(0.84, 0.90), (0.86, 0.90)],
        "dgl/dgl": [(0.83, 0.8), (0.84, 0.8)], "dgl/bp": [(0.85, 0.8), (0.86, 0.8)],
    }  # fmt: skip
    for name, values in finals.items():
        for seed, (final, val) in enumerate(values):
            _write_run(
                results / name / f"seed{seed}", final, final_val_accuracy=val, test_accuracy_at_best_val=final
            )
    text = report.report(str(tmp_path / "results"), str(tmp_path / "RESULTS.md"), str(tmp_path / "plots"))
    assert "| dgl | sid | 85.00 ± 1.41 | 67.50 ± 0.71 | 85.00 ± 1.41 | 90.00 ± 0.00 | 50.0 / 85.0 |" in text
    assert "| dgl | final | +1.50 ± 0.71 [-4.85, +7.85] | -0.50 ± 0.71 [-6.85, +5.85] |" in text
    assert "The validation split prefers the 'dgl' head for SID (of mlp, dgl)" in text  # 90 % against 70 %
    # 85 vs 83.5 and 85.5 on the means, but two seeds: the intervals decide nothing
    assert (
        "SID ≥ DGL: at the final epoch it is undecided (the 95 % interval [-4.85, +7.85] contains 0)" in text
    )
    assert (
        "SID ≥ BP − 0.5: at the final epoch it is undecided (the 95 % interval [-6.85, +5.85] contains -0.5)"
        in text
    )
    assert "The SID setting that ends highest is 'dgl/sid' at 85.00 %" in text
    for png in ("blockwise_heads_test", "blockwise_heads_blocks"):
        assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000


def test_a_run_from_a_tree_with_an_edited_experiment_file_is_recorded_as_modified(tmp_path):
    """Provenance covers the whole repository, not sidjax/ alone: an edited config changes what a run means."""
    repo, root = tmp_path / "repo", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for part in ("sidjax", "experiments"):
        shutil.copytree(os.path.join(root, part), repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    train = [sys.executable, "-m", "sidjax", "train", "--model", "mlp", "--num-modules", "2", "--epochs", "1",
             "--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo), "XLA_FLAGS": ""}
    show = "import json; from sidjax.train.rundir import provenance; print(json.dumps(provenance()))"
    clean = json.loads(subprocess.run([sys.executable, "-c", show], cwd=repo, env=env, check=True,
                                      capture_output=True, text=True).stdout)  # fmt: skip
    assert (clean["git_commit"], clean["git_modified"], clean["git_modified_paths"]) == (commit, False, [])
    with open(repo / "experiments" / "configs" / "alpha.py", "a") as f:
        f.write("\n# an edit that a result would otherwise hide\n")
    subprocess.run(
        [*train, "--out", str(tmp_path / "edited")], cwd=repo, env=env, check=True, capture_output=True
    )
    for record in ("run.json", "summary.json"):
        found = json.loads((tmp_path / "edited" / record).read_text())
        assert found["git_commit"] == commit, f"{record}: the run ran from the copied tree"
        assert found["git_modified"] is True, f"{record}: an edited experiments/ file makes the tree modified"
        assert found["git_modified_paths"] == ["experiments/configs/alpha.py"], found


def test_a_verdict_follows_the_95_percent_interval_of_the_paired_differences():
    mean, low, high = report.interval(
        [1.0, 2.0, 3.0]
    )  # std 1, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3)
    assert (mean, round(low, 3), round(high, 3)) == (2.0, -0.484, 4.484)
    assert report.verdict([5.0, 5.1, 4.9], 3.0).startswith(
        "holds (the 95 % interval [+4.75, +5.25] lies above 3)"
    )
    assert report.verdict([0.0, 0.1, -0.1], 3.0).startswith("does not hold")
    assert (
        report.verdict([1.0, 2.0, 3.0], 0.0) == "is undecided (the 95 % interval [-0.48, +4.48] contains 0)"
    )
    assert report.verdict([4.0], 0.0) == "cannot be judged from one seed"


FLOORS = {"linear": "bp"}  # a run named for what it is, not its method: the linear floor trains by backprop


@pytest.mark.parametrize("name", configs.NAMES)
def test_every_run_trains_the_method_its_name_says(name):
    """A run whose name names a method (``lenet/bp``, ``noise40/bp_ls0.5``) trains that method; a floor trains
    by backprop; a run that names none (``alpha0.3``) is SID's. LeNet's BP once trained SID unnoticed."""
    wrong = []
    for run_name, config in configs.load(name).runs.items():
        parts = run_name.split("/")
        per_part = [[m for m in METHODS if part == m or part.startswith(f"{m}_")] for part in parts]
        named = [
            max(found, key=len) for found in per_part if found
        ]  # the last one names it ("dgl/sid": heads)
        expected = named[-1] if named else FLOORS.get(parts[-1], "sid")
        if config.method != expected:
            wrong.append(f"{run_name}: trains {config.method}, its name says {expected}")
    assert wrong == []
