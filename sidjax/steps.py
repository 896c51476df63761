"""Training steps for every network and method, with one contract.

``step(state, batch, key) -> (state, metrics)`` where ``batch = (x [B, H, W,
C], labels [B])`` and ``key`` is the run's train key (the step folds in
``state.step`` itself, for augmentation).

Methods: ``"sid"``; ``"dgl"`` (alpha = 1, heads without belief input,
Belilovsky et al. 2020); ``"bp"`` (cross-entropy on the last unit, end to
end); ``"bp_remat"`` (BP with ``jax.checkpoint`` at every block boundary).

Execution of a local (SID/DGL) step, all numerically equal (tested):

* ``"vmap"``: two-phase. Phase 1 runs the chain with the current params and
  no gradient (the teacher); phase 2 evaluates every unit's loss at once with
  ``jax.vmap`` over the stacked units. Needs identical (stacked) units.
* ``"fused"``: one pass with stop-gradients at the cuts, one ``grad``.
* ``"sequential"``: blockwise only; one jit per unit, run one after another,
  each updating its unit and handing its (stopped) output on, so only one
  block's activations are alive at a time.

Optimizer state is kept per unit (``jax.vmap(tx.init)`` over stacked units,
one ``tx.init`` per unit otherwise) plus one for the stem, so every unit is
an independent learner.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import DIVERGENCES, Divergence, label_distribution, sid_local_loss, uniform_log_belief
from sidjax.network import NetParams, Network

Method = Literal["sid", "dgl", "bp", "bp_remat"]
METHODS: tuple[str, ...] = ("sid", "dgl", "bp", "bp_remat")
Execution = Literal["auto", "vmap", "fused", "sequential"]
EXECUTIONS: tuple[str, ...] = ("auto", "vmap", "fused", "sequential")
Augment = Callable[[chex.PRNGKey, chex.Array], chex.Array]
StepFn = Callable[[Any, tuple[chex.Array, chex.Array], chex.PRNGKey], tuple[Any, dict]]
sg = jax.lax.stop_gradient


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree of arrays."""

    params: NetParams
    opt_state: NetParams  # the stem's and each unit's optimizer state
    step: chex.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class SIDLoss:
    """Hyperparameters of the local loss.

    Attributes:
      alpha: fidelity weight in [0, 1]; one float for all units or one per
        unit (a schedule).
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

    def alphas(self, num_units: int) -> jax.Array:
        """Per-unit alpha, ``[num_units]``."""
        if isinstance(self.alpha, Sequence):
            if len(self.alpha) != num_units:
                raise ValueError(f"alpha has {len(self.alpha)} values but the network has {num_units} units")
            return jnp.asarray(self.alpha, jnp.float32)
        return jnp.full((num_units,), self.alpha, jnp.float32)

    def per_example(
        self, logits: chex.Array, prev_log_belief: chex.Array, labels: chex.Array, alpha
    ) -> chex.Array:
        """``sid_local_loss`` with these hyperparameters, ``[B]``."""
        return sid_local_loss(
            logits,
            prev_log_belief,
            labels,
            alpha,
            divergence=self.divergence,
            label_smoothing=self.label_smoothing,
        )


def _map_units(units: Any, fn: Callable, *rest: Any) -> Any:
    """Applies ``fn`` per unit: vmapped over stacked units, mapped over a tuple."""
    if isinstance(units, tuple):
        return tuple(fn(u, *(r[k] for r in rest)) for k, u in enumerate(units))
    return jax.vmap(fn)(units, *rest)


def init_train_state(params: NetParams, tx: optax.GradientTransformation) -> TrainState:
    """One optimizer state for the stem and one per unit."""
    opt_state = NetParams(tx.init(params.stem), _map_units(params.units, tx.init))
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32))


def _update(tx: optax.GradientTransformation, params: Any, grads: Any, opt_state: Any) -> tuple[Any, Any]:
    """One optimizer step of one part (the stem or a unit) on its own state."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def apply_gradients(state: TrainState, grads: NetParams, tx: optax.GradientTransformation) -> TrainState:
    """The stem and every unit step on their own optimizer state."""
    params, opt = state.params, state.opt_state

    update = functools.partial(_update, tx)
    stem, stem_opt = update(params.stem, grads.stem, opt.stem)
    units_and_opts = _map_units(params.units, update, grads.units, opt.units)
    if isinstance(params.units, tuple):
        units, unit_opts = tuple(u for u, _ in units_and_opts), tuple(o for _, o in units_and_opts)
    else:
        units, unit_opts = units_and_opts
    return TrainState(NetParams(stem, units), NetParams(stem_opt, unit_opts), state.step + 1)


