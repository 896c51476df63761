"""Nothing silently different: what runs is what was asked, what is recorded is what ran, and every new path
holds under faults (a diverging epoch, a stop at a run's last epoch or between a sweep's runs, init_from,
rows, a factory that raises)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest
from conftest import tiny_config

import sidjax
from sidjax import METHODS, ConfigError, LocalMethod, register_method
from sidjax.train.runner import RunStopped, TrainingDiverged, load_run, run

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}


def _records(out) -> tuple[dict, dict, dict]:
    return tuple(json.loads((out / name).read_text()) for name in ("config.json", "run.json", "summary.json"))


def test_a_custom_optimizer_an_alpha_schedule_and_your_rule_are_recorded_as_they_ran(fashion_mnist, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    monkeypatch.setattr(sidjax.methods, "METHODS", dict(METHODS))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.sgd)(learning_rate=0.05))
    out = tmp_path / "run"
    run(tiny_config(epochs=1), str(out), dataset=fashion_mnist, tx=tx, alpha=lambda step: 0.5 + 0 * step,
        progress=False)  # fmt: skip
    config, info, summary = _records(out)
    for record in (config, summary):
        assert record["optimizer"] == "custom" and record["lr"] is None and record["schedule"] is None
        assert record["alpha"] is None, "a schedule, not the config's 0.5"
        assert record["head"] is None, "a shared trunk has no head"
    assert info["recipe"]["tx_hyperparams"]["learning_rate"] == pytest.approx(0.05)
    assert (
        "InjectStatefulHyperparamsState" in info["recipe"]["tx_state"]
        and info["recipe"]["alpha"] == "schedule"
    )
    assert info["network"]["execution"] == "vmap" and summary["network"]["execution"] == "vmap"
    assert info["network"]["method"]["name"] == "sid" and info["network"]["alpha"] == "schedule"
    # BP reads no alpha; DGL's is 1; the resolved execution of a blockwise network is recorded
    bp = run(tiny_config(method="bp", epochs=1), dataset=fashion_mnist, progress=False).summary
    assert bp["alpha"] is None and bp["network"]["alpha"] is None and bp["network"]["execution"] == "fused"
    dgl = run(
        tiny_config(method="dgl", mode="blockwise", model="mlp4", epochs=1),
        dataset=fashion_mnist,
        progress=False,
    ).summary
    assert dgl["alpha"] == 1.0 and dgl["network"]["execution"] == "sequential" and dgl["head"] == "mlp"


def _ce(seen):
    return optax.softmax_cross_entropy_with_integer_labels(seen.logits, seen.input.labels).mean(), seen.logits


def test_a_user_rule_is_recorded_by_its_code_and_a_changed_rule_is_refused_on_load_and_resume(
    fashion_mnist, tmp_path, monkeypatch
):
    monkeypatch.setattr(sidjax.methods, "METHODS", dict(METHODS))
    rule = register_method(LocalMethod(name="ce", summary="", unit_loss=_ce, modes=("blockwise",),
                                       belief_input="none"))  # fmt: skip
    config = tiny_config(method="ce", mode="blockwise", model="mlp4", num_blocks=3, epochs=1)
    out = tmp_path / "run"
    run(config, str(out), dataset=fashion_mnist, progress=False)
    recorded = _records(out)[1]["network"]["method"]
    assert recorded["functions"]["unit_loss"] == "test_truth:_ce" and recorded == rule.identity()
    assert load_run(str(out)).summary["method"] == "ce"

    def other(seen):
        return 2.0 * _ce(seen)[0], seen.logits

    register_method(LocalMethod(name="ce", summary="", unit_loss=other, modes=("blockwise",), belief_input="none"),
                    replace=True)  # fmt: skip
    with pytest.raises(ConfigError, match="its method 'ce' is not the rule it trained") as err:
        load_run(str(out))
    assert "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="loaded with it as asked"):
        load_run(str(out), allow_changed_method=True)
    longer = tiny_config(method="ce", mode="blockwise", model="mlp4", num_blocks=3, epochs=2)
    with pytest.raises(ConfigError, match="resume it with the same rule"):
        run(longer, str(out), dataset=fashion_mnist, progress=False, resume=True)
    run(longer, str(out), dataset=fashion_mnist, progress=False, resume=True, allow_changed_method=True)


def test_register_method_refuses_a_taken_name_unless_asked(monkeypatch):
    monkeypatch.setattr(sidjax.methods, "METHODS", dict(METHODS))
    mine = LocalMethod(name="sid", summary="mine", unit_loss=_ce)
    with pytest.raises(ConfigError, match="'sid' is the built-in method"):
        register_method(mine)
    assert sidjax.methods.METHODS["sid"] is METHODS["sid"]
    assert register_method(mine, replace=True) is sidjax.methods.METHODS["sid"]


def test_an_alpha_function_in_the_config_is_one_line_naming_run():
    with pytest.raises(ConfigError, match=r"give run\(config, alpha=fn\)") as err:
        tiny_config(alpha=lambda step: 0.5)
    assert err.value.field == "alpha"


def test_a_diverging_epoch_keeps_the_last_good_checkpoint(fashion_mnist, tmp_path):
    """A step-decay schedule with a typo (x1000 after epoch 1) diverges in epoch 2; epoch 1's checkpoint,
    not a diverged state, is what load_run gives back."""
    steps = 512 // 64
    tx = optax.adam(optax.piecewise_constant_schedule(1e-3, {steps: 1e4}))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        run(tiny_config(epochs=3, checkpoint_steps=2), str(out), dataset=fashion_mnist, tx=tx, progress=False)
    loaded = load_run(str(out), tx=tx)
    assert loaded.summary["loaded_checkpoint"] == "epoch 1" and loaded.summary["test_accuracy"] > 0.5
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(loaded.state.params))


def test_a_stop_signal_during_the_last_epoch_still_stops_the_sweep(fashion_mnist, tmp_path):
    """The run finishes (its summary is written) and raises ``RunStopped``: a loop of runs stops there. The
    signal comes as epoch 1 is recorded; epoch 2, the last, is one chunk with no pause inside."""

    def stop_after_epoch_1(record):
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    config = tiny_config(epochs=2)
    with pytest.raises(RunStopped, match="during the last epoch, which finished") as err:
        run(config, str(out), dataset=fashion_mnist, progress=False, on_epoch=stop_after_epoch_1)
    assert err.value.code == 128 + signal.SIGTERM and (out / "summary.json").exists()
    assert run(config, str(out), dataset=fashion_mnist, progress=False, resume=True).summary["epochs"] == 2


def test_a_sweep_stopped_between_runs_exits_with_the_signal_and_continues(tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "experiments.run", "comparison", "--smoke", "--only", "mlp_trunk/*",
               "--results", str(results)]  # fmt: skip
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    deadline = time.time() + 240
    while not list(results.glob("comparison/*/*/grid/selection.json")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert (
        "stopped by SIGTERM" in stderr
        and "run the same command again" in stderr
        and "Traceback" not in stderr
    )
    again = subprocess.run(command, env=ENV, capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    assert again.returncode == 0, again.stderr
    # the smoke's mlp_trunk runs (noprop and the linear floor), two seeds each
    assert len(list(results.glob("comparison/mlp_trunk/*/seed*/summary.json"))) == 2 * 2


def test_init_from_its_own_directory_is_refused_and_a_relative_one_is_recorded_absolute(
    fashion_mnist, tmp_path, monkeypatch
):
    source = tmp_path / "source"
    run(tiny_config(epochs=1), str(source), dataset=fashion_mnist, progress=False)
    readout = tiny_config(method="readout", init_from=str(source), epochs=1)
    with pytest.raises(ConfigError, match="is this run's own directory"):
        run(readout, str(source), dataset=fashion_mnist, progress=False, overwrite=True)
    assert load_run(str(source)).summary["method"] == "sid", "the source is untouched"
    monkeypatch.chdir(tmp_path)
    run(
        tiny_config(method="readout", init_from="source", epochs=1),
        "probe",
        dataset=fashion_mnist,
        progress=False,
    )
    recorded = json.loads((tmp_path / "probe" / "config.json").read_text())["init_from"]
    assert recorded == str(source)
    monkeypatch.chdir("/")
    assert load_run(str(tmp_path / "probe")).summary["epochs"] == 1, "loads from another working directory"


def test_a_replaced_init_from_run_is_refused_naming_init_from(fashion_mnist, tmp_path):
    source, probe = tmp_path / "source", tmp_path / "probe"
    run(tiny_config(epochs=1), str(source), dataset=fashion_mnist, progress=False)
    readout = tiny_config(method="readout", init_from=str(source), epochs=1)
    run(readout, str(probe), dataset=fashion_mnist, progress=False)
    run(
        tiny_config(epochs=1, num_modules=2),
        str(source),
        dataset=fashion_mnist,
        progress=False,
        overwrite=True,
    )
    for attempt in (lambda: load_run(str(probe)),
                    lambda: run(tiny_config(method="readout", init_from=str(source), epochs=2), str(probe),
                                dataset=fashion_mnist, progress=False, resume=True)):  # fmt: skip
        with pytest.raises(ConfigError, match="started from init_from .* which now holds another network"):
            attempt()


def test_rows_need_finite_float32_values_an_mlp_and_resume_on_the_same_data(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 12)), rng.integers(0, 3, 256)
    huge = x.copy()
    huge[3, 0] = 1e300
    with pytest.raises(ConfigError, match="beyond float32's range"):
        sidjax.Dataset.from_arrays(huge, y, x[:64], y[:64], name="rows")
    rows = sidjax.Dataset.from_arrays(x, y, x[:64], y[:64], name="rows")
    with pytest.raises(
        ConfigError, match="takes images .* rows of 12 features: use model mlp or mlp4"
    ) as err:
        run(sidjax.TrainConfig(dataset="rows", epochs=1, batch_size=32), dataset=rows, progress=False)
    assert "\n" not in str(err.value)
    config = sidjax.TrainConfig(
        dataset="rows", model="mlp", num_modules=2, epochs=1, batch_size=32, tiny=True
    )
    run(config, str(tmp_path / "run"), dataset=rows, progress=False)
    other = sidjax.Dataset.from_arrays(x[::-1].copy(), y[::-1].copy(), x[:64], y[:64], name="rows")
    longer = sidjax.TrainConfig(
        dataset="rows", model="mlp", num_modules=2, epochs=2, batch_size=32, tiny=True
    )
    with pytest.raises(ConfigError, match="trained on other data"):
        run(longer, str(tmp_path / "run"), dataset=other, progress=False, resume=True)
    assert (
        run(longer, str(tmp_path / "run"), dataset=rows, progress=False, resume=True).summary["epochs"] == 2
    )


FACTORIES = {
    "raises.py": "def factory(key):\n    raise RuntimeError('no such layer')\n",
    "broken.py": "def factory(key)\n    return None\n",
}


@pytest.mark.parametrize(("module", "words"), [("raises", "factory raised RuntimeError: no such layer"),
                                                ("broken", "cannot import it (SyntaxError")])  # fmt: skip
def test_a_model_factory_that_raises_or_does_not_parse_is_one_line(tmp_path, module, words):
    (tmp_path / f"{module}.py").write_text(FACTORIES[f"{module}.py"])
    done = subprocess.run([sys.executable, "-m", "sidjax", "train", "--model", f"{module}:factory", "--epochs", "1",
                           "--limit-train", "256", "--no-progress"], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_method_named_on_the_command_line_imports_from_the_working_directory(tmp_path):
    (tmp_path / "rules.py").write_text(
        "import optax\nfrom sidjax import LocalMethod\n\n"
        "def ce(seen):\n    return optax.softmax_cross_entropy_with_integer_labels(seen.logits, seen.input.labels)"
        ".mean(), seen.logits\n\n"
        "rule = LocalMethod(name='rule', summary='', unit_loss=ce, modes=('blockwise',), belief_input='none')\n"
    )
    flags = ["--method", "rules:rule", "--mode", "blockwise", "--model", "mlp4", "--tiny", "--epochs", "1",
             "--limit-train", "256", "--limit-test", "64", "--no-progress", "--out", "run"]  # fmt: skip
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"} | {
        "PYTHONPATH": os.environ.get("PYTHONPATH", "")
    }
    done = subprocess.run([sys.executable, "-m", "sidjax", "train", *flags], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["method"] == "rules:rule"


def test_a_run_records_the_commit_it_started_from_and_flags_a_checkout_that_moved(fashion_mnist, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    import sidjax.train.rundir as rundir
    import sidjax.train.summary as summary_module

    def at(commit):
        return lambda: {
            "sidjax_version": "x",
            "git_commit": commit,
            "git_modified": False,
            "git_modified_paths": [],
        }

    monkeypatch.setattr(rundir, "provenance", at("a" * 40))  # run.json: where it started
    monkeypatch.setattr(summary_module, "provenance", at("b" * 40))  # the checkout when it ended
    summary = run(tiny_config(epochs=1), str(tmp_path / "run"), dataset=fashion_mnist, progress=False).summary
    assert summary["git_commit"] == "a" * 40 and summary["git_commit_changed"] is True
    assert summary["git_commits"] == ["a" * 40, "b" * 40]
    monkeypatch.setattr(summary_module, "provenance", at("a" * 40))
    same = run(tiny_config(epochs=1), str(tmp_path / "same"), dataset=fashion_mnist, progress=False).summary
    assert same["git_commit_changed"] is False and "git_commits" not in same


def test_compare_reports_each_method_at_its_chosen_point_with_paired_intervals(tmp_path, capsys):
    from sidjax.train import cli

    out = tmp_path / "compare"
    summaries = cli.compare(["--methods", "sid,bp", "--model", "mlp", "--num-modules", "2", "--tiny", "--epochs",
                             "2", "--limit-train", "768", "--limit-test", "128", "--validation", "256", "--batch-size",
                             "64", "--lr", "1e-3,3e-3", "--seeds", "0,1", "--select-seeds", "100", "--late-epochs",
                             "2", "--no-progress", "--out", str(out)])  # fmt: skip
    table = (out / "comparison.md").read_text()
    assert "| sid | lr " in table and "| bp | lr " in table and "− sid, late (points)" in table
    for method in ("sid", "bp"):
        chosen = json.loads((out / method / "grid" / "selection.json").read_text())["chosen"]["point"]["lr"]
        assert [s["lr"] for s in summaries[method]] == [chosen, chosen], "the seeds train at the chosen point"
        assert sorted(p.name for p in (out / method).glob("seed*")) == ["seed0", "seed1"]
    diffs = [100 * (b["late_test_accuracy"] - s["late_test_accuracy"])
             for s, b in zip(summaries["sid"], summaries["bp"], strict=True)]  # fmt: skip
    assert f"{np.mean(diffs):+.2f} ± {np.std(diffs, ddof=1):.2f} [" in table
