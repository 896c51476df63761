"""``TrainConfig``: everything that defines a run, validated on construction.

Each field's help is its entry in the class docstring (``field_help``) and
its group is ``GROUPS``; the command line (``sidjax.train.cli``) is generated
from both. Each rule is checked by its owner and worded there: ``SIDLoss``
its alpha, divergence and smoothing, ``sidjax.methods`` what a method trains
how (called here with the config's mode), ``Placement`` its syntax;
``TrainConfig`` checks each field's range. What needs the architecture, the
devices or the data (a model name, a cut, a head, a mesh) is checked where
those are used (``sidjax.train.plan.make_plan``), still before any data is
read.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import os
import re
from typing import Any

import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.methods import EXECUTIONS, METHODS, MODES, check_training, get_method
from sidjax.placement import Placement, check_seeds

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
CUSTOM = "custom"  # the optimizer a run was given (run's tx): its fields lr .. schedule are None
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
MAX_SEED = 2**32 - 1
# The fields a grid may vary: given several values, every point of their product trains beside the
# seeds in one program, the values held in each optimizer state (optax.inject_hyperparams).
GRID_FIELDS: tuple[str, ...] = ("lr", "weight_decay")
Point = tuple[tuple[str, float], ...]  # one grid point: ((field, value), ...) in GRID_FIELDS' order


GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "image_size", "limit_train", "limit_test", "validation", "label_noise", "augment",
             "device_data_mb"),
    "model": ("model", "mode", "num_modules", "num_blocks", "head", "belief_input", "tiny", "conv_impl",
              "init_from"),
    "method": ("method", "alpha", "divergence", "label_smoothing", "pipelined", "refresh"),
    "optimisation": ("optimizer", "lr", "momentum", "weight_decay", "schedule", "epochs", "batch_size",
                     "eval_batch_size", "seed", "late_epochs"),
    "devices": ("placement", "execution", "steps_per_chunk"),
    "output": ("checkpoint_every", "checkpoint_steps"),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; the defaults are the authors' settings.

    Attributes:
      dataset: fashion_mnist, mnist, cifar10, cifar100, or folder:/root (root/{train,test}/<class>/<images>).
      image_size: image folders are resized to image_size x image_size x 3.
      limit_train: train on the first N training examples only.
      limit_test: evaluate on the first N test examples only.
      validation: hold out the last N training examples (after limit_train, with their label noise) as a validation split, evaluated every epoch, never trained on.
      label_noise: symmetric noise rate on the training labels, in [0, 1].
      augment: random crop (4-pixel padding) and horizontal flip on the device; default: on for CIFAR and folders.
      device_data_mb: keep the dataset on the device if it fits in this many MB (0: always stream from the host).
      model: the backbone: mlp, simplecnn, vgg11, resnet18 (BatchNorm), resnet18_gn (GroupNorm) or vit_tiny; with run(model=...), your network's name.
      mode: trunk (the authors' shared extractor with L belief modules) or blockwise (K blocks, no global backprop).
      num_modules: L, belief modules of the shared trunk.
      num_blocks: K, blocks of the blockwise mode.
      head: blockwise belief heads: mlp (pool, MLP), dgl (1x1 conv, 2x2 pool, MLP) or infopro (strided 3x3 conv, pool, linear); recorded as None for your own model (its network record names its heads).
      belief_input: how units read the previous belief: prob, log (log-probabilities) or none; default: the method's (none for dgl, else prob).
      tiny: narrow variants of the architectures (smoke runs and tests).
      conv_impl: the convolution's backward pass: xla, or shifted (kh*kw matmuls, for slow XLA:CPU builds).
      init_from: start from the trained network of the run in this directory (its latest checkpoint; its seed<k>/ for each seed when it trained several): its model, mode, depth, head and belief input replace this config's, the optimizer starts anew (e.g. --method readout on an hsic run).
      method: sid, dgl (greedy local learning, blockwise), bp (backprop), bp_remat (backprop with remat), noprop (NoProp, trunk).
      alpha: fidelity weight in [0, 1]: one value, or one per unit (a schedule, e.g. 0.9,0.7,0.5,0.3); recorded as None where the method reads none (bp, ff, ...) or run was given a schedule.
      divergence: forward (the authors' code: KL(p_prev || p)) or reverse (the paper: KL(p || target); needs smoothing).
      label_smoothing: epsilon of the target distribution, in [0, 1).
      pipelined: blockwise: unit k trains on unit k-1's output of the previous step (no update locking).
      refresh: blockwise, units walked in turn: unit k trains on unit k-1's output after that unit's update of this step (the HSIC bottleneck's authors' way; one more forward pass per unit).
      optimizer: adam or sgd (with momentum); recorded as custom, with lr, momentum, weight_decay and schedule None, for your own optimizer (run's tx).
      lr: learning rate; default the method's (1e-3; fa and dfa 1e-4), recorded as the value; several (1e-4,3e-4,1e-3) train as a grid beside the seeds in one program, each point in its own directory (lr<value>/), chosen on the validation split.
      momentum: sgd's momentum, in [0, 1).
      weight_decay: decoupled for adam (AdamW), L2 added to the gradient for sgd; several values are a grid, as for lr.
      schedule: the learning rate: constant, or cosine (decays to 0 over all steps).
      epochs: passes over the training data.
      batch_size: examples per training step.
      eval_batch_size: examples per evaluation step.
      seed: one seed, or several (0,1,2) trained together in one program, each in its own seed<k>/ directory.
      late_epochs: the last N epochs whose mean accuracy is a run's late mean (late_test_accuracy, late_val_accuracy); a grid's point is chosen by its late validation accuracy.
      placement: single (one device), mesh:DATA,UNIT (one program on a device mesh), stages[:N] (blockwise units in N stages on the devices).
      execution: how a local step groups its unit updates: auto, vmap, fused or sequential.
      steps_per_chunk: training steps per compiled chunk, between host syncs (0: the largest divisor of the epoch's steps up to 64; 1 for convolutional networks on CPU).
      checkpoint_every: epochs between checkpoints when writing to a directory (0: none).
      checkpoint_steps: also checkpoint inside an epoch, every N training steps (at the end of the chunk that reaches them; 0: only at epoch ends); a stop signal (SIGTERM, SIGUSR1, SIGUSR2, SIGHUP) always checkpoints where the run is.
    """

    dataset: str = "fashion_mnist"
    image_size: int = 64
    limit_train: int | None = None
    limit_test: int | None = None
    validation: int = 0
    label_noise: float = 0.0
    augment: bool | None = None
    device_data_mb: int = 4096
    model: str = "simplecnn"
    mode: str = "trunk"
    num_modules: int = 10
    num_blocks: int = 4
    head: str | None = "mlp"
    belief_input: str | None = None
    tiny: bool = False
    conv_impl: str = "xla"
    init_from: str | None = None
    method: str = "sid"
    alpha: float | tuple[float, ...] | None = 0.5
    divergence: str = "forward"
    label_smoothing: float = 0.0
    pipelined: bool = False
    refresh: bool = False
    optimizer: str = "adam"
    lr: float | tuple[float, ...] | None = None
    momentum: float | None = 0.9
    weight_decay: float | tuple[float, ...] | None = 0.0
    schedule: str | None = "constant"
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    seed: int | tuple[int, ...] = 0
    late_epochs: int = 5
    placement: str = "single"
    execution: str = "auto"
    steps_per_chunk: int = 0
    checkpoint_every: int = 1
    checkpoint_steps: int = 0

    def __post_init__(self):
        for name in ("alpha", "seed", *GRID_FIELDS):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.init_from, os.PathLike):
            object.__setattr__(self, "init_from", os.fspath(self.init_from))
        for check in (_check_choices, _check_ranges, _check_rules):
            check(self)

    @property
    def depth(self) -> int:
        """Number of units: L (trunk) or K (blockwise)."""
        return self.num_modules if self.mode == "trunk" else self.num_blocks

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.seed if isinstance(self.seed, tuple) else (self.seed,)

    @property
    def alpha_values(self) -> tuple[float, ...]:
        """The alpha values (SIDLoss's default where alpha is None: a method that reads none)."""
        alpha = SIDLoss().alpha if self.alpha is None else self.alpha
        return alpha if isinstance(alpha, tuple) else (alpha,)

    def loss(self) -> SIDLoss:
        """The local loss (``ConfigError`` naming alpha, divergence or label_smoothing)."""
        return SIDLoss(self.alpha_values if len(self.alpha_values) > 1 else self.alpha_values[0], self.divergence,
                       self.label_smoothing)  # fmt: skip

    def placement_spec(self) -> Placement:
        return Placement.parse(self.placement)

    @property
    def belief(self) -> str:
        """How units read the previous belief: ``belief_input``, else the method's default."""
        if self.belief_input is not None:
            return self.belief_input
        return get_method(self.method).default_belief_input(self.mode)

    def for_seed(self, seed: int) -> TrainConfig:
        """This config with one seed: what a separate run of that seed would be."""
        return dataclasses.replace(self, seed=seed)

    @property
    def learning_rate(self) -> float | tuple[float, ...]:
        """``lr``, or the method's default learning rate where it is None."""
        return get_method(self.method).default_lr if self.lr is None else self.lr

    @property
    def grid(self) -> dict[str, tuple[float, ...]]:
        """The fields given several values (a tuple, even of one), in ``GRID_FIELDS``' order; {} for none."""
        return {name: getattr(self, name) for name in GRID_FIELDS if isinstance(getattr(self, name), tuple)}

    def points(self) -> tuple[Point, ...]:
        """Every point of the grid (the product of its fields' values, the first field outermost); ``((),)``
        without a grid."""
        grid = self.grid
        return tuple(tuple(zip(grid, values, strict=True)) for values in itertools.product(*grid.values()))

    def for_point(self, point: Point) -> TrainConfig:
        """This config at one grid point: what a separate run of that point would be."""
        return dataclasses.replace(self, **dict(point))

    def optimizer_tx(self, total_steps: int, injected: tuple[str, ...] = ()) -> optax.GradientTransformation:
        """The optimizer of every part (stem and units), for a run of ``total_steps`` steps.

        ``injected``: grid fields whose values the optimizer state holds
        (``optax.inject_hyperparams``), so that states of one structure with
        other values step in the same program: the points of a grid. A run
        at one point takes the same steps as its grid's (tested).
        """
        lr, weight_decay = self.learning_rate, self.weight_decay
        if isinstance(lr, tuple) or isinstance(weight_decay, tuple):
            raise ValueError("optimizer_tx needs one point of the grid: config.for_point(point)")
        if not injected:
            return self._optimizer(lr, weight_decay, total_steps)
        names = {"lr": "learning_rate", "weight_decay": "weight_decay"}
        values = {names[name]: lr if name == "lr" else weight_decay for name in injected}
        fixed = {"learning_rate": lr, "weight_decay": weight_decay}

        def build(**given):
            chosen = {**fixed, **given}
            # a structure fixed by the grid: weight decay in the chain whenever it varies
            return self._optimizer(chosen["learning_rate"], chosen["weight_decay"], total_steps,
                                   decay="weight_decay" in injected)  # fmt: skip

        factory = _with_parameters(build, tuple(values))
        return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(**values)

    def _optimizer(self, lr, weight_decay, total_steps: int, decay: bool = False):
        if self.schedule == "cosine":
            lr = optax.cosine_decay_schedule(lr, total_steps)
        decay = decay or bool(weight_decay)
        if self.optimizer == "adam":
            return optax.adamw(lr, weight_decay=weight_decay) if decay else optax.adam(lr)
        sgd = optax.sgd(lr, momentum=self.momentum or None)
        return optax.chain(optax.add_decayed_weights(weight_decay), sgd) if decay else sgd

    def record(self) -> dict[str, Any]:
        """The config as JSON-ready data (tuples as lists, as read back)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainConfig:
        """A config from ``record()``'s output, including records of earlier versions (see ``migrate``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in migrate(record).items() if k in known})


