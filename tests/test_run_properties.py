"""The run layer's defining properties, each against an independent computation: the labels that
reach the step, the epoch ``load_run`` restores, the epoch a validation split chooses, and the
memorisation curves."""

import dataclasses
import types

import chex
import jax
import numpy as np
import optax
import pytest
from conftest import tiny_batch, tiny_blockwise, tiny_config
from test_properties import _plan

import sidjax
from sidjax.data import epoch_order, symmetric_label_noise
from sidjax.train.members import Member, Members, seed_keys
from sidjax.train.runner import load_run, run
from sidjax.train.session import Session
from sidjax.train.summary import summarize


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
@pytest.mark.parametrize("resident", [True, False])
def test_the_labels_that_reach_the_step_are_each_seeds_noisy_labels_in_its_order(seeds, resident):
    plan, dataset = _plan(seeds=seeds if len(seeds) > 1 else seeds[0])
    seen = []
    step = plan.learner.step

    def recording(state, batch, key):  # what the compiled chunk hands the step, with the seed's key
        jax.debug.callback(lambda y, k: seen.append((np.asarray(k).tobytes(), np.asarray(y))), batch[1],
                           jax.random.key_data(key))  # fmt: skip
        return step(state, batch, key)

    plan = plan._replace(learner=plan.learner._replace(step=recording))
    plan = plan._replace(config=dataclasses.replace(plan.config, device_data_mb=1000 if resident else 0))
    session = Session(plan, dataset, Members.of_seeds(seeds))
    assert session.data.resident == resident
    session.train(epoch=1)
    jax.effects_barrier()
    for seed in seeds:
        noisy = symmetric_label_noise(dataset.train_labels, 0.3, dataset.num_classes, seed)[0][:80]
        expected = noisy[epoch_order(80, 16, seed, 1)]  # [steps, batch]: the seed's order of its noisy labels
        key = np.asarray(jax.random.key_data(seed_keys(seed)[1])).tobytes()
        found = np.stack([y for k, y in seen if k == key])
        np.testing.assert_array_equal(found, expected, err_msg=f"seed {seed} ({'resident' if resident else 'streamed'}): "
                                      "each step trains on the seed's noisy labels, in its epoch order")  # fmt: skip
    assert len(seen) == len(seeds) * 5, "every step of the epoch, for every seed"


def test_load_run_of_an_epoch_returns_that_epochs_state(tmp_path, fashion_mnist):
    out = tmp_path / "run"
    run(tiny_config(epochs=3), str(out), dataset=fashion_mnist, progress=False)
    two = run(tiny_config(epochs=2), dataset=fashion_mnist, progress=False).state  # a constant schedule
    three = run(tiny_config(epochs=3), dataset=fashion_mnist, progress=False).state
    chex.assert_trees_all_equal(load_run(str(out), epoch=2).state, two,
                                custom_message="load_run(epoch=2) restores the state after epoch 2")  # fmt: skip
    chex.assert_trees_all_equal(load_run(str(out), epoch=3).state, three,
                                custom_message="load_run(epoch=3) restores the state after epoch 3")  # fmt: skip


def test_the_best_validation_epoch_is_chosen_on_validation_alone():
    plan, _ = _plan(seeds=0)
    val, test = [0.50, 0.70, 0.60], [0.90, 0.40, 0.55]  # test accuracy would choose epoch 1
    history = [
        {"epoch": e + 1, "val_accuracy": v, "test_accuracy": t, "per_unit_accuracy": [t], "per_unit_kl": [0.0],
         "epoch_time_s": 1.0, "train_loss": 1.0, "train_ce": 1.0}
        for e, (v, t) in enumerate(zip(val, test, strict=True))
    ]  # fmt: skip
    data = types.SimpleNamespace(dataset=types.SimpleNamespace(train_labels=np.zeros(80), test_labels=np.zeros(16)),
                                 realised_noise=[0.3], resident=True)  # fmt: skip
    plan = plan._replace(config=dataclasses.replace(plan.config, epochs=3))
    session = types.SimpleNamespace(plan=plan, histories={Member(0): history}, data=data, members=Members.of_seeds((0,)), network={},
                                    compile_time=0.0)  # fmt: skip
    summary = summarize(session, Member(0))
    assert summary["best_val_epoch"] == 2, "the epoch with the highest validation accuracy"
    assert summary["test_accuracy_at_best_val"] == 0.40, (
        "that epoch's test accuracy, whatever test would choose"
    )
    assert (summary["best_epoch"], summary["best_test_accuracy"]) == (1, 0.90), "best test stays beside it"
    assert summary["final_val_accuracy"] == 0.60 and summary["final_test_accuracy"] == 0.55


