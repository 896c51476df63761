"""Jitted training steps: two-phase SID, its fused reference, and backprop.

Every step has the contract ``step(state, batch, key) -> (state, metrics)``
where ``batch = (x [B, H, W, C], labels [B])`` and ``key`` is the run's train
key (the step folds in ``state.step`` itself).

Optimizer state is kept per module: the extractor has one ``tx`` state and
the stacked belief modules have ``jax.vmap(tx.init)`` of theirs, so every
module is an independent learner (its own Adam step count, its own norms
for any non-elementwise transform).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import DIVERGENCES, Divergence, label_distribution, sid_local_loss
from sidjax.network import SIDNetwork, SIDParams

Method = Literal["sid", "sid_fused", "bp"]
METHODS: tuple[str, ...] = ("sid", "sid_fused", "bp")
Augment = Callable[[chex.PRNGKey, chex.Array], chex.Array]


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree of arrays."""

    params: SIDParams
    opt_state: SIDParams  # per-part optimizer states, modules' stacked
    step: chex.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class SIDLoss:
    """Hyperparameters of the local loss.

    Attributes:
      alpha: fidelity weight in [0, 1]; one float for all modules or one per
        module (a schedule).
      divergence: ``"forward"`` (authors' code) or ``"reverse"`` (paper).
      label_smoothing: epsilon of the target distribution.
    """

    alpha: float | Sequence[float] = 0.5
    divergence: Divergence = "forward"
    label_smoothing: float = 0.0

    def __post_init__(self):
        alphas = self.alpha if isinstance(self.alpha, Sequence) else [self.alpha]
        if not all(0.0 <= float(a) <= 1.0 for a in alphas):
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.divergence == "reverse" and self.label_smoothing == 0.0:
            raise ValueError("divergence='reverse' needs label_smoothing > 0 (KL(p || one-hot) is infinite)")

    def alphas(self, num_modules: int) -> jax.Array:
        """Per-module alpha, ``[num_modules]``."""
        if isinstance(self.alpha, Sequence):
            if len(self.alpha) != num_modules:
                raise ValueError(
                    f"alpha has {len(self.alpha)} values but the network has {num_modules} modules"
                )
            return jnp.asarray(self.alpha, jnp.float32)
        return jnp.full((num_modules,), self.alpha, jnp.float32)


def init_train_state(params: SIDParams, tx: optax.GradientTransformation) -> TrainState:
    """One optimizer state for the extractor, one per (stacked) module."""
    opt_state = SIDParams(tx.init(params.extractor), jax.vmap(tx.init)(params.modules))
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32))


def sid_local_losses(
    network: SIDNetwork,
    params: SIDParams,
    x: chex.Array,
    labels: chex.Array,
    loss: SIDLoss,
    *,
    fused: bool = False,
) -> tuple[chex.Array, chex.Array]:
    """All L local losses of SID_METHOD §1.

    Two-phase (default): phase 1 runs the chain with the current params and no
    gradient (the teacher beliefs); phase 2 evaluates every module's loss at
    once with ``jax.vmap`` over the module axis given ``(sg(p_{i-1}), z, y)``.
    ``fused=True`` is the single-pass reference: one chain with stop-gradient
    on each module's belief input and consistency target.

    Args:
      network, params: the model.
      x: ``[B, H, W, C]``; labels: ``[B]``.
      loss: local-loss hyperparameters.
      fused: use the single-pass reference instead of the two-phase form.

    Returns:
      ``(losses [L], logits [L, B, N])``; ``losses[i]`` is module i's batch mean.
    """
    z = network.extract(params.extractor, x)
    alphas = loss.alphas(network.num_modules)

    def local(logits_i, prev_i, alpha_i):
        return sid_local_loss(
            logits_i,
            prev_i,
            labels,
            alpha_i,
            divergence=loss.divergence,
            label_smoothing=loss.label_smoothing,
        ).mean()

    if fused:
        logits, prev = network.chain(params.modules, z, cut=True)
    else:
        sg = jax.lax.stop_gradient
        _, prev = network.chain(sg(params.modules), sg(z), cut=True)  # phase 1
        logits = jax.vmap(network.module_logits, in_axes=(0, 0, None))(params.modules, prev, z)
    return jax.vmap(local)(logits, prev, alphas), logits