def local_losses(
    network: Network,
    params: NetParams,
    x: chex.Array,
    labels: chex.Array,
    loss: SIDLoss,
    *,
    execution: Literal["vmap", "fused"] = "vmap",
) -> tuple[chex.Array, chex.Array]:
    """All K local losses (SID_METHOD §1 and §3) in one differentiable function.

    Args:
      network, params: the model.
      x: ``[B, H, W, C]``; labels: ``[B]``.
      loss: local-loss hyperparameters.
      execution: ``"vmap"`` (two-phase; stacked units) or ``"fused"``.

    Returns:
      ``(losses [K], logits [K, B, N])``; ``losses[k]`` is unit k's batch mean.
    """
    alphas = loss.alphas(network.num_units)
    if execution == "fused":
        chain = network.chain(params, x, cut=True)
        logits, prev = chain.logits, chain.prev_log_beliefs
    elif execution == "vmap":
        _check_vmap(network)
        h0 = network.stem(params.stem, x)
        teacher = network.run_units(sg(params.units), sg(h0), cut=True)  # phase 1: no gradient
        prev = teacher.prev_log_beliefs
        if network.cut_features:  # unit 1 reads the stem's output, so the stem trains with it
            inputs, h_axis = teacher.inputs.at[0].set(h0), 0
        else:  # shared trunk: every unit reads z, the extractor gets the sum
            inputs, h_axis = h0, None

        def unit_logits(unit_params, h, log_belief):
            return network.unit(0, unit_params, h, log_belief)[1]

        logits = jax.vmap(unit_logits, in_axes=(0, h_axis, 0))(params.units, inputs, prev)  # phase 2
    else:
        raise ValueError(f"execution must be 'vmap' or 'fused' here, got {execution!r}")
    losses = jax.vmap(lambda lg, pv, a: loss.per_example(lg, pv, labels, a).mean())(logits, prev, alphas)
    return losses, logits


def _check_vmap(network: Network) -> None:
    if not network.stacked:
        raise ValueError(
            f"execution 'vmap' needs identical (stacked) units; {network.name} with K={network.num_units} "
            "has blocks of different structure: use 'fused' or 'sequential'"
        )


def _bp_objective(network, params, x, labels, loss, remat):
    logits = network.chain(params, x, cut=False, remat=remat).logits
    target = label_distribution(labels, network.num_classes, loss.label_smoothing)
    return optax.softmax_cross_entropy(logits[-1], target).mean(), (jnp.zeros((network.num_units,)), logits)


def resolve_method(network: Network, method: str, loss: SIDLoss) -> SIDLoss:
    """Checks ``method`` against the network; returns the loss it trains with."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "dgl":
        if network.belief_input:
            raise ValueError("method 'dgl' needs heads without belief input (belief_input=False)")
        return SIDLoss(1.0, "forward", loss.label_smoothing)
    return loss


def resolve_execution(network: Network, method: str, execution: str) -> str:
    """``"auto"``: ``"vmap"`` for the shared trunk, ``"sequential"`` for blockwise.

    Sequential is the only blockwise mode whose memory saving was measured
    (``experiments/bench_memory.py``: ViT-Tiny, K = 8, 0.18x BP's temp memory at
    1.05x its step time on XLA:CPU, where ``fused`` saved nothing). Accelerator
    runs may prefer ``fused`` or ``vmap`` for throughput; that is unmeasured.
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    if method in ("bp", "bp_remat"):
        return "fused"  # backprop has a single global loss
    if execution == "auto":
        return "sequential" if network.cut_features else "vmap"
    if execution == "vmap":
        _check_vmap(network)
    if execution == "sequential" and not network.cut_features:
        raise ValueError(
            "execution 'sequential' needs a blockwise network: in the shared trunk every module's "
            "gradient reaches the extractor; use 'vmap' or 'fused'"
        )
    return execution


