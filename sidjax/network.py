"""A SID network as a static description plus arrays: a stem and K units.

Every network, built-in or yours, is one ``Network``: an optional *stem*
followed by K *units*. A unit is any Flax NNX module with the unit contract

    unit(h, log_belief) -> (h_out, logits)

where ``h`` is the previous unit's output (the stem's output for unit 1),
``log_belief`` is ``log p_{k-1}`` ``[B, N]`` (uniform for unit 1; exponentiate
for probabilities) and ``logits`` ``[B, N]`` gives ``p_k = softmax(logits)``.

* shared trunk (``docs/method.md``, "Shared trunk"): stem = feature extractor,
  units = belief modules that pass ``z`` through (``h_out = h``); the stem
  gets every unit's gradient.
* blockwise (``docs/method.md``, "Blockwise"): units = backbone block + belief
  head; every unit's output is cut (``cut_features``), so no gradient crosses
  a block boundary and the stem trains with block 1 only.

The arrays of a network are its ``Variables``: ``params`` (every
``nnx.Param``, trained) and ``stats`` (every other variable except random
streams, e.g. BatchNorm's running statistics, updated by the training
forward pass and read in evaluation). Random streams (``nnx.Dropout``'s) are
not stored: each step draws part k's from ``fold_in(step_key, k)``.
Evaluation merges every module in its ``eval()`` mode (no dropout, running
statistics), training in its ``train()`` mode.

Units of equal structure are **stacked** along a leading axis (applied with
``lax.scan``/``vmap``); otherwise they are a tuple. Build networks with
``sidjax.builders``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.losses import uniform_log_belief

sg = jax.lax.stop_gradient
# Variables that are neither trained nor random streams: carried from step to step.
STATS = nnx.Not(nnx.Any(nnx.Param, nnx.RngState))


class Parts(NamedTuple):
    """One value per trainable part of a network.

    Attributes:
      stem: the stem's value (an empty ``nnx.State`` when there is no stem).
      units: stacked, leaves ``[K, ...]``, when the network is ``stacked``;
        else a tuple of K values.
    """

    stem: Any
    units: Any


class Variables(NamedTuple):
    """A network's arrays: ``params`` (trained) and ``stats`` (updated by the forward pass), both ``Parts``."""

    params: Parts
    stats: Parts


class UnitInput(NamedTuple):
    """What one unit reads.

    Attributes:
      h: features ``[B, ...]``: the previous unit's output (the stem's
        output, or the batch itself, for the first unit).
      log_belief: ``[B, N]``, ``log p_{k-1}`` (uniform for the first unit).
      labels: ``[B]``, the labels of the batch ``h`` came from.
      valid: bool scalar, or the Python constant True where every input is
        valid (no masking is traced); False for a pipelined slot not filled
        yet (the unit then keeps its params, stats and optimizer state).
      given: what a local method gives every unit besides the features
        (``LocalMethod.given``: the HSIC bottleneck's kernels of the batch,
        Forward-Forward's wrong labels), carried from unit to unit with the
        labels; ``()`` for none.
    """

    h: chex.Array
    log_belief: chex.Array
    labels: chex.Array
    valid: Any = True
    given: Any = ()


class Chain(NamedTuple):
    """What one pass through the units produced.

    Attributes:
      logits: ``[K, B, N]``, unit k's logits.
      prev_log_beliefs: ``[K, B, N]``, unit k's belief input ``log p_{k-1}``.
      inputs: unit k's feature input; stacked ``[K, ...]`` for stacked
        networks, else a list of K arrays.
      stats: the network's stats after the pass (``Parts``).
      outputs: a list of K arrays, unit k's feature output before any cut
        (its gradient reaches unit k).
    """

    logits: chex.Array
    prev_log_beliefs: chex.Array
    inputs: Any
    stats: Parts
    outputs: Any = None


