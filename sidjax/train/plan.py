"""From a config to a plan: everything decided before data is read.

``make_plan`` validates a config against the dataset's metadata, the model
and the devices, builds the network (shapes only: nothing is initialised)
and the ``Learner`` that trains it. A model is a config's built-in
architecture, or yours: a factory ``key -> (network, variables)`` or a built
``(network, variables)``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import optax

from sidjax.architectures import ARCHITECTURES, Backbone
from sidjax.builders import make_blockwise_network, make_network
from sidjax.data import Dataset, DatasetInfo, dataset_info, is_image_folder, load_dataset, random_crop_flip
from sidjax.errors import ConfigError
from sidjax.learner import make_learner
from sidjax.losses import Alpha
from sidjax.methods import BUILTIN, Method, changed_rule, get_method
from sidjax.methods.check import check_method
from sidjax.network import Network, Variables
from sidjax.state import Learner, TrainState
from sidjax.train.chunking import auto_chunk, has_convolution
from sidjax.train.config import CUSTOM, Point, TrainConfig
from sidjax.train.recipe import as_trained, make_recipe
from sidjax.train.rundir import RunDir
from sidjax.train.warm import check_source, from_source, source_dir, trained_state

ModelFactory = Callable[[chex.PRNGKey], tuple[Network, Variables]]
Model = ModelFactory | tuple[Network, Variables] | Backbone
Optimizer = optax.GradientTransformation | Callable[[int], optax.GradientTransformation]


class Plan(NamedTuple):
    """Everything decided before data is read.

    Attributes:
      config: the run's config (for your own model: its mode, depth and
        name as the network has them).
      method: its ``Method``.
      network: the static network (the same for every seed).
      build: ``build(key) -> (network, variables)``: a seed's initial network.
      learner: the ``Learner`` that trains it.
      info: the dataset's shape, classes and split sizes after the limits.
      steps_per_epoch: full batches per epoch.
      steps_per_chunk: steps per compiled chunk.
      cpu_convolutions: a convolutional network on XLA:CPU, where loops and
        vmapped seeds are slow: chunks are one step and seeds are unrolled
        inside the program instead of vmapped (``auto_chunk``).
      tx: the optimizer of every part (the config's, or yours).
      loss: the local loss the units train with (``SIDLoss``, the method's
        own alpha applied).
      recipe: what the config's fields cannot record: ``{"tx": "custom"}``
        for your own optimizer, ``{"alpha": "schedule"}`` for an alpha
        schedule or ``"given [values]"`` for alpha values given to ``run``
        (``{}`` for none); run directories keep it, so that a resume is given
        the same.
      warm: ``warm(seed, key) -> variables``: a seed's initial variables from
        ``config.init_from``'s trained run (then changed by the method, from
        ``key``); None: ``build(key)``'s.
      injected: the grid fields the optimizer states hold (``TrainConfig.optimizer_tx``): one
        program steps every point; () without a grid.
      point_learner: ``point_learner(point) -> Learner``: the learner whose ``init`` holds that
        point's values (its step is ``learner``'s: the values come from the state).
    """

    config: TrainConfig
    method: Method
    network: Network
    build: ModelFactory
    learner: Learner
    info: DatasetInfo
    steps_per_epoch: int
    steps_per_chunk: int
    cpu_convolutions: bool = False
    tx: optax.GradientTransformation | None = None
    recipe: dict[str, str] = {}
    loss: Any = None
    warm: Callable[[int, chex.PRNGKey], Variables] | None = None
    injected: tuple[str, ...] = ()
    point_learner: Callable[[Point], Learner] | None = None

    def initial_variables(self, seed: int, key: chex.PRNGKey) -> Variables:
        """A seed's variables before its first step (``key``: its init key)."""
        return self.build(key)[1] if self.warm is None else self.warm(seed, key)

    def initial_state(self, seed: int, point: Point, key: chex.PRNGKey) -> TrainState:
        """A member's first state: its seed's variables, its point's optimizer values, placed."""
        learner = self.learner if self.point_learner is None else self.point_learner(point)
        return learner.init(self.initial_variables(seed, key))