def make_grad_fn(
    network: Network, method: Method, loss: SIDLoss, execution: str = "auto"
) -> Callable[[NetParams, chex.Array, chex.Array], tuple[tuple[chex.Array, Any], NetParams]]:
    """``grad_fn(params, x, labels) -> ((objective, (unit_losses [K], logits)), grads)``.

    Not available for ``"sequential"`` execution (which never forms one global
    gradient).
    """
    loss = resolve_method(network, method, loss)
    execution = resolve_execution(network, method, execution)
    if execution == "sequential":
        raise ValueError("'sequential' execution has no single gradient function; use make_train_step")

    def objective(params, x, labels):
        if method in ("bp", "bp_remat"):
            return _bp_objective(network, params, x, labels, loss, remat=method == "bp_remat")
        losses, logits = local_losses(network, params, x, labels, loss, execution=execution)
        return losses.sum(), (losses, logits)

    return jax.value_and_grad(objective, has_aux=True)


def batch_metrics(objective, unit_losses, logits, labels) -> dict[str, chex.Array]:
    last = logits[-1]
    return {
        "loss": objective,
        "ce": optax.softmax_cross_entropy_with_integer_labels(last, labels).mean(),
        "accuracy": (last.argmax(-1) == labels).mean(),
        "module_loss": unit_losses,
    }


def make_train_step(
    network: Network,
    tx: optax.GradientTransformation,
    method: Method = "sid",
    loss: SIDLoss = SIDLoss(),
    *,
    execution: Execution = "auto",
    augment: Augment | None = None,
    donate: bool = False,
) -> StepFn:
    """Builds ``step(state, (x, labels), key) -> (state, metrics)``.

    For ``"vmap"``/``"fused"`` execution and BP, gradient, optimizer update
    and state replacement happen in one jit. ``"sequential"`` runs one jit per
    unit, in order.

    Args:
      network: the static network (shared-trunk or blockwise).
      tx: optax optimizer, applied per part (stem, each unit).
      method: ``"sid"``, ``"dgl"``, ``"bp"`` or ``"bp_remat"``.
      loss: local-loss hyperparameters (BP uses only ``label_smoothing``).
      execution: ``"auto"``, ``"vmap"``, ``"fused"`` or ``"sequential"``.
      augment: optional ``augment(key, x) -> x`` run on device with
        ``fold_in(key, step)``.
      donate: donate the input state's buffers (training loops; the state
        shares buffers with the params it was built from).

    Returns:
      The step. ``metrics``: ``loss`` (the objective), ``ce`` and ``accuracy``
      of the last unit on the batch, ``module_loss [K]`` (zeros for BP).
    """
    execution = resolve_execution(network, method, execution)
    if execution == "sequential":
        return _make_sequential_step(network, tx, resolve_method(network, method, loss), augment)
    grad_fn = make_grad_fn(network, method, loss, execution)

    def step(state, batch, key):
        x, labels = batch
        if augment is not None:
            x = augment(jax.random.fold_in(key, state.step), x)
        (objective, (unit_losses, logits)), grads = grad_fn(state.params, x, labels)
        return apply_gradients(state, grads, tx), batch_metrics(objective, unit_losses, logits, labels)

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def step_temp_bytes(step: StepFn, state: TrainState, batch: tuple, key: chex.PRNGKey) -> int:
    """XLA's compiled temp memory of one training step, in bytes.

    Params, optimizer state and the batch are arguments (common to all
    methods) and not counted. A ``sequential`` step runs one jit per block,
    one after another: it is charged its largest (block temp + that block's
    input and output activations).
    """
    if hasattr(step, "analyze"):
        return max(
            u["compiled"].memory_analysis().temp_size_in_bytes + u["input_bytes"] + u["output_bytes"]
            for u in step.analyze(state, batch, key)
        )
    return step.lower(state, batch, key).compile().memory_analysis().temp_size_in_bytes