class Modules(NamedTuple):
    """A network's parts as NNX module objects holding its arrays: what you built, trained.

    Attributes:
      stem: the stem (the extractor of a shared trunk), or None.
      units: the K units: ``sidjax.BlockUnit`` (``.layers``: your blocks,
        ``.head``: its belief head) for ``sidjax.blockwise``,
        ``sidjax.BeliefModule`` (or your module) for ``sidjax.trunk``.
      num_classes: N.
    """

    stem: nnx.Module | None
    units: list[nnx.Module]
    num_classes: int

    def __call__(self, x: chex.Array) -> chex.Array:
        """Every unit's logits ``[K, B, N]`` for ``x [B, ...]``: each unit reads the previous one's belief."""
        h = x if self.stem is None else self.stem(x)
        log_belief, logits = uniform_log_belief(len(h), self.num_classes), []
        for unit in self.units:
            h, unit_logits = unit(h, log_belief)
            log_belief = jax.nn.log_softmax(unit_logits)
            logits.append(unit_logits)
        return jnp.stack(logits)


@dataclasses.dataclass(frozen=True)
class RngSpec:
    """The random streams of one part, as structure only: where its keys and counters sit."""

    treedef: Any
    leaves: tuple[jax.ShapeDtypeStruct, ...]

    def fresh(self, key: chex.PRNGKey) -> nnx.State:
        """Every stream keyed from ``key`` (leaf i from ``fold_in(key, i)``), every counter at 0."""
        values = []
        for i, leaf in enumerate(self.leaves):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                new = jax.random.fold_in(key, i)
                values.append(jax.random.split(new, leaf.shape) if leaf.shape else new)
            else:
                values.append(jnp.zeros(leaf.shape, leaf.dtype))
        return jax.tree.unflatten(self.treedef, values)


@dataclasses.dataclass(frozen=True)
class PartDef:
    """Static description of one part (the stem or a unit): a graphdef per mode and its random streams."""

    train_def: nnx.GraphDef
    eval_def: nnx.GraphDef
    rngs: RngSpec | None
    kind: str = ""

    @classmethod
    def split(cls, module: nnx.Module) -> tuple[PartDef, nnx.State, nnx.State]:
        """``(definition, params, stats)`` of ``module``, in the modes ``train()`` and ``eval()`` set.

        The module itself is left as it is (copies take the flags), so modules
        built outside a trace can be split inside one.
        """
        eval_def = nnx.split(in_mode(module, train=False), nnx.Param, nnx.RngState, ...)[0]
        train_def, params, rngs, stats = nnx.split(in_mode(module, train=True), nnx.Param, nnx.RngState, ...)
        leaves, treedef = jax.tree.flatten(rngs)
        spec = (
            RngSpec(treedef, tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves))
            if leaves
            else None
        )
        return cls(train_def, eval_def, spec, describe_module(module)), params, stats

    def merge(self, params: Any, stats: Any, key: chex.PRNGKey | None, train: bool) -> nnx.Module:
        """The module with these arrays, in training or evaluation mode."""
        graphdef = self.train_def if train else self.eval_def
        # Variables of this trace, which the forward pass may update (stats passed in from outside
        # a transformation are another trace's, and BatchNorm may not mutate them).
        stats = jax.tree.map(lambda a: a, stats)
        if self.rngs is None:
            return nnx.merge(graphdef, params, stats)
        if key is None:
            if train:
                raise ValueError("this part draws random numbers (e.g. dropout) in training: give a key")
            key = jax.random.key(0)  # evaluation mode draws none; the streams only need a value
        return nnx.merge(graphdef, params, self.rngs.fresh(key), stats)

    def call(self, params, stats, key, train: bool, *args):
        """``module(*args)`` and the stats it left (unchanged in evaluation mode)."""
        module = self.merge(params, stats, key, train)
        out = module(*args)
        return out, (nnx.state(module, STATS) if train else stats)


def describe_module(module: nnx.Module) -> str:
    """``ConvBlock + MLPHead`` for a block unit (its layers, then its head), else the module's class name."""
    layers, head = getattr(module, "layers", None), getattr(module, "head", None)
    if layers is not None and head is not None:
        return " + ".join([*(type(layer).__name__ for layer in layers), type(head).__name__])
    return type(module).__name__


def in_mode(module: nnx.Module, *, train: bool) -> nnx.Module:
    """A copy of ``module`` in the mode its ``train()`` or ``eval()`` would set (dropout, BatchNorm statistics)."""
    return nnx.with_attributes(
        module, deterministic=not train, use_running_average=not train, raise_if_not_found=False
    )


def part_key(key: chex.PRNGKey | None, index: chex.Numeric) -> chex.PRNGKey | None:
    """Part ``index``'s key of a step: unit k is index k, the stem index K."""
    return None if key is None else jax.random.fold_in(key, index)


