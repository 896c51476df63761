"""Your own recipe through ``run``: any optax optimizer, alpha as a schedule or per unit of the model given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    count_compiles,
    records,
    tiny_batch,
    tiny_blockwise,
    tiny_config,
    tiny_network,
    tree_max_abs,
)
from flax import nnx

import sidjax
from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.train.config import TrainConfig
from sidjax.train.runner import RunInterrupted


def warmup_cosine(total_steps: int) -> optax.GradientTransformation:
    """A recipe of one's own: clipping, then Adam with a linear warm-up and a cosine decay over the run."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 5, total_steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def four_units(key):
    """Your own shared trunk: a dense extractor with dropout and 4 belief modules."""
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    extractor = nnx.Sequential(lambda x: x.reshape(len(x), -1), nnx.Linear(784, 32, rngs=rngs), jax.nn.relu,
                               nnx.Dropout(0.1, rngs=rngs))  # fmt: skip
    return sidjax.trunk(extractor, num_classes=10, input_shape=(28, 28, 1), num_modules=4, key=key,
                        module_hidden=32, name="four_units")  # fmt: skip


def per_unit_warmup(step):
    """Each of the 4 units its own alpha, all warming up together: ``[4]``."""
    return jnp.minimum(0.8, 0.3 + step / 40) * jnp.asarray([1.0, 0.9, 0.8, 0.7])


def alpha_warmup(step):
    """alpha from 0.3 up to 0.8 over the first 20 steps: a traced function of the step."""
    return jnp.minimum(0.8, 0.3 + step / 40)


# --- alpha as a schedule, in every execution and placement ---


def _steps(learner, state, batches, key):
    for batch in batches:
        state, _ = learner.step(state, batch, key)
    return learner.gather(state)


@pytest.mark.parametrize(
    "execution, pipelined, placement",
    [
        ("vmap", False, "single"),
        ("fused", False, "single"),
        ("sequential", False, "single"),
        ("vmap", True, "single"),
        ("sequential", False, "stages:1"),
    ],  # fmt: skip
)
def test_a_scheduled_alpha_equals_its_value_fixed_at_each_step(execution, pipelined, placement):
    blockwise = pipelined or execution == "sequential" or placement != "single"
    model = "vit_tiny" if pipelined else "simplecnn"  # the pipelined vmap needs identical (stacked) units
    network, variables = tiny_blockwise(model, 4) if blockwise else tiny_network("mlp")
    batches = [tiny_batch(seed=s) for s in range(3)]
    key, tx = jax.random.key(0), optax.sgd(0.1)  # not Adam: it turns round-off in zero gradients into steps

    def learner(alpha):
        return sidjax.make_learner(network, tx, "sid", SIDLoss(alpha), execution=execution, pipelined=pipelined,
                                   placement=placement, batch_size=16)  # fmt: skip

    per_unit = jnp.linspace(1.0, 0.5, network.num_units)
    scheduled = learner(lambda t: jnp.where(t % 2 == 0, 0.9, 0.2) * per_unit)
    got = _steps(scheduled, scheduled.init(variables), batches, key)
    fixed = {v: learner(tuple(float(a) * v for a in per_unit)) for v in (0.9, 0.2)}  # one per value
    expected = scheduled.init(
        variables
    )  # the same steps, each by the learner with the schedule's value fixed
    for t, batch in enumerate(batches):
        expected, _ = fixed[0.9 if t % 2 == 0 else 0.2].step(expected, batch, key)
    # a traced alpha and a constant one round differently in the last bits; a wrong value moves them by far more
    chex.assert_trees_all_close(got.params, scheduled.gather(expected).params, rtol=1e-5, atol=1e-6)