def field_help() -> dict[str, str]:
    """Each field's help: its entry in ``TrainConfig``'s docstring (one line each)."""
    doc = TrainConfig.__doc__.split("Attributes:")[1]
    return dict(re.findall(r"^\s{6}(\w+): (.+)$", doc, flags=re.MULTILINE))


def migrate(record: dict[str, Any]) -> dict[str, Any]:
    """A config record of an earlier sidjax in this version's fields.

    Before the placement setting existed, runs said ``pipeline`` (off,
    synchronous or pipelined), ``devices`` (stages) and ``mesh`` (DATA,UNIT).
    """
    record = dict(record)
    pipeline, devices, mesh = record.pop("pipeline", None), record.pop("devices", 0), record.pop("mesh", None)
    if pipeline in ("synchronous", "pipelined"):
        record.setdefault("pipelined", pipeline == "pipelined")
        record.setdefault("placement", f"stages:{devices}" if devices else "stages")
    elif mesh:
        record.setdefault("placement", f"mesh:{mesh[0]},{mesh[1]}")
    # Before records said what trained: alpha for a method that reads none (or DGL's 0.5 for its fixed 1),
    # a head for the shared trunk or your own model (whose network record names its heads).
    spec = METHODS.get(record.get("method"))
    if spec is not None and not spec.uses_alpha:
        record["alpha"] = None
    elif spec is not None and spec.alpha is not None:
        record["alpha"] = spec.alpha
    if record.get("mode") == "trunk" or ":" in str(record.get("model", "")):
        record["head"] = None
    return record