@dataclasses.dataclass(frozen=True)
class Network:
    """Static description of a network (hashable; its ``Variables`` live apart).

    Attributes:
      stem: the stem's ``PartDef``, or None (the units read the batch).
      units: one ``PartDef`` per unit (a single one when ``stacked``).
      stacked: units share one structure and are stacked along axis 0.
      num_units: K.
      num_classes: N.
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      cut_features: blockwise (True: no gradient crosses a unit boundary) or
        shared trunk (False: the stem gets every unit's gradient).
      belief_input: how units read the previous belief: ``"prob"``,
        ``"log"`` (log-probabilities, or a method's raw code) or ``"none"``
        (DGL's heads; ``reads_belief`` is False).
      name: a label for logs.
      inference: how the trained network predicts, ``inference(network,
        variables, x) -> [K, B, N]``, where its method does not predict by
        the belief chain (NoProp's ``sidjax.noprop.Denoise``); None: the chain.
      method: the method the network was adapted for (``Method.adapt``), or "".
    """

    stem: PartDef | None
    units: tuple[PartDef, ...]
    stacked: bool
    num_units: int
    num_classes: int
    input_shape: tuple[int, ...]
    cut_features: bool
    belief_input: str = "prob"
    name: str = ""
    inference: Any = None
    method: str = ""

    @property
    def mode(self) -> str:
        """``"blockwise"`` or ``"trunk"``."""
        return "blockwise" if self.cut_features else "trunk"

    @property
    def reads_belief(self) -> bool:
        """Its units read the previous unit's belief (``belief_input`` is not ``"none"``)."""
        return self.belief_input != "none"

    def apply_stem(self, params: Any, stats: Any, x: chex.Array, key=None, *, train: bool = True):
        """``x [B, ...] -> (h_0, stats)``; the identity without a stem."""
        if self.stem is None:
            return x, stats
        return self.stem.call(params, stats, part_key(key, self.num_units), train, x)

    def apply_unit(self, k, params, stats, inp: UnitInput, key=None, *, train: bool = True):
        """Unit k on ``inp``: ``((h_out, logits [B, N]), stats)``; ``k`` may be traced for stacked units."""
        unit = self.units[0 if self.stacked else k]
        return unit.call(params, stats, part_key(key, k), train, inp.h, inp.log_belief)

    def first_input(
        self, h0: chex.Array, labels: chex.Array, valid: Any = True, given: Any = ()
    ) -> UnitInput:
        """The first unit's input: ``h0 [B, ...]``, the uniform belief, ``labels [B]``."""
        return UnitInput(h0, uniform_log_belief(h0.shape[0], self.num_classes), labels, valid, given)

    def next_input(
        self, inp: UnitInput, h_out: chex.Array, logits: chex.Array, cut: bool = True
    ) -> UnitInput:
        """What the next unit reads after a unit read ``inp`` and output ``(h_out, logits)``.

        With ``cut`` (every local method) the belief is stopped, for its use as
        the next unit's input and as its consistency target alike: this is the
        stop-gradient that keeps the units' gradients apart. Blockwise networks
        stop the features too; the shared trunk passes ``z`` on with its
        gradient, so that the extractor gets every unit's.
        """
        log_belief = jax.nn.log_softmax(logits)
        if cut:
            log_belief = sg(log_belief)
            h_out = sg(h_out) if self.cut_features else h_out
        return inp._replace(h=h_out, log_belief=log_belief)

    def unit_values(self, units: Any, k: int) -> Any:
        """Unit k's value of any per-unit pytree (params, stats, optimizer state), stacked or a tuple."""
        return jax.tree.map(lambda a: a[k], units) if self.stacked else units[k]

    def unit_list(self, units: Any) -> list[Any]:
        """Stacked or tuple per-unit pytrees -> a list of K pytrees."""
        return unstack(units, self.num_units) if self.stacked else list(units)

    def join_units(self, trees: list[Any]) -> Any:
        """A list of K per-unit pytrees -> the network's form (stacked or a tuple)."""
        return stack(trees) if self.stacked else tuple(trees)

    def run_units(
        self, variables: Variables, inp: UnitInput, key=None, *, train: bool, cut: bool, remat: bool = False
    ) -> Chain:
        """Runs the K units from ``inp`` (the first unit's input).

        Args:
          variables: the network's variables (the units' are used).
          inp: the first unit's input.
          key: the step's key (each unit draws from its own fold), or None.
          train: training mode (dropout, batch statistics updated) or evaluation.
          cut: SID's stop-gradients (``next_input``); False is the end-to-end
            network that backprop trains.
          remat: rematerialise each unit in the backward pass.

        Returns:
          A ``Chain`` (its ``stats.stem`` is the given one).
        """
        params, stats = variables.params.units, variables.stats.units

        def one(k, p, s, h, log_belief):
            def apply(p, s, h, log_belief):
                return self.apply_unit(k, p, s, inp._replace(h=h, log_belief=log_belief), key, train=train)

            (h_out, logits), s = (jax.checkpoint(apply) if remat else apply)(p, s, h, log_belief)
            nxt = self.next_input(inp, h_out, logits, cut)
            return (nxt.h, nxt.log_belief), (logits, log_belief, h, s, h_out)

        if self.stacked:
            _, (logits, prev, inputs, unit_stats, outputs) = jax.lax.scan(
                lambda carry, xs: one(*xs, *carry),
                (inp.h, inp.log_belief),
                (jnp.arange(self.num_units), params, stats),
            )
        else:
            carry, outs = (inp.h, inp.log_belief), []
            for k in range(self.num_units):
                carry, out = one(k, params[k], stats[k], *carry)
                outs.append(out)
            logits, prev = jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])
            inputs, unit_stats, outputs = (
                [o[2] for o in outs],
                tuple(o[3] for o in outs),
                [o[4] for o in outs],
            )
        chex.assert_shape(logits, (self.num_units, inp.h.shape[0], self.num_classes))
        return Chain(logits, prev, inputs, Parts(variables.stats.stem, unit_stats), list(outputs))

    def forward(
        self, variables: Variables, x: chex.Array, labels: chex.Array | None = None, key=None, *,
        train: bool, cut: bool, remat: bool = False,
    ) -> Chain:  # fmt: skip
        """The stem, then ``run_units`` from the uniform prior."""
        h0, stem_stats = self.apply_stem(variables.params.stem, variables.stats.stem, x, key, train=train)
        labels = jnp.zeros(x.shape[:1], jnp.int32) if labels is None else labels
        chain = self.run_units(
            variables, self.first_input(h0, labels), key, train=train, cut=cut, remat=remat
        )
        return chain._replace(stats=chain.stats._replace(stem=stem_stats))

    def apply(self, variables: Variables, x: chex.Array) -> chex.Array:
        """Inference in evaluation mode: every unit's logits ``[K, B, N]``; the prediction is row -1."""
        if self.inference is not None:
            return self.inference(self, variables, x)
        return self.forward(variables, x, train=False, cut=False).logits

    def modules(
        self, variables: Variables, *, train: bool = False, key: chex.PRNGKey | None = None
    ) -> Modules:
        """The stem and the K units as NNX module objects with ``variables``' arrays (copies).

        Args:
          variables: trained arrays (``RunResult.variables``, ``load_run(...).variables``).
          train: the modules in training mode (dropout on, batch statistics);
            default evaluation mode, as ``predict`` runs them.
          key: the random streams' key of modules that draw random numbers in
            training mode (dropout); default ``jax.random.key(0)``.
        """
        key = jax.random.key(0) if key is None and train else key
        stem = None
        if self.stem is not None:
            stem = self.stem.merge(
                variables.params.stem, variables.stats.stem, part_key(key, self.num_units), train
            )
        units = [
            self.units[0 if self.stacked else k].merge(
                self.unit_values(variables.params.units, k), self.unit_values(variables.stats.units, k),
                part_key(key, k), train,
            )
            for k in range(self.num_units)
        ]  # fmt: skip
        return Modules(stem, units, self.num_classes)


def stack(trees: list[Any]) -> Any:
    """A list of K pytrees of equal structure -> one pytree with leaves ``[K, ...]``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(stacked: Any, num: int | None = None) -> list[Any]:
    """Leaves ``[K, ...]`` -> a list of K pytrees (the inverse of ``stack``).

    ``num`` is K; it is needed only for a pytree without leaves (e.g. SGD's empty state).
    """
    num = jax.tree.leaves(stacked)[0].shape[0] if num is None else num
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(num)]