def test_a_scheduled_alpha_compiles_the_step_once():
    network, variables = tiny_network("mlp")
    learner = sidjax.make_learner(network, optax.adam(1e-2), "sid", SIDLoss(alpha_warmup))
    state, key = learner.init(variables), jax.random.key(0)
    state, _ = learner.step(state, tiny_batch(), key)
    with count_compiles() as compiles:
        for s in range(4):
            state, _ = learner.step(state, tiny_batch(seed=s), key)
    assert compiles.count == 0, "alpha's value changes inside the compiled step"


def test_a_schedule_outside_zero_to_one_is_refused_naming_its_step(fashion_mnist):
    with pytest.raises(ConfigError, match=r"alpha's schedule leaves \[0, 1\] at step 9: 1.125"):
        sidjax.run(tiny_config(), alpha=lambda t: t / 8, dataset=fashion_mnist, progress=False)
    with pytest.raises(ConfigError, match=r"alpha\(0\) must be one value or one per unit in \[0, 1\]"):
        SIDLoss(lambda t: 2.0 + t)


# --- your optimizer through run ---


def test_your_model_and_recipe_checkpoint_resume_bit_for_bit_and_come_back(fashion_mnist, tmp_path):
    """Your model, an optax chain with warm-up and cosine decay, a per-unit alpha schedule: through run,
    interrupted and resumed bit for bit, loaded, and your modules back reproducing predict."""
    recipe = {"model": four_units, "tx": warmup_cosine, "alpha": per_unit_warmup, "dataset": fashion_mnist,
              "progress": False}  # fmt: skip
    config = tiny_config(epochs=3)
    whole = sidjax.run(config, str(tmp_path / "whole"), **recipe)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        sidjax.run(config, str(tmp_path / "split"), on_epoch=stop_after_two, **recipe)
    resumed = sidjax.run(config, str(tmp_path / "split"), resume=True, **recipe)
    assert records(tmp_path / "split" / "metrics.jsonl") == records(tmp_path / "whole" / "metrics.jsonl")
    chex.assert_trees_all_equal(resumed.state, whole.state)
    assert len(whole.state.opt_state.stem) == 2, "the state of your chain: clipping, then Adam"
    assert whole.summary["network"]["alpha"] == "schedule" and whole.summary["network"]["units"] == 4
    # the recipe did act: the config's optimizer and alpha give other numbers
    plain = sidjax.run(config, model=four_units, dataset=fashion_mnist, progress=False)
    assert tree_max_abs(jax.tree.map(jnp.subtract, plain.state.params, whole.state.params)) > 1e-3
    loaded = sidjax.load_run(str(tmp_path / "whole"), model=four_units, tx=warmup_cosine)
    chex.assert_trees_all_equal(loaded.state, whole.state)
    modules = loaded.network.modules(loaded.variables)
    x = fashion_mnist.normalise(fashion_mnist.test_images[:32])
    np.testing.assert_allclose(jax.nn.softmax(modules(x)[-1]), sidjax.predict(loaded.network, loaded.variables, x),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    with pytest.raises(ConfigError, match=r"resume it \(resume=True\), replace it \(overwrite=True\)"):
        sidjax.run(config, str(tmp_path / "whole"), **recipe)  # Python callers are told in Python terms


def test_a_resume_given_another_recipe_is_refused_in_one_line(fashion_mnist, tmp_path):
    out = str(tmp_path / "run")
    sidjax.run(tiny_config(epochs=1), out, tx=warmup_cosine, dataset=fashion_mnist, progress=False)
    longer = tiny_config(epochs=2)
    with pytest.raises(
        ConfigError, match=r"trained with your own optimizer \(tx: .*\), and this run is given the config's"
    ):
        sidjax.run(longer, out, resume=True, dataset=fashion_mnist, progress=False)
    with pytest.raises(
        ConfigError, match=r"other settings \(epochs=1\)"
    ):  # a tx's schedule may span the epochs
        sidjax.run(longer, out, resume=True, tx=warmup_cosine, dataset=fashion_mnist, progress=False)
    with pytest.raises(  # another optimizer's state: refused by its recorded structure, before any array
        ConfigError,
        match=r"trained with your own optimizer \(tx: .*ScaleByAdamState.*\), and this run is given "
        r"your own optimizer \(tx: EmptyState, EmptyState\)",
    ):
        sidjax.run(tiny_config(epochs=1, checkpoint_every=1), out, resume=True, tx=optax.sgd(0.1),
                   dataset=fashion_mnist, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="was trained with your own optimizer: give load_run the same tx"):
        sidjax.load_run(out)


def test_config_fields_refuse_optax_objects_and_point_to_tx():
    with pytest.raises(ConfigError, match=r"optimizer takes a name; .* give run\(config, tx=...\)"):
        TrainConfig(optimizer=optax.sgd(0.1))
    with pytest.raises(ConfigError, match=r"lr takes a number; .* tx=optax.adam\(schedule\)"):
        TrainConfig(lr=optax.cosine_decay_schedule(1e-3, 100))
    with pytest.raises(ConfigError, match="tx must be an optax transformation"):
        sidjax.run(tiny_config(), tx="adam")


# --- alpha per unit of the model given ---


def test_a_per_unit_alpha_takes_its_length_from_the_model_given(fashion_mnist):
    config = tiny_config(alpha=(0.9, 0.7, 0.5, 0.3), epochs=1)  # the config's default depth is 3
    result = sidjax.run(config, model=four_units, dataset=fashion_mnist, progress=False)
    assert result.summary["num_modules"] == 4
    with pytest.raises(ConfigError, match="alpha has 4 values but the network has 3 units"):
        sidjax.run(config, dataset=fashion_mnist, progress=False)


# --- your model on the command line ---

MODELS_PY = """
import jax
from flax import nnx

import sidjax


def small_trunk(key):
    rngs = nnx.Rngs(key)
    extractor = nnx.Sequential(lambda x: x.reshape(len(x), -1), nnx.Linear(784, 32, rngs=rngs))
    return sidjax.trunk(extractor, num_classes=10, input_shape=(28, 28, 1), num_modules=2, key=key,
                        module_hidden=32, name="small_trunk")
"""


def test_your_model_on_the_command_line_trains_resumes_and_names_itself(tmp_path):
    (tmp_path / "my_models.py").write_text(MODELS_PY)
    command = [sys.executable, "-m", "sidjax", "train", "--model", "my_models:small_trunk", "--limit-train", "512",
               "--limit-test", "256", "--batch-size", "64", "--out", "run", "--no-progress"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}
    first = subprocess.run([*command, "--epochs", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (
        first.stdout.strip().splitlines()[-1].startswith("sid small_trunk (trunk) on fashion_mnist, seed 0")
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["model"], summary["num_modules"]) == ("small_trunk", 2)
    more = subprocess.run([*command, "--epochs", "2", "--resume"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert [r["epoch"] for r in records(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_a_model_that_is_not_a_network_is_one_line(fashion_mnist):
    with pytest.raises(
        ConfigError, match=r"model is str 'my_cnn'; give a factory key -> \(network, variables\)"
    ):
        sidjax.run(tiny_config(), model="my_cnn", dataset=fashion_mnist, progress=False)
    bare = nnx.Linear(784, 10, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"the model factory returned Linear, not \(network, variables\)"):
        sidjax.run(tiny_config(), model=lambda key: bare, dataset=fashion_mnist, progress=False)


def test_a_resume_given_other_alpha_values_is_refused(fashion_mnist, tmp_path):
    out = str(tmp_path / "run")
    sidjax.run(tiny_config(epochs=1), out, alpha=0.7, dataset=fashion_mnist, progress=False)
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(alpha=0.7\)"):  # what trained
        sidjax.run(tiny_config(epochs=2), out, alpha=0.6, resume=True, dataset=fashion_mnist, progress=False)
    more = sidjax.run(
        tiny_config(epochs=2), out, alpha=0.7, resume=True, dataset=fashion_mnist, progress=False
    )
    assert more.summary["network"]["alpha"] == [0.7, 0.7, 0.7]