def _with_parameters(build, names: tuple[str, ...]):
    """``build(**kwargs)`` as a function whose signature names ``names`` (``optax.inject_hyperparams``
    reads the hyperparameters from the factory's signature)."""

    def factory(**given):
        return build(**given)

    factory.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    )
    return factory


def _check_custom(c: TrainConfig) -> None:
    """``optimizer`` ``"custom"`` records your own optimizer: the fields it replaces are None, and only then."""
    replaced = ("lr", "momentum", "weight_decay", "schedule")
    if c.optimizer == CUSTOM and any(getattr(c, n) is not None for n in replaced):
        raise ConfigError(
            "optimizer 'custom' records a run given its own optimizer (run's tx): lr, momentum, weight_decay "
            "and schedule are then None; to train with your optimizer give run(config, tx=...)",
            "optimizer",
        )
    missing = [n for n in replaced if getattr(c, n) is None and n != "lr"]  # lr None: the method's own
    if c.optimizer != CUSTOM and missing:
        raise ConfigError(
            f"{missing[0]} is None, which only a run given its own optimizer records", missing[0]
        )


def _choice(config, name: str, choices) -> None:
    if getattr(config, name) not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {getattr(config, name)!r}", name)


def _check_choices(c: TrainConfig) -> None:
    for name in ("optimizer", "lr"):
        if callable(getattr(c, name)) or hasattr(getattr(c, name), "update"):
            raise ConfigError(
                f"{name} takes a {'name' if name == 'optimizer' else 'number'}; for your own optax optimizer "
                "or learning-rate schedule give run(config, tx=...), e.g. tx=optax.adam(schedule)",
                name,
            )
    if callable(c.alpha):
        raise ConfigError(
            "alpha takes a number or one per unit; for an alpha schedule give run(config, alpha=fn), "
            "fn(step) -> alpha",
            "alpha",
        )
    _check_custom(c)
    get_method(c.method)
    if c.init_from is not None and not (isinstance(c.init_from, str) and c.init_from):
        raise ConfigError(f"init_from must be a run's directory, got {c.init_from!r}", "init_from")
    _choice(c, "mode", MODES)
    _choice(c, "execution", EXECUTIONS)
    if c.optimizer != CUSTOM:
        _choice(c, "optimizer", OPTIMIZERS)
        _choice(c, "schedule", LR_SCHEDULES)
    if c.belief_input is not None:
        _choice(c, "belief_input", ("prob", "log", "none"))
    if c.head is not None and not isinstance(c.head, str):
        raise ConfigError(f"head must be a head's name, got {c.head!r}", "head")
    c.placement_spec()
    c.loss()  # SIDLoss checks alpha, divergence and label_smoothing


