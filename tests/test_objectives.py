"""What each unit minimises, in every execution and placement; each head against a hand-written
reference; evaluation mode and dropout keys, asserted directly.

Every expected value here is computed independently of the engine: by hand in numpy, or from the
network's forward pass with the loss written out in the test. Each assertion names the property.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import NUM_CLASSES, needs_devices, tiny_batch, tiny_blockwise, tiny_network
from flax import nnx

import sidjax
from sidjax import SIDLoss, make_learner
from sidjax.heads import HEADS
from sidjax.losses import label_distribution

ALPHAS = (0.9, 0.5, 0.2)
HOLD = optax.sgd(0.0)  # the metrics of one step are those of the parameters it starts from


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _target(labels, eps: float) -> np.ndarray:
    """(1 - eps) one-hot + eps / N, by hand."""
    target = np.full((len(labels), NUM_CLASSES), eps / NUM_CLASSES)
    target[np.arange(len(labels)), np.asarray(labels)] += 1.0 - eps
    return target


def _sid_losses(logits, labels, alphas, eps: float = 0.0) -> np.ndarray:
    """Each unit's forward SID loss from its logits [K, B, N], the belief chain from uniform, by hand."""
    target, prev, losses = _target(labels, eps), np.full(np.shape(logits)[1:], 1.0 / NUM_CLASSES), []
    for lg, alpha in zip(logits, alphas, strict=True):
        log_p = _log_softmax(lg)
        fidelity = -(target * log_p).sum(-1)
        consistency = (prev * (np.log(prev) - log_p)).sum(-1)
        losses.append((alpha * fidelity + (1 - alpha) * consistency).mean())
        prev = np.exp(log_p)
    return np.array(losses)


def _step_metrics(network, variables, method="sid", loss=SIDLoss(ALPHAS), **kwargs):
    x, y = tiny_batch()
    learner = make_learner(network, HOLD, method, loss, batch_size=len(y), **kwargs)
    _, metrics = learner.step(learner.init(variables), (x, y), jax.random.key(0))
    return metrics, network.apply(variables, x), y  # these tiny networks have no dropout or BatchNorm


# --- the alpha each unit trains with ---

SYNCHRONOUS = [
    ("trunk", "vmap", "single"),
    ("trunk", "fused", "single"),
    ("blockwise", "sequential", "single"),
    ("blockwise", "fused", "single"),
    pytest.param("blockwise", "sequential", "stages:3", marks=needs_devices(3)),
    pytest.param(
        "blockwise", "sequential", "stages:2", marks=needs_devices(2)
    ),  # unit 3 is first in its stage
    pytest.param("blockwise", "sequential", "mesh:2,1", marks=needs_devices(2)),
]


@pytest.mark.parametrize("mode,execution,placement", SYNCHRONOUS)
def test_each_unit_trains_with_its_own_alpha(mode, execution, placement):
    network, variables = tiny_network("mlp") if mode == "trunk" else tiny_blockwise("simplecnn", 3)
    metrics, logits, y = _step_metrics(network, variables, execution=execution, placement=placement)
    np.testing.assert_allclose(
        metrics["unit_loss"], _sid_losses(logits, y, ALPHAS), rtol=2e-5,
        err_msg=f"{mode}/{execution}/{placement}: unit k's loss uses alpha[k] = {ALPHAS}",
    )  # fmt: skip


def test_stacked_units_in_vmap_train_each_with_its_own_alpha():
    network, variables = tiny_blockwise("vit_tiny", 4)
    alphas = (0.9, 0.6, 0.4, 0.1)
    metrics, logits, y = _step_metrics(network, variables, loss=SIDLoss(alphas), execution="vmap")
    np.testing.assert_allclose(metrics["unit_loss"], _sid_losses(logits, y, alphas), rtol=2e-5,
                               err_msg="vmapped stacked units: unit k's loss uses alpha[k]")  # fmt: skip


