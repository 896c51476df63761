"""Grids of hyperparameters trained beside the seeds in one program, and the choice on validation."""

import dataclasses
import json

import chex
import jax
import numpy as np
import optax
import pytest
from conftest import records, tiny_config

from sidjax import ConfigError
from sidjax.train import cli
from sidjax.train.config import TrainConfig
from sidjax.train.members import Member
from sidjax.train.runner import load_run, run
from sidjax.train.selection import choose, read_selection


def _without_times(history):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in history]


@pytest.mark.parametrize(
    ("model", "grid"),
    [
        ("mlp", {"lr": (1e-3, 3e-3)}),  # vmapped members: float32 round-off
        ("simplecnn", {"lr": (1e-3, 3e-3)}),  # convolutions on CPU unroll their members: bit for bit
        ("mlp", {"optimizer": "sgd", "lr": (0.01, 0.02), "weight_decay": (0.0, 1e-3)}),
    ],
)
def test_each_grid_point_equals_that_point_trained_alone(fashion_mnist, tmp_path, model, grid):
    """Vmapped members reduce their batched matmuls in another order than one run does (round-off of
    3e-8 after one epoch here); a steep SGD step can grow that (at lr 0.05 one member of eight drifted
    to 2e-4 in 8 steps, the same member in a grid of two was exact), so the dense grids step gently.
    Unrolled members (convolutions on CPU) take exactly the steps of their point alone."""
    mode = {"mode": "blockwise", "num_blocks": 2} if model == "simplecnn" else {}
    config = tiny_config(model=model, seed=(0, 1), epochs=2 if model == "mlp" else 1, **mode, **grid)
    exact = model == "simplecnn"
    together = run(config, str(tmp_path / "grid"), dataset=fashion_mnist, progress=False)
    assert len(together) == len(config.points()) * 2
    for result in together:
        s = result.summary
        member = config.for_point(tuple((k, s[k]) for k in config.grid)).for_seed(s["seed"])
        alone = run(member, dataset=fashion_mnist, progress=False)
        assert not isinstance(s["lr"], list) and s["lr"] == member.lr, "each member records its own values"
        found, expected = _without_times([s]), _without_times([alone.summary])
        if exact:
            chex.assert_trees_all_equal(result.state.params, alone.state.params)
            assert s["per_unit_kl"] == alone.summary["per_unit_kl"]
        else:
            chex.assert_trees_all_close(result.state.params, alone.state.params, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(s["per_unit_kl"], alone.summary["per_unit_kl"], rtol=1e-4)
        assert abs(found[0]["final_test_accuracy"] - expected[0]["final_test_accuracy"]) <= 1 / 256
    first = [r.summary["per_unit_kl"] for r in together]
    assert first[0] != first[2], "the points really differ"


def test_the_command_line_grid_writes_one_directory_per_point_and_seed_and_each_resumes(
    tmp_path, fashion_mnist
):
    out = tmp_path / "grid"
    flags = ["--model", "mlp", "--num-modules", "2", "--tiny", "--lr", "1e-4,1e-3", "--seeds", "0,1",
             "--epochs", "2", "--limit-train", "768", "--limit-test", "128", "--validation", "256",
             "--batch-size", "64", "--late-epochs", "2", "--no-progress", "--out", str(out)]  # fmt: skip
    summaries = cli.train(flags)
    dirs = sorted(str(p.parent.relative_to(out)) for p in out.glob("*/*/summary.json"))
    assert dirs == ["lr0.0001/seed0", "lr0.0001/seed1", "lr0.001/seed0", "lr0.001/seed1"]
    for s in summaries:
        written = json.loads((out / f"lr{s['lr']:g}" / f"seed{s['seed']}" / "summary.json").read_text())
        assert written == s and written["lr"] in (1e-4, 1e-3)
        assert written["late_val_accuracy"] == pytest.approx(
            np.mean(
                [
                    r["val_accuracy"]
                    for r in records(out / f"lr{s['lr']:g}" / f"seed{s['seed']}" / "metrics.jsonl")
                ]
            )
        )
    # Each resumes: three epochs continue every member from its own checkpoint to a longer run's numbers.
    longer = cli.train([*flags[:flags.index("--epochs")], "--epochs", "3",
                        *flags[flags.index("--epochs") + 2:], "--resume"])  # fmt: skip
    whole = run(cli.config_from_args(cli.build_parser().parse_args([*flags[:-2], "--epochs", "3"])),
                dataset=fashion_mnist, progress=False)  # fmt: skip
    for resumed, fresh in zip(longer, whole, strict=True):
        np.testing.assert_allclose(resumed["per_unit_kl"], fresh.summary["per_unit_kl"], rtol=1e-5)
    loaded = load_run(str(out / "lr0.001" / "seed1"))
    assert loaded.summary["lr"] == 1e-3 and loaded.summary["epochs"] == 3
    hyperparams = loaded.state.parts.stem.opt_state.hyperparams
    assert float(hyperparams["learning_rate"]) == pytest.approx(1e-3), "the state holds its point's value"
    assert read_selection(str(out))["chosen"]["name"] in ("lr0.0001", "lr0.001")


def test_a_point_that_diverges_is_recorded_and_the_grid_goes_on(fashion_mnist, tmp_path):
    config = tiny_config(lr=(1e-3, 1e3), validation=128, epochs=2)
    results = run(config, str(tmp_path), dataset=fashion_mnist, progress=False)
    fine, diverged = (r.summary for r in results)
    assert "diverged_in_epoch" not in fine and fine["final_test_accuracy"] > 0.5
    assert diverged["diverged_in_epoch"] == 1
    record = read_selection(str(tmp_path))
    assert record["chosen"]["name"] == "lr0.001"
    assert [p["diverged"] for p in record["points"]] == [False, True], (
        "the diverged point stays in the record"
    )


def test_the_point_is_chosen_on_late_validation_accuracy_never_on_test():
    config = TrainConfig(lr=(1e-4, 1e-3), seed=(0, 1), validation=100, epochs=3, late_epochs=2)
    curves = {  # (validation, test) per epoch: test would choose lr 1e-4, validation chooses 1e-3
        Member(0, (("lr", 1e-4),)): ([0.9, 0.5, 0.5], [0.9, 0.9, 0.9]),
        Member(1, (("lr", 1e-4),)): ([0.9, 0.5, 0.6], [0.9, 0.9, 0.9]),
        Member(0, (("lr", 1e-3),)): ([0.1, 0.7, 0.7], [0.1, 0.2, 0.3]),
        Member(1, (("lr", 1e-3),)): ([0.1, 0.6, 0.6], [0.1, 0.2, 0.4]),
    }
    histories = {m: [{"epoch": e + 1, "val_accuracy": v, "test_accuracy": t} for e, (v, t) in enumerate(zip(*c, strict=True))]
                 for m, c in curves.items()}  # fmt: skip
    record = choose(config, histories, dict.fromkeys(histories))
    assert record["chosen"]["name"] == "lr0.001"
    assert record["chosen"]["late_val_accuracy"] == pytest.approx(0.65), "the last 2 epochs, then the seeds"
    assert [t["final_test_accuracy"] for t in record["chosen"]["test"]] == [0.3, 0.4]
    assert (
        "lr0.001" not in record["appendix_test_accuracy"] and "lr0.0001" in record["appendix_test_accuracy"]
    )
    assert record["points"][0]["seeds"][1]["val_curve"] == [0.9, 0.5, 0.6]
    with pytest.raises(ConfigError, match="validation split"):
        choose(dataclasses.replace(config, validation=0), histories, dict.fromkeys(histories))


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"lr": (1e-3, 1e-3)}, "lr", "lr must be one number or distinct numbers"),
        ({"lr": (1e-3, -1.0)}, "lr", "each of the grid"),
        ({"weight_decay": ()}, "weight_decay", "one number or distinct numbers"),
        ({"lr": (1e-3, 1e-4), "placement": "mesh:1,1"}, "seed", "seeds or grid points"),
    ],
)
def test_a_bad_grid_is_one_line_naming_its_field(change, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        tiny_config(**change)
    assert err.value.field == field


def test_a_grid_with_your_own_optimizer_is_refused(fashion_mnist):
    with pytest.raises(ConfigError, match="your own tx holds its own") as err:
        run(tiny_config(lr=(1e-3, 1e-4)), dataset=fashion_mnist, tx=optax.adam(1e-3), progress=False)
    assert err.value.field == "lr"


def test_an_injected_optimizer_steps_as_the_plain_one():
    params = {"w": jax.random.normal(jax.random.key(0), (5, 3))}
    grads = {"w": jax.random.normal(jax.random.key(1), (5, 3))}
    for config in (TrainConfig(lr=3e-4), TrainConfig(optimizer="sgd", lr=0.1, weight_decay=1e-3, schedule="cosine"),
                   TrainConfig(weight_decay=0.01)):  # fmt: skip
        plain, injected = config.optimizer_tx(10), config.optimizer_tx(10, ("lr", "weight_decay"))
        a, b = plain.init(params), injected.init(params)
        for _ in range(3):
            ua, a = plain.update(grads, a, params)
            ub, b = injected.update(grads, b, params)
            chex.assert_trees_all_equal(ua, ub)