ROW_MODELS = (
    "mlp",
    "mlp4",
)  # the built-in architectures that take feature rows [F] (they flatten their input)


def builtin_model(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int, backbone: Backbone | None = None
) -> ModelFactory:
    """The factory of the config's architecture (or of ``backbone``) in its mode; its errors name the setting."""
    architecture = config.model if backbone is None else backbone
    if backbone is None and config.model not in ARCHITECTURES:
        raise ConfigError(
            f"model must be one of {tuple(ARCHITECTURES)}, got {config.model!r} "
            "(or pass your own network: sidjax.run(config, model=...))",
            "model",
        )
    if backbone is None and len(input_shape) != 3 and config.model not in ROW_MODELS:
        raise ConfigError(
            f"model {config.model} takes images [H, W, C]; {config.dataset}'s inputs are rows of "
            f"{input_shape[0]} features: use model {' or '.join(ROW_MODELS)} (or your own network)",
            "model",
        )

    def build(key):
        try:
            if config.mode == "trunk":
                return make_network(architecture, input_shape, num_classes, config.num_modules, key,
                                    belief_input=config.belief, conv_impl=config.conv_impl, tiny=config.tiny)  # fmt: skip
            return make_blockwise_network(architecture, input_shape, num_classes, config.num_blocks, key,
                                          head=config.head, belief_input=config.belief,
                                          conv_impl=config.conv_impl, tiny=config.tiny)  # fmt: skip
        except ConfigError:
            raise
        except ValueError as err:
            field = "num_blocks" if "can be cut" in str(err) else "model"
            value = config.num_blocks if field == "num_blocks" else config.model
            raise ConfigError(f"{field} {value}: {err}", field) from None

    return build


def abstract_network(build: ModelFactory) -> tuple[Network, Any]:
    """The static network and its variables' shapes, built under ``jax.eval_shape``: nothing is initialised."""
    built = {}

    def variables(key):
        built["network"], v = build(key)
        return v

    shapes = jax.eval_shape(variables, jax.random.key(0))
    return built["network"], shapes


# A method's own arrays (FA's feedback) are drawn from fold_in(the seed's init key, ADAPT_KEY).
ADAPT_KEY = 0xADA


MODEL_FORMS = (
    "a factory key -> (network, variables), a built (network, variables) or a sidjax.Backbone "
    "(a built-in architecture is named in the config: TrainConfig(model=...))"
)


def _factory(model: Model) -> ModelFactory:
    """``model`` as ``key -> (network, variables)``; anything else is one ``ConfigError`` line."""
    if callable(model):

        def checked(key):
            try:
                built = model(key)
            except ConfigError:
                raise
            except Exception as err:  # your factory's own error, in one line naming it
                name = getattr(model, "__qualname__", type(model).__name__)
                raise ConfigError(
                    f"the model factory {name} raised {type(err).__name__}: {err}", "model"
                ) from None
            if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], Network)):
                raise ConfigError(
                    f"the model factory returned {type(built).__name__}, not (network, variables); "
                    "build them with sidjax.blockwise, sidjax.trunk or sidjax.make_network",
                    "model",
                )
            return built

        return checked
    if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], Network)):
        raise ConfigError(f"model is {type(model).__name__} {model!r:.40}; give {MODEL_FORMS}", "model")
    network, variables = model
    return lambda key: (network, variables)


def data_info(config: TrainConfig, dataset: Dataset | None) -> DatasetInfo:
    """The dataset's shape and classes, and its split sizes after the limits and the validation hold-out."""
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
    return info