def _at_least(c: TrainConfig, name: str, low: int, optional: bool = False) -> None:
    value = getattr(c, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}", name)


def _check_ranges(c: TrainConfig) -> None:
    for name in ("image_size", "num_modules", "num_blocks", "epochs", "batch_size", "eval_batch_size"):
        _at_least(c, name, 1)
    for name in ("device_data_mb", "steps_per_chunk", "checkpoint_every", "checkpoint_steps", "validation"):
        _at_least(c, name, 0)
    for name in ("limit_train", "limit_test"):
        _at_least(c, name, 1, optional=True)
    _at_least(c, "late_epochs", 1)
    ranges = {
        "lr": ("(0, inf)", lambda v: v > 0),
        "momentum": ("[0, 1)", lambda v: 0 <= v < 1),
        "weight_decay": ("[0, inf)", lambda v: v >= 0),
        "label_noise": ("[0, 1]", lambda v: 0 <= v <= 1),
    }
    for name, (interval, inside) in ranges.items():
        value = getattr(c, name)
        if value is None and (c.optimizer == CUSTOM or name == "lr"):
            continue  # checked by _check_custom; lr None is the method's default
        several = name in GRID_FIELDS and isinstance(value, tuple)
        if several and (not value or len(set(value)) != len(value)):
            raise ConfigError(f"{name} must be one number or distinct numbers (a grid), got {value!r}", name)
        for v in value if several else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not inside(v):
                what = f"{name} must be a finite number in {interval}"
                raise ConfigError(f"{what}{' (each of the grid)' if several else ''}, got {value!r}", name)
    seeds = c.seeds
    if (
        not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)
    ):
        raise ConfigError(f"seed must be distinct integers in [0, {MAX_SEED}], got {c.seed!r}", "seed")


def _check_rules(c: TrainConfig) -> None:
    spec, placement = get_method(c.method), c.placement_spec()
    check_training(spec, c.mode, belief_input=c.belief, execution=c.execution, pipelined=c.pipelined,
                   stages=placement.kind == "stages", refresh=c.refresh)  # fmt: skip
    spec.loss(c.loss())  # alpha's length is checked against the network built (make_plan)
    check_seeds(placement, len(c.seeds) * len(c.points()))