# --- the label distribution each method targets ---


def test_the_smoothed_target_is_the_definition_and_sums_to_one():
    labels = jnp.array([0, 3, 4, 1])
    for eps in (0.0, 0.1, 0.5):
        target = np.asarray(label_distribution(labels, NUM_CLASSES, eps))
        np.testing.assert_allclose(target, _target(labels, eps), atol=1e-7,
                                   err_msg=f"the target at smoothing {eps}: (1 - eps) one-hot + eps / N")  # fmt: skip
        np.testing.assert_allclose(target.sum(-1), 1.0, atol=1e-6, err_msg="each target row sums to one")


@pytest.mark.parametrize("method", ["sid", "dgl", "bp"])
def test_each_method_targets_the_labels_smoothed_as_configured(method):
    eps = 0.2
    if method == "dgl":
        network, variables = tiny_blockwise("simplecnn", 3, belief_input="none")
    else:
        network, variables = tiny_network("mlp")
    metrics, logits, y = _step_metrics(network, variables, method, SIDLoss(0.5, label_smoothing=eps))
    if method == "bp":
        expected = -(_target(y, eps) * _log_softmax(logits[-1])).sum(-1).mean()
        np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5,
                                   err_msg=f"bp: the last unit's CE against labels smoothed by {eps}")  # fmt: skip
        return
    alpha = 1.0 if method == "dgl" else 0.5  # DGL trains each head's cross-entropy alone
    np.testing.assert_allclose(
        metrics["unit_loss"], _sid_losses(logits, y, [alpha] * network.num_units, eps), rtol=2e-5,
        err_msg=f"{method}: each unit's target is the labels smoothed by {eps} (alpha {alpha})",
    )  # fmt: skip


# --- each built-in head against a hand-written reference ---


def _value(param) -> np.ndarray:
    return np.asarray(param.value, np.float64)


def _conv(h, kernel, bias, stride):
    """'SAME' convolution by loops (XLA's padding: the extra row and column after)."""
    kh, kw, _, cout = kernel.shape
    b, height, width, _ = h.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + kh - height, 0)
    pad_w = max((out_w - 1) * stride + kw - width, 0)
    padded = np.pad(h, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((b, out_h, out_w, cout))
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel) + bias
    return out


def _dense(x, layer):
    return x @ _value(layer.kernel) + _value(layer.bias)


def _reference(name, head, h, log_belief, belief_input):
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    belief = {"prob": np.exp(log_belief), "log": log_belief, "none": None}[belief_input]

    def with_belief(features):
        return features if belief is None else np.concatenate([belief, features], -1)

    if name == "mlp":
        return _dense(relu(_dense(with_belief(h.mean(axis=(1, 2))), head.hidden)), head.out)
    if name == "dgl":
        mapped = relu(_conv(h, _value(head.conv.kernel), _value(head.conv.bias), 1))
        quadrants = mapped.reshape(len(h), 2, 2, 2, 2, -1).mean(axis=(2, 4))  # 4x4 -> 2x2, row-major
        return _dense(relu(_dense(with_belief(quadrants.reshape(len(h), -1)), head.hidden)), head.out)
    mapped = relu(_conv(h, _value(head.conv.kernel), _value(head.conv.bias), 2))
    return _dense(with_belief(mapped.mean(axis=(1, 2))), head.out)


@pytest.mark.parametrize("belief_input", ["prob", "log", "none"])
@pytest.mark.parametrize("name", list(HEADS))
def test_each_built_in_head_computes_what_its_reference_does(name, belief_input):
    head = HEADS[name]((4, 4, 3), NUM_CLASSES, 6, belief_input, rngs=nnx.Rngs(0))
    h = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 4, 3)), np.float64)
    log_belief = np.asarray(jax.nn.log_softmax(jax.random.normal(jax.random.key(2), (2, NUM_CLASSES))))
    found = head(jnp.asarray(h, jnp.float32), jnp.asarray(log_belief))
    np.testing.assert_allclose(found, _reference(name, head, h, log_belief, belief_input), rtol=1e-4, atol=1e-5,
                               err_msg=f"head {name!r} (belief {belief_input}) against its hand-written form")  # fmt: skip