def make_plan(
    config: TrainConfig,
    dataset: Dataset | None = None,
    model: Model | None = None,
    info: DatasetInfo | None = None,
    *,
    tx: Optimizer | None = None,
    alpha: Alpha | None = None,
    injected: tuple[str, ...] | None = None,
) -> Plan:
    """Validates ``config`` against the dataset's metadata, the model and the devices; builds the network.

    Args:
      config: the run.
      dataset: already loaded data, if any (else the config names it).
      model: your own network: ``key -> (network, variables)`` (each seed
        its own init), a built ``(network, variables)``, or a ``Backbone``
        built in the config's mode like a named architecture (the last two:
        every seed starts from the same layers); default: the config's
        built-in architecture.
      info: the dataset's metadata after the limits, where neither the data
        nor its name can give it (a saved run of your own arrays).
      tx: your own optimizer instead of the config's: an optax
        transformation, or ``total_steps -> transformation`` (for schedules
        over the whole run).
      alpha: your own alpha instead of the config's: one value, one per unit
        of the network given, or a schedule ``alpha(step)`` (``SIDLoss``).
      injected: the grid fields the optimizer states hold; default: the
        config's grid (a run directory of one grid point records its grid's).

    Raises:
      ConfigError: one line naming the setting to change.
      DatasetUnavailableError: an image folder that is not laid out as required.
    """
    spec, warm, source = get_method(config.method), None, None
    if config.init_from is not None:
        config = dataclasses.replace(
            config, init_from=os.path.abspath(config.init_from)
        )  # loadable from anywhere
        source = _source_plan(config, model)
        config = from_source(config, source.config)
    info = info or data_info(config, dataset)
    if source is not None:
        build, warm = source.build, _warm_start(config, source, spec)
    elif model is None or isinstance(model, Backbone):
        build = builtin_model(config, info.input_shape, info.num_classes, model)
    else:
        build = _factory(model)
    build = _adapted(spec, build)
    network, shapes = abstract_network(build)
    if model is not None and source is None:
        config = _as_built(config, network, info)
    steps = info.num_train // config.batch_size
    injected = tuple(config.grid) if injected is None else tuple(injected)
    if config.optimizer == CUSTOM and tx is None:
        raise ConfigError("optimizer 'custom' is a run given its own optimizer: give run (or load_run) the same "
                          "tx", "tx")  # fmt: skip
    tx, loss, recipe = make_recipe(config, steps * config.epochs, tx, alpha, injected)
    config = as_trained(config, spec, loss, "tx" in recipe)
    augment = config.augment
    if augment is None:
        augment = config.dataset.startswith("cifar") or is_image_folder(config.dataset)

    def learner_for(tx: optax.GradientTransformation) -> Learner:
        return make_learner(network, tx, config.method, loss,
                            execution=config.execution, pipelined=config.pipelined, placement=config.placement,
                            augment=random_crop_flip if augment else None, batch_size=config.batch_size,
                            refresh=config.refresh)  # fmt: skip

    def point_learner(point):
        return learner_for(config.for_point(point).optimizer_tx(steps * config.epochs, injected))

    cpu_convolutions = jax.default_backend() == "cpu" and has_convolution(network, shapes)
    chunk = (
        min(config.steps_per_chunk, steps) if config.steps_per_chunk else auto_chunk(steps, cpu_convolutions)
    )
    return Plan(config, spec, network, build, learner_for(tx), info, steps, chunk, cpu_convolutions, tx, recipe,
                spec.loss(loss), warm, injected, point_learner if injected else None)  # fmt: skip


def check_own_method(plan: Plan) -> None:
    """A method that is not built in is checked once on a fresh network before it trains
    (``sidjax.check_method``: finite loss, shapes, no gradient across units where declared local)."""
    if not any(plan.method is builtin for builtin in BUILTIN):
        check_method(plan.method, *plan.build(jax.random.key(0)), loss=plan.loss)


def _source_plan(config: TrainConfig, model: Model | None) -> Plan:
    """The plan of the run ``config.init_from`` names (the directory its first seed starts from)."""
    path = source_dir(config.init_from, config.seeds[0])
    try:
        return plan_of_run(path, model)
    except ConfigError as err:
        raise ConfigError(f"init_from: {err}", "init_from") from None


