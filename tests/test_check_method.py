"""``sidjax.check_method``: a rule's documented properties checked on one batch, and run checks your rule."""

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import tiny_blockwise, tiny_config, tiny_network

import sidjax
from sidjax import METHODS, ConfigError, LocalMethod, Method, check_method


def _adapted(name_or_spec, mode="blockwise"):
    spec = METHODS[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    belief = spec.default_belief_input(mode)
    built = (
        tiny_blockwise("simplecnn", 3, belief_input=belief)
        if mode == "blockwise"
        else tiny_network("mlp", belief_input=belief)
    )
    return spec.adapt(*built, jax.random.key(0))


@pytest.mark.parametrize(
    ("method", "mode"),
    [("sid", "trunk"), ("sid", "blockwise"), ("dgl", "blockwise"), ("ff", "blockwise"), ("hsic", "blockwise"),
     ("noprop", "trunk"), ("bp", "blockwise"), ("fa", "trunk"), ("dfa", "trunk")],
)  # fmt: skip
def test_every_built_in_method_passes_its_own_check(method, mode):
    report = check_method(method, *_adapted(method, mode))
    assert jnp.isfinite(report["value"]) and len(report["unit_losses"]) == 3
    assert all(g > 0 for g in report["unit_gradients"]), "every unit gets a gradient"
    if METHODS[method].local:
        assert report["largest_cross_unit_gradient"] == 0.0, "no gradient crosses a unit boundary"


def _ce(seen):
    return optax.softmax_cross_entropy_with_integer_labels(seen.logits, seen.input.labels).mean(), seen.logits


def _leaky_hand_on(network, inp, h_out, logits):  # forgets the stop-gradient on the features
    return inp._replace(h=h_out, log_belief=jax.lax.stop_gradient(jax.nn.log_softmax(logits)))


LEAKY = LocalMethod(name="leaky", summary="cross-entropy, features handed on unstopped", unit_loss=_ce,
                    hand_on=_leaky_hand_on, modes=("blockwise",), belief_input="none")  # fmt: skip


def test_a_rule_that_leaks_gradients_across_units_is_caught_naming_the_units():
    with pytest.raises(ConfigError, match="declared local but gradients cross unit boundaries: unit 2's loss "
                                          "reaches unit 1, unit 3's loss reaches unit 1") as err:  # fmt: skip
        check_method(LEAKY, *_adapted(LEAKY))
    assert "\n" not in str(err.value)


def test_a_rule_with_the_wrong_shapes_or_a_non_finite_loss_or_an_untrained_unit_is_one_line():
    def wrong_shape(network, loss, execution):
        def objective(params, stats, x, labels, key):
            chain = network.forward(sidjax.Variables(params, stats), x, labels, key, train=True, cut=True)
            value = optax.softmax_cross_entropy_with_integer_labels(chain.logits[-1], labels).mean()
            return value, (value, chain.logits, chain.stats)  # unit_losses should be [K]

        return objective

    shapes = Method(name="shapes", summary="", objective=wrong_shape, modes=("blockwise",))
    with pytest.raises(ConfigError, match=r"its objective's unit_losses is \(\), expected \(3,\)"):
        check_method(shapes, *_adapted(shapes))
    infinite = LocalMethod(name="inf", summary="", unit_loss=lambda seen: (jnp.log(0.0 * seen.logits.sum()),
                           seen.logits), modes=("blockwise",))  # fmt: skip
    with pytest.raises(ConfigError, match="its loss is not finite"):
        check_method(infinite, *_adapted(infinite))
    first_only = LocalMethod(name="first", summary="", unit_loss=lambda seen: (
        jnp.where(seen.index == 0, _ce(seen)[0], 0.0), seen.logits), modes=("blockwise",))  # fmt: skip
    with pytest.raises(ConfigError, match=r"units \[2, 3\] get no gradient"):
        check_method(first_only, *_adapted(first_only))


def test_run_checks_your_rule_before_it_trains_and_writes_nothing(fashion_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(sidjax.methods, "METHODS", dict(METHODS))  # the registration stays in this test
    config = tiny_config(method="test_check_method:LEAKY", mode="blockwise", model="mlp4", num_blocks=3)
    with pytest.raises(ConfigError, match="declared local but gradients cross"):
        sidjax.run(config, str(tmp_path / "leaky"), dataset=fashion_mnist, progress=False)
    assert not (tmp_path / "leaky").exists()
