"""From a config to training programs: ``make_plan`` (no data) and ``make_trainer``.

``make_plan`` validates a config against the dataset's metadata and the
devices and builds the network, before any data is read. ``make_trainer``
turns a plan into a ``Trainer``: a named record of the run's programs for the
chosen placement (one device, a mesh, or stages). Its ``chunk`` runs
``steps_per_chunk`` training steps as one compiled ``lax.scan`` over batches
gathered on the device; S seeds train together under one ``jax.vmap``
(``sidjax.epoch.train_epoch`` runs the chunks of an epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.config import Placement, TrainConfig
from sidjax.data import (
    Dataset,
    DatasetInfo,
    dataset_info,
    is_image_folder,
    normalised_batch,
    random_crop_flip,
)
from sidjax.errors import ConfigError
from sidjax.evaluation import make_split_evaluator, make_split_predictor
from sidjax.methods import MethodSpec, get_method
from sidjax.network import (
    NetParams,
    Network,
    make_blockwise_network,
    make_network,
    stack_units,
    unstack_units,
)
from sidjax.pipelined import init_slots
from sidjax.state import init_train_state
from sidjax.steps import make_train_step, resolve_execution


class Plan(NamedTuple):
    """Everything decided before data is read.

    Attributes:
      config: the run's config.
      method: its ``MethodSpec``.
      network: the static network (the same for every seed).
      info: the dataset's shape, classes and split sizes after the limits.
      placement: where the arrays live.
      augment: crop + flip on the device.
      steps_per_epoch: full batches per epoch.
      steps_per_chunk: steps per compiled chunk.
      cpu_convolutions: a convolutional network on XLA:CPU, where loops and
        vmapped seeds are slow: chunks are one step and seeds are unrolled
        inside the program instead of vmapped (``auto_chunk``).
    """

    config: TrainConfig
    method: MethodSpec
    network: Network
    info: DatasetInfo
    placement: Placement
    augment: bool
    steps_per_epoch: int
    steps_per_chunk: int
    cpu_convolutions: bool = False


def build_network(config: TrainConfig, input_shape, num_classes: int, key) -> tuple[Network, NetParams]:
    """The network ``config`` trains, with params from ``key`` (``ConfigError`` for a cut the model refuses)."""
    try:
        if config.mode == "trunk":
            return make_network(config.model, input_shape, num_classes, config.num_modules, key,
                                conv_impl=config.conv_impl, tiny=config.tiny)  # fmt: skip
        return make_blockwise_network(config.model, input_shape, num_classes, config.num_blocks, key,
                                      belief_input=get_method(config.method).belief_input,
                                      conv_impl=config.conv_impl, tiny=config.tiny)  # fmt: skip
    except ValueError as err:
        if config.mode == "blockwise":
            raise ConfigError(f"num_blocks {config.num_blocks}: {err}", "num_blocks") from None
        raise ConfigError(f"model {config.model}: {err}", "model") from None


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, train_key)`` of one seed: one root key, split once per concern."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


def abstract_network(config: TrainConfig, info: DatasetInfo) -> tuple[Network, Any]:
    """The static network and its params' shapes, built under ``jax.eval_shape``: nothing is initialised."""
    built = {}

    def params(key):
        built["network"], p = build_network(config, info.input_shape, info.num_classes, key)
        return p

    shapes = jax.eval_shape(params, jax.random.key(0))
    return built["network"], shapes


