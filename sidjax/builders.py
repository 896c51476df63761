"""Build a ``Network`` and its ``Variables`` from NNX modules: yours or the built-in architectures.

One path for every network (the built-in architectures take it too):

* ``from_units``: any K modules with the unit contract
  ``unit(h, log_belief) -> (h_out, logits)``, an optional stem.
* ``blockwise``: an ordered list of blocks (each ``h -> h``, a module or a
  list of modules), each given a belief head (``sidjax.heads``, or yours).
* ``trunk``: a feature extractor ``x -> z [B, d]`` and L belief modules.
* ``make_blockwise_network`` / ``make_network``: the same from a built-in
  architecture's name (``sidjax.ARCHITECTURES``) or a ``Backbone``.

Modules are trained in their ``train()`` mode and evaluated in their
``eval()`` mode (``nnx.Dropout`` and ``nnx.BatchNorm`` follow these).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.architectures import ARCHITECTURES, Backbone, Extractor
from sidjax.errors import ConfigError
from sidjax.heads import HEADS, check_belief_input
from sidjax.models import BeliefModule, BlockUnit
from sidjax.network import Network, PartDef, Parts, Variables, in_mode, stack
from sidjax.ops import ConvImpl

Architecture = str | Backbone  # a key of ARCHITECTURES, or your own Backbone


def _shape(module: nnx.Module | None, shape: tuple[int, ...], *extra) -> tuple[int, ...]:
    """One example's output shape of ``module`` (evaluation mode: nothing is drawn or updated)."""
    if module is None:
        return shape
    module = in_mode(module, train=False)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    out = jax.eval_shape(lambda x, *e: module(x, *e), x, *extra)
    return tuple((out[0] if isinstance(out, tuple) else out).shape[1:])


def from_units(
    units: Sequence[nnx.Module],
    *,
    num_classes: int,
    input_shape: Sequence[int],
    stem: nnx.Module | None = None,
    cut_features: bool = True,
    belief_input: str = "prob",
    name: str = "custom",
) -> tuple[Network, Variables]:
    """A network of K units (the unit contract, ``sidjax.network``) after an optional stem.

    Args:
      units: K NNX modules, ``unit(h, log_belief [B, N]) -> (h_out, logits [B, N])``.
      num_classes: N.
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      stem: run before unit 1 (``x -> h_0``); trained with unit 1 (blockwise)
        or with every unit (shared trunk).
      cut_features: blockwise (no gradient crosses a unit) or shared trunk.
      belief_input: how the units read the belief: ``"prob"``, ``"log"``
        or ``"none"`` (they read none, as DGL's heads).
      name: a label for logs.

    Returns:
      ``(network, variables)``; the units are stacked when they share one
      structure and keep the feature shape.
    """
    if not units:
        raise ValueError("a network needs at least one unit")
    check_belief_input(belief_input)
    input_shape = tuple(input_shape)
    h_shape = _shape(stem, input_shape)
    belief = jax.ShapeDtypeStruct((1, num_classes), jnp.float32)
    shapes = []
    for unit in units:
        shapes.append(h_shape)
        h_shape = _shape(unit, h_shape, belief)
    stem_def, stem_params, stem_stats = (
        PartDef.split(stem) if stem is not None else (None, nnx.State({}), nnx.State({}))
    )
    defs, params, stats = zip(*(PartDef.split(u) for u in units), strict=True)
    # Units stack (for scan/vmap) only if they have one structure -- graphdefs ignore
    # array shapes, so the arrays' shapes must match too -- and keep the feature shape.
    signature = [
        jax.tree.map(lambda a: (a.shape, a.dtype), (p, s)) for p, s in zip(params, stats, strict=True)
    ]
    stacked = (
        all(d == defs[0] for d in defs)
        and all(s == signature[0] for s in signature)
        and all(s == shapes[0] for s in shapes + [h_shape])
    )
    join = stack if stacked else tuple
    network = Network(stem_def, defs[:1] if stacked else tuple(defs), stacked, len(units), num_classes,
                      input_shape, cut_features, belief_input, name)  # fmt: skip
    return network, Variables(Parts(stem_params, join(list(params))), Parts(stem_stats, join(list(stats))))


def _rngs(rngs: nnx.Rngs | chex.PRNGKey) -> nnx.Rngs:
    return rngs if isinstance(rngs, nnx.Rngs) else nnx.Rngs(params=rngs)