# --- evaluation mode ---


class _Block(nnx.Module):
    """Linear, BatchNorm, dropout, ReLU on vectors."""

    def __init__(self, din: int, dout: int, rate: float, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.norm = nnx.BatchNorm(dout, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.drop(self.norm(self.linear(x.reshape(len(x), -1)))))


def _bn_dropout_net(rate: float):
    rngs = nnx.Rngs(params=0, dropout=1)
    blocks = [_Block(64, 16, rate, rngs=rngs), _Block(16, 16, rate, rngs=rngs)]
    return sidjax.blockwise(blocks, num_classes=NUM_CLASSES, input_shape=(8, 8, 1), rngs=rngs, head_hidden=8)


def test_evaluation_turns_dropout_off_and_reads_running_statistics():
    network, variables = _bn_dropout_net(0.5)
    without, _ = _bn_dropout_net(0.0)  # the same parameters (same keys), no dropout at all
    stats = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(5), a.shape), variables.stats)
    variables = variables._replace(stats=stats)  # running statistics that are not the batch's
    x = jax.random.normal(jax.random.key(3), (6, 8, 8, 1))
    logits = network.apply(variables, x)
    np.testing.assert_array_equal(logits, without.apply(variables, x),
                                  err_msg="evaluation: dropout is off (equal to the same network without it)")  # fmt: skip
    other = x.at[1:].set(jax.random.normal(jax.random.key(4), (5, 8, 8, 1)))
    np.testing.assert_allclose(network.apply(variables, other)[:, 0], logits[:, 0], atol=1e-6,
                               err_msg="evaluation: BatchNorm uses running statistics, not the batch's")  # fmt: skip
    moved = variables._replace(stats=jax.tree.map(lambda a: a + 1.0, stats))
    assert np.abs(network.apply(moved, x) - logits).max() > 1e-3, "evaluation reads the running statistics"
    np.testing.assert_array_equal(sidjax.predict(network, variables, x, per_unit=True),
                                  jax.nn.softmax(logits, -1), err_msg="predict is the evaluation-mode network")  # fmt: skip


class _Drop(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(x)


def test_dropout_keys_differ_per_unit_and_per_step_and_repeat_for_the_same_key():
    """Blocks that are only dropout: each unit's input shows every earlier unit's mask."""
    rngs = nnx.Rngs(params=0, dropout=1)
    network, variables = sidjax.blockwise([_Drop(rngs=rngs) for _ in range(3)], num_classes=NUM_CLASSES,
                                          input_shape=(8, 8, 1), rngs=rngs, head_hidden=4)  # fmt: skip
    x, y = jnp.ones((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)

    def kept(step_key):  # what survives after units 1 and 2 ([2, B, 8, 8, 1] booleans)
        chain = network.run_units(variables, network.first_input(x, y), step_key, train=True, cut=True)
        return np.stack([np.asarray(chain.inputs[k]) != 0 for k in (1, 2)])

    first = kept(sidjax.steps.step_key(jax.random.key(0), 0))
    assert not np.array_equal(first[0], first[1]), "unit 2 draws a mask of its own, not unit 1's"
    assert 0.1 < first[1].mean() < 0.4, "two independent masks at rate 0.5 keep about a quarter"
    second = kept(sidjax.steps.step_key(jax.random.key(0), 1))
    assert not np.array_equal(first[0], second[0]), "a unit's mask changes from step to step"
    np.testing.assert_array_equal(first, kept(sidjax.steps.step_key(jax.random.key(0), 0)),
                                  err_msg="the same key and step give the same masks")  # fmt: skip
