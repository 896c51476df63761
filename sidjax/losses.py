"""SID's local loss and its closed-form minimisers, as pure functions of arrays.

Notation (Ye & Tang, arXiv 2510.03273): module i outputs ``logits_i`` and the
belief ``p_i = softmax(logits_i)``; ``p_{i-1}`` is the previous module's
belief (uniform for the first module), always under stop-gradient.

* ``"forward"`` (the authors' code, the default)::

      L_i = alpha * CE(y, p_i) + (1 - alpha) * KL(sg(p_{i-1}) || p_i)

* ``"reverse"`` (the paper's stated form; needs label smoothing > 0)::

      L_i = alpha * KL(p_i || p~_y) + (1 - alpha) * KL(p_i || sg(p_{i-1}))

Beliefs cross module boundaries as log-probabilities so that a belief that
has underflowed to 0 in float32 still has a finite logarithm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError

Divergence = Literal["forward", "reverse"]
DIVERGENCES: tuple[str, ...] = ("forward", "reverse")


def label_distribution(labels: chex.Array, num_classes: int, label_smoothing: float = 0.0) -> chex.Array:
    """Target distribution ``p~_y``: one-hot, optionally label-smoothed.

    Args:
      labels: integer class ids, ``[batch]``.
      num_classes: N.
      label_smoothing: epsilon in [0, 1); mass epsilon is spread uniformly.

    Returns:
      ``[batch, num_classes]``, rows sum to one.
    """
    onehot = jax.nn.one_hot(labels, num_classes)
    return optax.smooth_labels(onehot, label_smoothing) if label_smoothing else onehot


def uniform_log_belief(batch: int, num_classes: int) -> chex.Array:
    """``log p_0``: the uniform prior the belief chain starts from, ``[batch, N]``."""
    return jnp.full((batch, num_classes), -jnp.log(num_classes), jnp.float32)


def sid_local_loss(
    logits: chex.Array,
    prev_log_belief: chex.Array,
    labels: chex.Array,
    alpha: chex.Numeric,
    *,
    divergence: Divergence = "forward",
    label_smoothing: float = 0.0,
) -> chex.Array:
    """Per-example local SID loss of one unit (``docs/method.md``, equations 1 and 2).

    Args:
      logits: this module's logits, ``[batch, N]``.
      prev_log_belief: ``log p_{i-1}``, ``[batch, N]``; stop-gradient is
        applied here, so callers cannot forget it.
      labels: integer class ids, ``[batch]``.
      alpha: fidelity weight in [0, 1], a scalar.
      divergence: ``"forward"`` (authors' code) or ``"reverse"`` (paper).
      label_smoothing: epsilon of the target ``p~_y``; the reverse form needs
        epsilon > 0 (KL(p || one-hot) is infinite).

    Returns:
      ``[batch]`` loss values.
    """
    chex.assert_rank(logits, 2)
    chex.assert_equal_shape([logits, prev_log_belief])
    num_classes = logits.shape[-1]
    prev_log_belief = jax.lax.stop_gradient(prev_log_belief)
    log_p = jax.nn.log_softmax(logits)
    target = label_distribution(labels, num_classes, label_smoothing)
    if divergence == "forward":
        fidelity = optax.softmax_cross_entropy(logits, target)
        consistency = optax.losses.kl_divergence_with_log_targets(log_p, prev_log_belief)
    elif divergence == "reverse":
        if not label_smoothing > 0:
            raise ValueError(
                "divergence='reverse' needs label_smoothing > 0: KL(p || one-hot) "
                "is infinite. Pass e.g. label_smoothing=0.1."
            )
        fidelity = optax.losses.kl_divergence_with_log_targets(jnp.log(target), log_p)
        consistency = optax.losses.kl_divergence_with_log_targets(prev_log_belief, log_p)
    else:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    return alpha * fidelity + (1.0 - alpha) * consistency


def kl_to_target(logits: chex.Array, labels: chex.Array, label_smoothing: float = 0.0) -> chex.Array:
    """Depth diagnostic ``KL(p~_y || p_i)`` per example, ``[batch]``.

    With no label smoothing this equals the cross-entropy ``-log p_i(y)``.
    """
    target = label_distribution(labels, logits.shape[-1], label_smoothing)
    return optax.losses.kl_divergence(jax.nn.log_softmax(logits), target)


def forward_minimiser(alpha: chex.Numeric, target: chex.Array, prev: chex.Array) -> chex.Array:
    """Closed-form minimiser of the forward loss over the simplex.

    ``argmin_p alpha * CE(target, p) + (1 - alpha) * KL(prev || p)
    = alpha * target + (1 - alpha) * prev`` (an arithmetic mixture).

    Args:
      alpha: scalar in [0, 1].
      target, prev: probability vectors ``[..., N]``.

    Returns:
      ``[..., N]``.
    """
    return alpha * target + (1.0 - alpha) * prev


def reverse_minimiser(alpha: chex.Numeric, target: chex.Array, prev: chex.Array) -> chex.Array:
    """Closed-form minimiser of the reverse loss over the simplex.

    ``argmin_p alpha * KL(p || target) + (1 - alpha) * KL(p || prev)
    ∝ target**alpha * prev**(1 - alpha)`` (a geometric mixture).

    Args:
      alpha: scalar in [0, 1].
      target, prev: strictly positive probability vectors ``[..., N]``.

    Returns:
      ``[..., N]``.
    """
    return jax.nn.softmax(alpha * jnp.log(target) + (1.0 - alpha) * jnp.log(prev), axis=-1)


AlphaSchedule = Callable[[chex.Array], chex.Numeric]
"""``alpha(step) -> [] or [K]``: the fidelity weight of the update numbered ``step`` (int32 scalar, from 0), traced."""
Alpha = float | Sequence[float] | AlphaSchedule | jax.Array


@dataclasses.dataclass(frozen=True)
class SIDLoss:
    """Hyperparameters of the local loss; validates itself on construction.

    Attributes:
      alpha: fidelity weight in [0, 1]: one float for all units, one per unit,
        or a schedule ``alpha(step) -> [] or [K]`` (a jax function of the
        int32 step, traced inside the compiled step: changing values never
        recompile), e.g. a warm-up ``lambda t: jnp.minimum(1.0, 0.5 + t / 1000)``.
      divergence: ``"forward"`` (authors' code) or ``"reverse"`` (paper).
      label_smoothing: epsilon of the target distribution, in [0, 1).

    Raises:
      ConfigError: a value out of range, naming the attribute.
    """

    alpha: Alpha = 0.5
    divergence: Divergence = "forward"
    label_smoothing: float = 0.0

    def __post_init__(self):
        if callable(self.alpha):
            _check_alpha_values(self.alpha(jnp.zeros((), jnp.int32)), "alpha(0)")
        elif isinstance(self.alpha, jax.Array):
            # a schedule's value (``at_step``); a traced one was checked with its schedule
            if not isinstance(self.alpha, jax.core.Tracer):
                _check_alpha_values(self.alpha, "alpha")
        else:
            alphas = self.alpha if isinstance(self.alpha, Sequence) else [self.alpha]
            if not alphas or not all(0.0 <= float(a) <= 1.0 for a in alphas):
                raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}", "alpha")
        if self.divergence not in DIVERGENCES:
            raise ConfigError(
                f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}", "divergence"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"label_smoothing must lie in [0, 1), got {self.label_smoothing}", "label_smoothing"
            )
        if self.divergence == "reverse" and self.label_smoothing == 0.0:
            raise ConfigError(
                "divergence 'reverse' needs label_smoothing > 0 (KL(p || one-hot) is infinite); try 0.1",
                "divergence",
            )

    @property
    def scheduled(self) -> bool:
        """alpha is a function of the step."""
        return callable(self.alpha)

    def check_units(self, num_units: int) -> None:
        """``ConfigError`` unless alpha is one value or one per unit (a schedule: at step 0)."""
        value = self.alpha(jnp.zeros((), jnp.int32)) if self.scheduled else self.alpha
        count = len(value) if isinstance(value, Sequence) else int(jnp.size(value))
        if count not in (1, num_units) or (count == 1 and isinstance(value, Sequence) and num_units != 1):
            raise ConfigError(
                f"alpha has {count} values{' (its schedule at step 0)' if self.scheduled else ''} but the "
                f"network has {num_units} units; give one value or one per unit",
                "alpha",
            )

    def alphas(self, num_units: int, step: chex.Array | None = None) -> jax.Array:
        """Per-unit alpha, ``[num_units]`` (a schedule at ``step``, which it then needs)."""
        self.check_units(num_units)
        value = self.alpha
        if self.scheduled:
            if step is None:
                raise ValueError("alpha is a schedule: SIDLoss.alphas needs the step")
            value = value(step)
        return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (num_units,))

    def at_step(self, step: chex.Array) -> SIDLoss:
        """This loss with a schedule's alpha at ``step`` (itself if alpha is fixed); jittable."""
        if not self.scheduled:
            return self
        return dataclasses.replace(self, alpha=jnp.asarray(self.alpha(step), jnp.float32))

    def unit_loss(
        self, logits: chex.Array, prev_log_belief: chex.Array, labels: chex.Array, alpha: chex.Numeric
    ) -> chex.Array:
        """One unit's local loss on a batch: the mean of ``sid_local_loss`` with these hyperparameters, a scalar.

        Every step, execution and schedule computes a unit's loss with this function.
        """
        return sid_local_loss(
            logits,
            prev_log_belief,
            labels,
            alpha,
            divergence=self.divergence,
            label_smoothing=self.label_smoothing,
        ).mean()


def _check_alpha_values(value, what: str) -> None:
    """``ConfigError`` unless ``value`` is a scalar or vector of finite numbers in [0, 1]."""
    try:
        array = jnp.asarray(value, jnp.float32)
    except TypeError as err:
        raise ConfigError(f"{what} must give numbers in [0, 1], got {value!r} ({err})", "alpha") from None
    if array.ndim > 1 or not bool(jnp.all((array >= 0.0) & (array <= 1.0))):
        raise ConfigError(
            f"{what} must be one value or one per unit in [0, 1], got {array.tolist()}", "alpha"
        )


def check_alpha_schedule(loss: SIDLoss, num_steps: int) -> None:
    """``ConfigError`` unless a scheduled alpha stays in [0, 1] over the steps ``0 .. num_steps - 1``."""
    if not loss.scheduled:
        return
    values = jax.jit(jax.vmap(lambda t: jnp.asarray(loss.alpha(t), jnp.float32)))(jnp.arange(num_steps))
    bad = ~((values >= 0.0) & (values <= 1.0))
    if bool(jnp.any(bad)):
        step = int(jnp.argmax(bad.reshape(num_steps, -1).any(-1)))
        raise ConfigError(
            f"alpha's schedule leaves [0, 1] at step {step}: {jnp.asarray(values[step]).tolist()}", "alpha"
        )