def blockwise(
    blocks: Sequence[nnx.Module | Sequence[nnx.Module]],
    *,
    num_classes: int,
    input_shape: Sequence[int],
    rngs: nnx.Rngs | chex.PRNGKey,
    stem: nnx.Module | None = None,
    heads: Sequence[nnx.Module] | None = None,
    head: str = "mlp",
    head_hidden: int = 256,
    belief_input: str = "prob",
    name: str = "custom/blockwise",
) -> tuple[Network, Variables]:
    """Blockwise SID from your blocks: block k plus a belief head is unit k; no gradient crosses a block.

    Args:
      blocks: K blocks in order, each an NNX module ``h -> h`` or a list of
        them (applied in turn).
      num_classes: N.
      input_shape: one example's shape.
      rngs: ``nnx.Rngs`` (or a key) for the built-in heads.
      stem: run before block 1 and trained with it.
      heads: your own K heads, ``head(h, log_belief [B, N]) -> logits``;
        default: one built-in ``head`` per block.
      head: a key of ``sidjax.heads.HEADS``: ``"mlp"``, ``"dgl"``, ``"infopro"``.
      head_hidden: hidden width of the built-in heads.
      belief_input: how built-in heads read ``p_{k-1}``: ``"prob"``,
        ``"log"`` or ``"none"`` (DGL).
      name: a label for logs.

    Returns:
      ``(network, variables)``.
    """
    groups = [list(b) if isinstance(b, Sequence) else [b] for b in blocks]
    if heads is None:
        if head not in HEADS:
            raise ConfigError(f"head must be one of {tuple(HEADS)}, got {head!r}", "head")
        rngs = _rngs(rngs)
        shape, heads = _shape(stem, tuple(input_shape)), []
        for group in groups:
            for layer in group:
                shape = _shape(layer, shape)
            heads.append(HEADS[head](shape, num_classes, head_hidden, belief_input, rngs=rngs))
    elif len(heads) != len(groups):
        raise ValueError(f"{len(heads)} heads for {len(groups)} blocks: give one head per block")
    units = [BlockUnit(group, h) for group, h in zip(groups, heads, strict=True)]
    return from_units(units, num_classes=num_classes, input_shape=input_shape, stem=stem, cut_features=True,
                      belief_input=belief_input, name=name)  # fmt: skip


def trunk(
    extractor: nnx.Module,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    num_modules: int,
    key: chex.PRNGKey,
    module: Callable[[int, int, nnx.Rngs], nnx.Module] | None = None,
    module_hidden: int = 256,
    belief_input: str = "prob",
    name: str = "custom/trunk",
) -> tuple[Network, Variables]:
    """Shared-trunk SID: your extractor ``x -> z [B, d]`` and L identical belief modules.

    Args:
      extractor: an NNX module; it receives every module's gradient.
      num_classes: N.
      input_shape: one example's shape.
      num_modules: L.
      key: the belief modules' init key (one fold per module, vmapped).
      module: ``module(feature_dim, num_classes, rngs) -> unit`` for belief
        modules of your own (default: ``BeliefModule``, the authors' MLP).
      module_hidden, belief_input: the default module's hidden width and
        how it reads ``p_{k-1}``.
      name: a label for logs.

    Returns:
      ``(network, variables)`` with the L modules stacked.
    """
    if num_modules < 1:
        raise ValueError(f"num_modules must be >= 1, got {num_modules}")
    z_shape = _shape(extractor, tuple(input_shape))
    if len(z_shape) != 1:
        raise ValueError(
            f"the extractor must output [B, d] features, got [B, {', '.join(map(str, z_shape))}]"
        )
    if module is None:

        def module(d, n, rngs):
            return BeliefModule(d, n, module_hidden, belief_input, rngs=rngs)

    def new(k):
        return module(z_shape[0], num_classes, nnx.Rngs(params=k))

    abstract = nnx.eval_shape(lambda: new(jax.random.key(0)))
    unit_def = PartDef.split(abstract)[0]
    params, stats = jax.vmap(lambda k: PartDef.split(new(k))[1:])(jax.random.split(key, num_modules))
    stem_def, stem_params, stem_stats = PartDef.split(extractor)
    network = Network(stem_def, (unit_def,), True, num_modules, num_classes, tuple(input_shape),
                      cut_features=False, belief_input=belief_input, name=name)  # fmt: skip
    return network, Variables(Parts(stem_params, params), Parts(stem_stats, stats))