def has_convolution(network: Network, params: Any, input_shape: tuple[int, ...]) -> bool:
    """Whether the network's forward pass contains a convolution (traced, not run)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(network.apply)(params, x)

    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            subs = [v.jaxpr if hasattr(v, "jaxpr") else v for v in eqn.params.values()]
            if any(walk(j) for j in subs if hasattr(j, "eqns")):
                return True
        return False

    return walk(jaxpr.jaxpr)


def auto_chunk(steps: int, cpu_convolutions: bool, most: int = 64) -> int:
    """Steps per chunk: the largest divisor of ``steps`` up to ``most`` (equal chunks, one compile).

    1 for ``cpu_convolutions``: XLA:CPU runs a convolution's weight gradient
    ~100x slower inside a loop than outside one (jax 0.10.2: 8.3 s against
    0.083 s for a 3x3x32x64 kernel at batch 128, in a ``fori_loop``; a
    blockwise SimpleCNN step 21 s against 0.36 s inside ``lax.scan``), so a
    convolutional network's chunk there is one step without a loop; a
    dispatch per step costs nothing next to a CPU step. Dense networks scan
    (an MLP epoch: 2.9 s scanned, 4.2 s step by step).
    """
    if cpu_convolutions:
        return 1
    return max(d for d in range(1, min(steps, most) + 1) if steps % d == 0)


def make_plan(config: TrainConfig, dataset: Dataset | None = None) -> Plan:
    """Validates ``config`` against the dataset's metadata and the devices; builds the network.

    Raises:
      ConfigError: one line naming the setting to change.
      DatasetUnavailableError: an image folder that is not laid out as required.
    """
    if dataset is not None:
        if dataset.name != config.dataset:
            raise ConfigError(
                f"the given dataset is {dataset.name!r} but dataset is {config.dataset!r}", "dataset"
            )
        info = DatasetInfo(
            dataset.input_shape, dataset.num_classes, len(dataset.train_labels), len(dataset.test_labels)
        )
    else:
        info = dataset_info(config.dataset, config.image_size)
    num_train = min(info.num_train, config.limit_train or info.num_train)
    if config.validation >= num_train:
        raise ConfigError(
            f"validation {config.validation} leaves none of the {num_train} training examples to train on; "
            "lower validation or raise limit_train",
            "validation",
        )
    info = info._replace(
        num_train=num_train - config.validation,
        num_test=min(info.num_test, config.limit_test or info.num_test),
    )
    if config.batch_size > info.num_train:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {info.num_train} training examples; "
            "lower batch_size or raise limit_train",
            "batch_size",
        )
    network, param_shapes = abstract_network(config, info)
    spec = get_method(config.method)
    resolve_execution(network, spec, config.execution, config.pipelined)
    placement = config.placement_spec()
    _check_placement(config, network, placement)
    augment = config.augment
    if augment is None:
        augment = config.dataset.startswith("cifar") or is_image_folder(config.dataset)
    steps = info.num_train // config.batch_size
    cpu_convolutions = jax.default_backend() == "cpu" and has_convolution(
        network, param_shapes, info.input_shape
    )
    chunk = (
        min(config.steps_per_chunk, steps) if config.steps_per_chunk else auto_chunk(steps, cpu_convolutions)
    )
    return Plan(config, spec, network, info, placement, augment, steps, chunk, cpu_convolutions)


def _check_placement(config: TrainConfig, network: Network, placement: Placement) -> None:
    from sidjax.parallel import check_mesh, make_mesh
    from sidjax.pipeline import BlockPipeline

    if placement.kind == "mesh":
        check_mesh(network, make_mesh(*placement.mesh), config.batch_size)
    elif placement.kind == "stages":
        BlockPipeline(
            network, config.optimizer_tx(1), config.method, config.loss(), num_stages=placement.stages or None
        )


class Trainer(NamedTuple):
    """The programs of one run, for its S seeds trained together.

    Attributes:
      init: per-seed params -> the placed training state.
      load: per-seed ``TrainState``s (restored checkpoints) -> the placed state.
      unload: the placed state -> per-seed ``TrainState``s on the host.
      put: host arrays -> device arrays where this trainer's programs read them.
      chunk: ``(state, images, labels, order, start, length) -> (state,
        metrics)``: ``length`` steps whose batches are ``order[start: start
        + length]`` (``[steps, B]`` indices into ``images``); every metric
        has a leading ``[length]`` axis (after the seed axis).
        ``chunk.compile(...)`` compiles ahead of time and returns the
        seconds it took.
      evaluate: ``(state, images, labels) -> per-seed sums`` over the test split.
      predict: ``(state, images) -> per-seed int [N]``, the last unit's predicted classes.
    """

    init: Callable[[list[NetParams]], Any]
    load: Callable[[list[Any]], Any]
    unload: Callable[[Any], list[Any]]
    put: Callable[[Any], Any]
    chunk: Any
    evaluate: Callable[[Any, Any, Any], list[dict[str, np.ndarray]]]
    predict: Callable[[Any, Any], list[np.ndarray]]


class CompiledChunks:
    """A jitted chunk with a static length, compiled ahead of time once per length.

    ``keys`` (each seed's train key) is bound here, so callers pass the data only.
    """

    def __init__(self, jitted: Callable, keys: jax.Array):
        self.jitted, self.keys = jitted, keys
        self.compiled: dict[int, Any] = {}

    def compile(self, state, images, labels, order, start, length: int) -> float:
        begin = time.perf_counter()
        lowered = self.jitted.lower(state, images, labels, order, start, self.keys, length)
        self.compiled[length] = lowered.compile()
        return time.perf_counter() - begin

    def __call__(self, state, images, labels, order, start, length: int):
        if length not in self.compiled:
            self.compile(state, images, labels, order, start, length)
        return self.compiled[length](state, images, labels, order, start, self.keys)


def make_chunk(
    dataset: Dataset,
    step: Callable,
    keys: jax.Array,
    batch_sharding=None,
    images_axis: int | None = None,
    unroll_seeds: bool = False,
) -> CompiledChunks:
    """``chunk(state, images, labels, order, start, length)``: one ``lax.scan`` over ``length`` steps.

    Returns each step's metrics, so that their epoch means do not depend on
    how the epoch is cut into chunks.

    With S > 1 seeds (``keys`` of shape ``[S]``) it is vmapped over each
    seed's state, labels, order and key (or, with ``unroll_seeds``, the
    seeds follow one another inside the program); ``images`` is shared
    (``images_axis=None``: resident data) or per seed (streamed data).
    """

    def chunk(state, images, labels, order, start, key, length):
        idxs = jax.lax.dynamic_slice_in_dim(order, start, length)

        def body(state, idx):
            x, y = normalised_batch(dataset, images, labels, idx)
            if batch_sharding is not None:
                x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding)
            return step(state, (x, y), key)

        if length == 1:  # no loop at all (see auto_chunk)
            state, metrics = body(state, idxs[0])
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(body, state, idxs)

    if keys.ndim:  # seeds trained together
        axes = (0, images_axis, 0, 0, None, 0, None)
        chunk = _over_seeds(chunk, axes, keys.shape[0], unroll_seeds)
    return CompiledChunks(jax.jit(chunk, static_argnums=6, donate_argnums=0), keys)


def make_trainer(plan: Plan, dataset: Dataset, seeds: tuple[int, ...], streamed: bool = False) -> Trainer:
    """The programs that train ``plan`` on ``dataset`` for ``seeds`` together.

    Args:
      plan: from ``make_plan``.
      dataset: supplies the normalisation statistics (constants in the programs).
      seeds: the seeds trained together (several only on a single device).
      streamed: the training split is sent chunk by chunk instead of resident.
    """
    config, network = plan.config, plan.network
    tx = config.optimizer_tx(plan.steps_per_epoch * config.epochs)
    augment = random_crop_flip if plan.augment else None
    keys = jnp.stack([seed_keys(s)[1] for s in seeds]) if len(seeds) > 1 else seed_keys(seeds[0])[1]
    evaluate_split = make_split_evaluator(network, dataset, config.eval_batch_size, config.label_smoothing)
    predict_split = make_split_predictor(network, dataset, config.eval_batch_size)
    if plan.placement.kind == "stages":
        from sidjax.placements import stages_trainer

        return stages_trainer(plan, dataset, tx, augment, keys, evaluate_split, predict_split)
    step = make_train_step(network, tx, config.method, config.loss(), execution=config.execution,
                           pipelined=config.pipelined, augment=augment)  # fmt: skip
    x_shape = (config.batch_size, *plan.info.input_shape)

    def init_one(params):
        return init_train_state(params, tx, init_slots(network, params, x_shape) if config.pipelined else ())

    if plan.placement.kind == "mesh":
        from sidjax.placements import mesh_trainer

        return mesh_trainer(plan, dataset, step, keys, init_one, evaluate_split, predict_split)
    if len(seeds) == 1:
        evaluate, predict = jax.jit(evaluate_split), jax.jit(predict_split)
        return Trainer(
            init=lambda params: init_one(params[0]),
            load=lambda states: jax.device_put(states[0]),
            unload=lambda state: [jax.device_get(state)],
            put=jax.device_put,
            chunk=make_chunk(dataset, step, keys),
            evaluate=lambda state, images, labels: [jax.device_get(evaluate(state.params, images, labels))],
            predict=lambda state, images: [jax.device_get(predict(state.params, images))],
        )
    evaluate = jax.jit(_over_seeds(evaluate_split, (0, None, None), len(seeds), plan.cpu_convolutions))
    predict = jax.jit(_over_seeds(predict_split, (0, None), len(seeds), plan.cpu_convolutions))
    return Trainer(
        init=lambda params: stack_units([init_one(p) for p in params]),  # any pytrees: one per seed
        load=lambda states: jax.device_put(stack_units(states)),
        unload=lambda state: unstack_units(jax.device_get(state), len(seeds)),
        put=jax.device_put,
        chunk=make_chunk(
            dataset, step, keys, images_axis=0 if streamed else None, unroll_seeds=plan.cpu_convolutions
        ),
        evaluate=lambda state, images, labels: unstack_units(
            jax.device_get(evaluate(state.params, images, labels)), len(seeds)
        ),
        predict=lambda state, images: list(jax.device_get(predict(state.params, images))),
    )


def _over_seeds(fn: Callable, in_axes: tuple, count: int, unroll: bool) -> Callable:
    """``fn`` over ``count`` seeds in one program: ``jax.vmap``, or with ``unroll`` its contract unrolled.

    Unrolled, the seeds follow one another: XLA:CPU turns a vmapped
    convolution into a grouped one, measured 3.7x slower per seed (SimpleCNN,
    batch 128, two seeds) than the seeds apart.
    """
    if not unroll:
        return jax.vmap(fn, in_axes=in_axes)

    def unrolled(*args):
        outs = [
            fn(
                *(
                    a if axis is None else jax.tree.map(lambda v, i=i: v[i], a)
                    for a, axis in zip(args, in_axes, strict=True)
                )
            )
            for i in range(count)
        ]
        return stack_units(outs)

    return unrolled
