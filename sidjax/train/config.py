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
import json
import math
import os
import re
from typing import Any

import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.methods import EXECUTIONS, MODES, check_training, get_method
from sidjax.placement import Placement, check_seeds

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
MAX_SEED = 2**32 - 1


GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "image_size", "limit_train", "limit_test", "validation", "label_noise", "augment",
             "device_data_mb"),
    "model": ("model", "mode", "num_modules", "num_blocks", "head", "belief_input", "tiny", "conv_impl",
              "init_from"),
    "method": ("method", "alpha", "divergence", "label_smoothing", "pipelined"),
    "optimisation": ("optimizer", "lr", "momentum", "weight_decay", "schedule", "epochs", "batch_size",
                     "eval_batch_size", "seed"),
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
      head: blockwise belief heads: mlp (pool, MLP), dgl (1x1 conv, 2x2 pool, MLP) or infopro (strided 3x3 conv, pool, linear).
      belief_input: how units read the previous belief: prob, log (log-probabilities) or none; default: the method's (none for dgl, else prob).
      tiny: narrow variants of the architectures (smoke runs and tests).
      conv_impl: the convolution's backward pass: xla, or shifted (kh*kw matmuls, for slow XLA:CPU builds).
      init_from: start from the trained network of the run in this directory (its latest checkpoint; its seed<k>/ for each seed when it trained several): its model, mode, depth, head and belief input replace this config's, the optimizer starts anew (e.g. --method readout on an hsic run).
      method: sid, dgl (greedy local learning, blockwise), bp (backprop), bp_remat (backprop with remat), noprop (NoProp, trunk).
      alpha: fidelity weight in [0, 1]: one value, or one per unit (a schedule, e.g. 0.9,0.7,0.5,0.3).
      divergence: forward (the authors' code: KL(p_prev || p)) or reverse (the paper: KL(p || target); needs smoothing).
      label_smoothing: epsilon of the target distribution, in [0, 1).
      pipelined: blockwise: unit k trains on unit k-1's output of the previous step (no update locking).
      optimizer: adam or sgd (with momentum).
      lr: learning rate.
      momentum: sgd's momentum, in [0, 1).
      weight_decay: decoupled for adam (AdamW), L2 added to the gradient for sgd.
      schedule: the learning rate: constant, or cosine (decays to 0 over all steps).
      epochs: passes over the training data.
      batch_size: examples per training step.
      eval_batch_size: examples per evaluation step.
      seed: one seed, or several (0,1,2) trained together in one program, each in its own seed<k>/ directory.
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
    head: str = "mlp"
    belief_input: str | None = None
    tiny: bool = False
    conv_impl: str = "xla"
    init_from: str | None = None
    method: str = "sid"
    alpha: float | tuple[float, ...] = 0.5
    divergence: str = "forward"
    label_smoothing: float = 0.0
    pipelined: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    seed: int | tuple[int, ...] = 0
    placement: str = "single"
    execution: str = "auto"
    steps_per_chunk: int = 0
    checkpoint_every: int = 1
    checkpoint_steps: int = 0

    def __post_init__(self):
        if isinstance(self.alpha, list):
            object.__setattr__(self, "alpha", tuple(self.alpha))
        if isinstance(self.seed, list):
            object.__setattr__(self, "seed", tuple(self.seed))
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
        return self.alpha if isinstance(self.alpha, tuple) else (self.alpha,)

    def loss(self) -> SIDLoss:
        """The local loss (``ConfigError`` naming alpha, divergence or label_smoothing)."""
        return SIDLoss(self.alpha if len(self.alpha_values) > 1 else self.alpha_values[0], self.divergence,
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

    def optimizer_tx(self, total_steps: int) -> optax.GradientTransformation:
        """The optimizer of every part (stem and units), for a run of ``total_steps`` steps."""
        lr = optax.cosine_decay_schedule(self.lr, total_steps) if self.schedule == "cosine" else self.lr
        if self.optimizer == "adam":
            return optax.adamw(lr, weight_decay=self.weight_decay) if self.weight_decay else optax.adam(lr)
        sgd = optax.sgd(lr, momentum=self.momentum or None)
        return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd) if self.weight_decay else sgd

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
    return record


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
    get_method(c.method)
    if c.init_from is not None and not (isinstance(c.init_from, str) and c.init_from):
        raise ConfigError(f"init_from must be a run's directory, got {c.init_from!r}", "init_from")
    _choice(c, "mode", MODES)
    _choice(c, "execution", EXECUTIONS)
    _choice(c, "optimizer", OPTIMIZERS)
    _choice(c, "schedule", LR_SCHEDULES)
    if c.belief_input is not None:
        _choice(c, "belief_input", ("prob", "log", "none"))
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
    ranges = {
        "lr": ("(0, inf)", lambda v: v > 0),
        "momentum": ("[0, 1)", lambda v: 0 <= v < 1),
        "weight_decay": ("[0, inf)", lambda v: v >= 0),
        "label_noise": ("[0, 1]", lambda v: 0 <= v <= 1),
    }
    for name, (interval, inside) in ranges.items():
        value = getattr(c, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not inside(value)
        ):
            raise ConfigError(f"{name} must be a finite number in {interval}, got {value!r}", name)
    seeds = c.seeds
    if (
        not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)
    ):
        raise ConfigError(f"seed must be distinct integers in [0, {MAX_SEED}], got {c.seed!r}", "seed")


def _check_rules(c: TrainConfig) -> None:
    spec, placement = get_method(c.method), c.placement_spec()
    check_training(spec, c.mode, reads_belief=c.belief != "none", execution=c.execution, pipelined=c.pipelined,
                   stages=placement.kind == "stages", belief_input=c.belief)  # fmt: skip
    spec.loss(c.loss())  # alpha's length is checked against the network built (make_plan)
    check_seeds(placement, len(c.seeds))