def backbone(
    model: Architecture, input_shape, rngs: nnx.Rngs, *, conv_impl: ConvImpl = "xla", tiny: bool = False
) -> Backbone:
    """A ``Backbone`` as given, or built from its name in ``ARCHITECTURES``."""
    if isinstance(model, Backbone):
        return model
    if model not in ARCHITECTURES:
        raise ConfigError(
            f"model must be one of {tuple(ARCHITECTURES)} or a Backbone, got {model!r}", "model"
        )
    return ARCHITECTURES[model](tuple(input_shape), tiny, conv_impl, rngs)


def _label(model: Architecture, mode: str) -> str:
    return f"{model if isinstance(model, str) else 'backbone'}/{mode}"


def make_network(
    model: Architecture,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_modules: int,
    key: chex.PRNGKey,
    *,
    feature_dim: int = 128,
    module_hidden: int = 256,
    belief_input: str = "prob",
    conv_impl: ConvImpl = "xla",
    tiny: bool = False,
) -> tuple[Network, Variables]:
    """Shared-trunk SID on an architecture: its backbone, pooled and projected to ``feature_dim``, as the extractor.

    Args:
      model: a name in ``ARCHITECTURES`` or a ``Backbone``.
      input_shape: one example's shape ``(H, W, C)``.
      num_classes: N.
      num_modules: L >= 1 belief modules.
      key: PRNG key; the extractor and the (vmapped) modules get their own.
      feature_dim: d, the extractor's output width.
      module_hidden: hidden width of each belief module.
      belief_input: how modules read ``p_{k-1}`` (``"prob"``, ``"log"``, ``"none"``).
      conv_impl: convolution backward implementation (``sidjax.ops``).
      tiny: the architecture's tiny variant (tests).

    Returns:
      ``(network, variables)``.
    """
    if num_modules < 1:
        raise ValueError(f"num_modules must be >= 1, got {num_modules}")
    extractor_key, modules_key = jax.random.split(key)
    rngs = nnx.Rngs(params=extractor_key)
    extractor = Extractor(
        backbone(model, input_shape, rngs, conv_impl=conv_impl, tiny=tiny), feature_dim, rngs=rngs
    )
    return trunk(extractor, num_classes=num_classes, input_shape=input_shape, num_modules=num_modules,
                 key=modules_key, module_hidden=module_hidden, belief_input=belief_input,
                 name=_label(model, "trunk"))  # fmt: skip


def make_blockwise_network(
    model: Architecture,
    input_shape: tuple[int, ...],
    num_classes: int,
    num_blocks: int,
    key: chex.PRNGKey,
    *,
    head: str = "mlp",
    head_hidden: int = 256,
    belief_input: str = "prob",
    conv_impl: ConvImpl = "xla",
    tiny: bool = False,
) -> tuple[Network, Variables]:
    """Blockwise SID on an architecture: its layers cut into K blocks by its cut rule, each with a head.

    Args:
      model: a name in ``ARCHITECTURES`` or a ``Backbone``.
      input_shape: ``(H, W, C)``.
      num_classes: N.
      num_blocks: K; the backbone's cut rule says which K are allowed.
      key: PRNG key (the backbone, then the heads).
      head, head_hidden, belief_input: the heads (``blockwise``).
      conv_impl: convolution backward implementation.
      tiny: the architecture's tiny variant (tests).

    Returns:
      ``(network, variables)``; units are stacked when all K blocks have the
      same structure (e.g. ViT with K dividing its depth).

    Raises:
      ValueError: unknown model, or a cut the architecture does not allow.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    rngs = nnx.Rngs(params=key)
    net = backbone(model, input_shape, rngs, conv_impl=conv_impl, tiny=tiny)
    blocks = [[net.layers[i] for i in group] for group in net.cut(num_blocks)]
    return blockwise(blocks, num_classes=num_classes, input_shape=input_shape, rngs=rngs, stem=net.stem,
                     head=head, head_hidden=head_hidden, belief_input=belief_input,
                     name=_label(model, "blockwise"))  # fmt: skip


__all__ = ["Architecture", "Network", "Variables", "backbone", "blockwise", "from_units", "make_blockwise_network",
           "make_network", "trunk"]  # fmt: skip