def test_memorisation_curves_are_computed_from_their_definition(fashion_mnist):
    config = tiny_config(epochs=2, label_noise=0.4, validation=128, limit_train=640, seed=3)
    history = []
    result = run(config, dataset=fashion_mnist, progress=False, on_epoch=history.append)
    data = fashion_mnist.subset(640, None)
    images, clean = data.train_images[:512], data.train_labels[:512]
    noisy = symmetric_label_noise(data.train_labels, 0.4, 10, 3)[0][:512]
    predicted = sidjax.predict(result.network, result.variables, fashion_mnist.normalise(images)).argmax(-1)
    flipped = noisy != clean
    expected = {
        "train_clean_accuracy": (predicted[~flipped] == clean[~flipped]).mean(),
        "train_flipped_memorised": (predicted[flipped] == noisy[flipped]).mean(),
        "train_flipped_true": (predicted[flipped] == clean[flipped]).mean(),
    }
    for name, value in expected.items():
        assert history[-1][name] == pytest.approx(value, abs=1e-9), f"{name}: from its definition"
    assert 0.3 < flipped.mean() < 0.5, "the curves were measured on about 40 % flipped labels"


@pytest.mark.parametrize("pipelined", [False, True])
def test_per_unit_training_metrics_are_each_units_own_on_the_batch_it_saw(pipelined):
    """``unit_accuracy [K]``: unit k's accuracy on its own batch before the update, equal in every execution;
    in the pipelined schedule unit k sees step t - k's batch and counts 0 while its slot is empty."""
    network, variables = tiny_blockwise("vit_tiny", 4)
    batches, key = [tiny_batch(seed=s) for s in range(5)], jax.random.key(0)
    found = {}
    for execution in ("vmap", "sequential"):
        learner = sidjax.make_learner(network, optax.sgd(0.1), "sid", execution=execution, pipelined=pipelined,
                                      batch_size=16)  # fmt: skip
        state, found[execution] = learner.init(variables), []
        for t, batch in enumerate(batches):
            before = state.variables
            state, metrics = learner.step(state, batch, key)
            found[execution].append(metrics)
            if not pipelined:
                logits = network.apply(before, batch[0])  # [K, B, N]; no dropout in this network
                expected = (logits.argmax(-1) == batch[1][None]).mean(-1)
                np.testing.assert_allclose(metrics["unit_accuracy"], expected, atol=1e-6)
            else:
                for k in range(t + 1, network.num_units):
                    assert metrics["unit_accuracy"][k] == 0.0, f"unit {k + 1} has no batch at step {t}"
            assert metrics["unit_accuracy"][-1] == metrics["accuracy"] or (pipelined and t < 3)
    for a, b in zip(found["vmap"], found["sequential"], strict=True):
        np.testing.assert_allclose(a["unit_accuracy"], b["unit_accuracy"], atol=1e-6)
        np.testing.assert_allclose(a["unit_loss"], b["unit_loss"], rtol=1e-5)


def test_metrics_record_each_units_training_loss_and_accuracy(fashion_mnist):
    history = []
    run(tiny_config(epochs=1), dataset=fashion_mnist, progress=False, on_epoch=history.append)
    record = history[0]
    assert len(record["train_unit_loss"]) == len(record["train_unit_accuracy"]) == 3
    assert record["train_unit_accuracy"][-1] == pytest.approx(record["train_accuracy"], abs=1e-12)
    bp = []
    run(tiny_config(epochs=1, method="bp"), dataset=fashion_mnist, progress=False, on_epoch=bp.append)
    assert "train_unit_loss" not in bp[0] and len(bp[0]["train_unit_accuracy"]) == 3  # BP has one loss