def _sid_objective(fused: bool):
    def objective(network, params, x, labels, loss):
        losses, logits = sid_local_losses(network, params, x, labels, loss, fused=fused)
        return losses.sum(), (losses, logits)

    return objective


def _bp_objective(network, params, x, labels, loss):
    logits = network.apply(params, x)
    target = label_distribution(labels, network.num_classes, loss.label_smoothing)
    ce = optax.softmax_cross_entropy(logits[-1], target).mean()
    return ce, (jnp.zeros((network.num_modules,)), logits)


# method -> objective(network, params, x, labels, loss) -> (scalar, (per-module losses, logits))
OBJECTIVES: dict[str, Callable[..., Any]] = {
    "sid": _sid_objective(fused=False),
    "sid_fused": _sid_objective(fused=True),
    "bp": _bp_objective,
}


def apply_gradients(state: TrainState, grads: SIDParams, tx: optax.GradientTransformation) -> TrainState:
    """Extractor and modules each step on their own optimizer state."""
    params, opt = state.params, state.opt_state
    ext_updates, ext_opt = tx.update(grads.extractor, opt.extractor, params.extractor)
    mod_updates, mod_opt = jax.vmap(tx.update)(grads.modules, opt.modules, params.modules)
    new_params = SIDParams(
        optax.apply_updates(params.extractor, ext_updates),
        optax.apply_updates(params.modules, mod_updates),
    )
    return TrainState(new_params, SIDParams(ext_opt, mod_opt), state.step + 1)


def make_grad_fn(
    network: SIDNetwork, method: Method, loss: SIDLoss
) -> Callable[[SIDParams, chex.Array, chex.Array], tuple[tuple[chex.Array, Any], SIDParams]]:
    """``grad_fn(params, x, labels) -> ((objective, (module_losses, logits)), grads)``."""
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    objective = OBJECTIVES[method]
    return jax.value_and_grad(
        lambda params, x, labels: objective(network, params, x, labels, loss), has_aux=True
    )


def make_train_step(
    network: SIDNetwork,
    tx: optax.GradientTransformation,
    method: Method = "sid",
    loss: SIDLoss = SIDLoss(),
    *,
    augment: Augment | None = None,
    donate: bool = False,
) -> Callable[[TrainState, tuple[chex.Array, chex.Array], chex.PRNGKey], tuple[TrainState, dict]]:
    """Builds the jitted ``step(state, (x, labels), key) -> (state, metrics)``.

    Gradient, optimizer update and state replacement happen in one jit.

    Args:
      network: the static network.
      tx: optax optimizer, applied per part (extractor, each module).
      method: ``"sid"`` (two-phase), ``"sid_fused"`` (single-pass reference)
        or ``"bp"`` (cross-entropy on the last module, end to end).
      loss: local-loss hyperparameters (BP uses only ``label_smoothing``).
      augment: optional ``augment(key, x) -> x`` run on device each step with
        ``fold_in(key, step)``.
      donate: donate the input state's buffers (for training loops; tests that
        reuse a state keep the default ``False``).

    Returns:
      The jitted step. ``metrics``: ``loss`` (the objective), ``ce`` and
      ``accuracy`` of the last module on the batch, ``module_loss [L]``.
    """
    grad_fn = make_grad_fn(network, method, loss)

    def step(state, batch, key):
        x, labels = batch
        if augment is not None:
            x = augment(jax.random.fold_in(key, state.step), x)
        (objective, (module_losses, logits)), grads = grad_fn(state.params, x, labels)
        last = logits[-1]
        metrics = {
            "loss": objective,
            "ce": optax.softmax_cross_entropy_with_integer_labels(last, labels).mean(),
            "accuracy": (last.argmax(-1) == labels).mean(),
            "module_loss": module_losses,
        }
        return apply_gradients(state, grads, tx), metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())