def make_unit_update(network: Network, tx: optax.GradientTransformation, loss: SIDLoss) -> Callable:
    """The jitted local update of one blockwise unit, shared by every blockwise schedule.

    ``update(k, with_stem, stem, stem_opt, unit, unit_opt, h, log_belief, x,
    labels, alpha, valid) -> (stem, stem_opt, unit, unit_opt, sg(h_out),
    log_softmax(logits), loss, logits)``.

    ``k`` (unit structure index) and ``with_stem`` (unit 1 of a network with a
    stem, which then also trains the stem on ``x``) are static: one compile per
    distinct pair, shared by stacked units. ``h [B, ...]``, ``log_belief [B,
    N]`` and ``labels [B]`` are the unit's input; ``valid`` (bool scalar)
    False leaves params and optimizer states unchanged (a pipeline slot not
    yet filled). ``stem``, ``stem_opt`` and ``x`` may be None when
    ``with_stem`` is False.
    """

    def unit_update(k, with_stem, stem, stem_opt, unit, unit_opt, h, log_belief, x, labels, alpha, valid):
        def objective(stem, unit):
            h_in = network.stem(stem, x) if with_stem else h
            h_out, logits = network.unit(k, unit, h_in, log_belief)
            return loss.per_example(logits, log_belief, labels, alpha).mean(), (h_out, logits)

        (value, (h_out, logits)), (g_stem, g_unit) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True
        )(stem, unit)

        def keep_if_invalid(new, old):
            return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)

        unit, unit_opt = keep_if_invalid(_update(tx, unit, g_unit, unit_opt), (unit, unit_opt))
        if with_stem:
            stem, stem_opt = keep_if_invalid(_update(tx, stem, g_stem, stem_opt), (stem, stem_opt))
        return stem, stem_opt, unit, unit_opt, sg(h_out), jax.nn.log_softmax(logits), value, logits

    return jax.jit(unit_update, static_argnums=(0, 1))


def _make_sequential_step(
    network: Network, tx: optax.GradientTransformation, loss: SIDLoss, augment: Augment | None
) -> StepFn:
    """Blockwise SID/DGL, one unit at a time (see the module docstring)."""
    has_stem = network.stem_def is not None
    alphas = loss.alphas(network.num_units)
    unit_jit = make_unit_update(network, tx, loss)

    augment_fn = jax.jit(augment) if augment is not None else None

    def walk(state, batch, key, analyze):
        x, labels = batch
        if augment_fn is not None:
            x = augment_fn(jax.random.fold_in(key, state.step), x)
        params, opt = state.params, state.opt_state
        stem, stem_opt = params.stem, opt.stem
        h, log_belief = x, uniform_log_belief(x.shape[0], network.num_classes)
        units, unit_opts, values, logits, report = [], [], [], [], []
        for k in range(network.num_units):
            args = (
                0 if network.stacked else k,
                has_stem and k == 0,
                stem,
                stem_opt,
                network.unit_params(params.units, k),
                network.unit_params(opt.units, k),
                h,
                log_belief,
                x,
                labels,
                alphas[k],
                True,
            )
            if analyze:
                report.append(
                    {"unit": k, "compiled": unit_jit.lower(*args).compile(), "input_bytes": h.nbytes}
                )
            stem, stem_opt, unit, unit_opt, h, log_belief, value, lg = unit_jit(*args)
            if analyze:
                report[-1]["output_bytes"] = h.nbytes
            units.append(unit)
            unit_opts.append(unit_opt)
            values.append(value)
            logits.append(lg)
        if network.stacked:
            units = jax.tree.map(lambda *a: jnp.stack(a), *units)
            unit_opts = jax.tree.map(lambda *a: jnp.stack(a), *unit_opts)
        else:
            units, unit_opts = tuple(units), tuple(unit_opts)
        unit_losses = jnp.stack(values)
        new_state = TrainState(NetParams(stem, units), NetParams(stem_opt, unit_opts), state.step + 1)
        return new_state, batch_metrics(unit_losses.sum(), unit_losses, jnp.stack(logits), labels), report

    def step(state, batch, key):
        return walk(state, batch, key, analyze=False)[:2]

    def analyze(state, batch, key) -> list[dict]:
        """Per unit, in order: its compiled jit and the bytes of its input and output activations."""
        return walk(state, batch, key, analyze=True)[2]

    step.analyze = analyze  # used by experiments/bench_memory.py
    return step