def _warm_start(config: TrainConfig, source: Plan, method: Method) -> Callable:
    """``warm(seed, key)``: the seed's trained variables in ``init_from``, as ``method`` changes them (every
    seed's directory holds a run of ``source``'s network and length, so its plan is built once)."""

    def warm(seed: int, key: chex.PRNGKey) -> Variables:
        run_dir = RunDir(
            source_dir(config.init_from, seed), source.config, steps_per_epoch=source.steps_per_epoch
        )
        state = trained_state(run_dir, state_template(source))
        return method.adapt(source.network, state.variables, jax.random.fold_in(key, ADAPT_KEY))[1]

    return warm


def checked_dataset(plan: Plan, dataset: Dataset | None, data_dir, manual_dir) -> Dataset:
    """The dataset given, or the config's loaded; refused where its images are not the plan's."""
    config = plan.config
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir, manual_dir, image_size=config.image_size)
    if dataset.input_shape != plan.info.input_shape:
        raise ConfigError(
            f"{config.dataset} images are {dataset.input_shape}, expected {plan.info.input_shape}"
        )
    return dataset


def plan_of_run(
    path: str, model: Model | None = None, tx: Optimizer | None = None, allow_changed_method: bool = False
) -> Plan:
    """The plan of the run in the directory ``path`` (``sidjax.load_run``): its config and dataset as
    recorded, rebuilt with ``model`` and ``tx`` where the run was given its own; one line where they are
    missing, build another model, or its method is not the rule it trained (a warning with
    ``allow_changed_method``)."""
    config = RunDir.read_config(path)
    run_info = RunDir(path, config).run_info()
    changed = changed_rule(run_info.get("network", {}).get("method"), get_method(config.method))
    if changed and not allow_changed_method:
        raise ConfigError(f"{path}: {changed}; load it with the same rule, or give allow_changed_method=True",
                          "method")  # fmt: skip
    if changed:
        warnings.warn(f"{path}: {changed}; loaded with it as asked (allow_changed_method)", stacklevel=3)
    saved = run_info.get("dataset")
    if saved is not None:
        saved = {k: v for k, v in saved.items() if k in DatasetInfo._fields}  # not its fingerprint
    info = None if saved is None else DatasetInfo(**{**saved, "input_shape": tuple(saved["input_shape"])})
    if "tx" in run_info.get("recipe", {}) and tx is None:
        raise ConfigError(f"{path} was trained with your own optimizer: give load_run the same tx", "tx")
    if model is None and config.model not in ARCHITECTURES:
        raise ConfigError(
            f"{path} was trained with your own model {config.model!r}: give load_run the same model", "model"
        )
    grid = run_info.get("recipe", {}).get("grid")
    plan = make_plan(config, model=model, info=info, tx=tx, injected=tuple(grid.split(",")) if grid else ())
    check_source(plan, run_info.get("network"), path)
    if plan.config.model != config.model:
        raise ConfigError(
            f"{path} was trained with the model {config.model!r}; the model given builds {plan.config.model!r}",
            "model",
        )
    return plan


def _adapted(method: Method, build: ModelFactory) -> ModelFactory:
    """The factory of the network as ``method`` trains and predicts it (``Method.adapt``), from each seed's
    key (FA's feedback is drawn from it)."""

    def built(key):
        network, variables = build(key)
        return method.adapt(network, variables, jax.random.fold_in(key, ADAPT_KEY))

    return built


def state_template(plan: Plan) -> TrainState:
    """The shapes of one seed's ``TrainState`` in the network's layout (how checkpoints hold it); nothing is computed."""
    variables = jax.eval_shape(lambda key: plan.build(key)[1], jax.random.key(0))
    return plan.learner.template(variables)


def _as_built(config: TrainConfig, network: Network, info: DatasetInfo) -> TrainConfig:
    """The config of your own network: its name, mode and depth as built (refusing a wrong input shape)."""
    if network.input_shape != tuple(info.input_shape) or network.num_classes != info.num_classes:
        raise ConfigError(
            f"the given model takes {network.input_shape} inputs and {network.num_classes} classes; "
            f"{config.dataset} has {tuple(info.input_shape)} and {info.num_classes}",
            "model",
        )
    depth = {"num_blocks": network.num_units} if network.cut_features else {"num_modules": network.num_units}
    return dataclasses.replace(config, model=network.name, mode=network.mode, head=None, **depth)
