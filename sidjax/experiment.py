"""One training run, end to end: config, data, train, evaluate, result files.

``experiments/train.py`` is a thin CLI over ``run``; notebooks and the main
comparison call it directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from sidjax.architectures import ARCHITECTURES
from sidjax.data import (
    DATASETS,
    Dataset,
    DatasetUnavailableError,
    dataset_info,
    epoch_batches,
    is_image_folder,
    load_dataset,
    random_crop_flip,
    symmetric_label_noise,
)
from sidjax.evaluation import evaluate, make_eval_step
from sidjax.losses import DIVERGENCES
from sidjax.network import NetParams, Network, make_blockwise_network, make_network
from sidjax.ops import CONV_IMPLS
from sidjax.parallel import check_mesh, gather, make_mesh, shard_batch, shard_state
from sidjax.pipeline import SCHEDULES, BlockPipeline
from sidjax.steps import EXECUTIONS, METHODS, SIDLoss, TrainState, init_train_state, make_train_step

MODES: tuple[str, ...] = ("trunk", "blockwise")
PIPELINES: tuple[str, ...] = ("off", *SCHEDULES)
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")


class ConfigError(ValueError):
    """A run configuration that cannot be run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (the defaults are the authors' settings)."""

    method: str = "sid"
    mode: str = "trunk"
    dataset: str = "fashion_mnist"  # a TFDS name, or folder:/path (root/{train,test}/<class>/images)
    image_size: int = 64  # image folders are resized to image_size x image_size x 3
    model: str = "simplecnn"
    num_modules: int = 10  # L, belief modules of the shared trunk
    num_blocks: int = 4  # K, blocks of the blockwise mode
    execution: str = "auto"
    pipeline: str = "off"  # blockwise: off | synchronous | pipelined (blocks placed on devices)
    devices: int = 0  # stages for --pipeline; 0: one per block if there are enough devices, else 1
    mesh: tuple[int, int] | None = None  # trunk: (data, module) mesh over the devices of all processes
    alpha: float | tuple[float, ...] = 0.5  # one value, or one per unit (a schedule)
    divergence: str = "forward"
    label_smoothing: float = 0.0
    label_noise: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd (with momentum)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # decoupled for adam (AdamW), L2 added to the gradient for sgd
    schedule: str = "constant"  # constant | cosine (decays lr to 0 over all steps)
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    augment: bool | None = None  # None: on for CIFAR and image folders, off otherwise
    conv_impl: str = "xla"
    eval_batch_size: int = 1000
    tiny: bool = False  # narrow variants of the architectures (smoke runs)
    checkpoint_every: int = 1  # epochs between checkpoints when writing to a directory; 0: none

    def validate(self) -> None:
        """Raises ``ConfigError`` with one line naming the bad setting."""
        checks = [
            (self.method in METHODS, f"--method must be one of {METHODS}, got {self.method!r}"),
            (self.mode in MODES, f"--mode must be one of {MODES}, got {self.mode!r}"),
            (
                self.execution in EXECUTIONS,
                f"--execution must be one of {EXECUTIONS}, got {self.execution!r}",
            ),
            (
                self.dataset in DATASETS or is_image_folder(self.dataset),
                f"--dataset must be one of {DATASETS} or folder:/path/to/images, got {self.dataset!r}",
            ),
            (self.image_size >= 1, f"--image-size must be >= 1, got {self.image_size}"),
            (
                self.model in ARCHITECTURES,
                f"--model must be one of {tuple(ARCHITECTURES)}, got {self.model!r}",
            ),
            (
                self.divergence in DIVERGENCES,
                f"--divergence must be one of {DIVERGENCES}, got {self.divergence!r}",
            ),
            (
                self.conv_impl in CONV_IMPLS,
                f"--conv-impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}",
            ),
            (self.num_modules >= 1, f"--num-modules must be >= 1, got {self.num_modules}"),
            (self.num_blocks >= 1, f"--num-blocks must be >= 1, got {self.num_blocks}"),
            (self.pipeline in PIPELINES, f"--pipeline must be one of {PIPELINES}, got {self.pipeline!r}"),
            (
                self.pipeline == "off" or (self.mode == "blockwise" and self.method in ("sid", "dgl")),
                f"--pipeline {self.pipeline} places blocks on devices: it needs --mode blockwise and "
                f"--method sid or dgl (got {self.mode}, {self.method})",
            ),
            (
                self.mesh is None or (self.mode == "trunk" and len(self.mesh) == 2),
                f"--mesh takes DATA,MODULE for --mode trunk (blockwise blocks go on devices with --pipeline), "
                f"got {self.mesh} with --mode {self.mode}",
            ),
            (
                0 <= self.devices <= len(jax.devices()),
                f"--devices must lie in [0, {len(jax.devices())}] ({len(jax.devices())} devices are available), "
                f"got {self.devices}",
            ),
            (
                self.method != "dgl" or self.mode == "blockwise",
                "--method dgl is greedy blockwise learning: it needs --mode blockwise",
            ),
            (
                all(0.0 <= a <= 1.0 for a in self.alpha_values),
                f"--alpha must lie in [0, 1], got {self.alpha}",
            ),
            (
                len(self.alpha_values) in (1, self.depth),
                f"--alpha has {len(self.alpha_values)} values but the network has {self.depth} "
                "units; give one value or one per unit",
            ),
            (
                self.optimizer in OPTIMIZERS,
                f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
            ),
            (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (0.0 <= self.momentum < 1.0, f"--momentum must lie in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0.0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (
                self.checkpoint_every >= 0,
                f"--checkpoint-every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}",
            ),
            (
                0.0 <= self.label_smoothing < 1.0,
                f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}",
            ),
            (0.0 <= self.label_noise <= 1.0, f"--label-noise must lie in [0, 1], got {self.label_noise}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (
                self.limit_train is None or self.limit_train >= 1,
                f"--limit-train must be >= 1, got {self.limit_train}",
            ),
            (
                self.limit_test is None or self.limit_test >= 1,
                f"--limit-test must be >= 1, got {self.limit_test}",
            ),
            (
                not (self.divergence == "reverse" and self.label_smoothing == 0.0),
                "--divergence reverse needs --label-smoothing > 0 (KL(p || one-hot) is infinite); try 0.1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def alpha_values(self) -> tuple[float, ...]:
        return tuple(self.alpha) if isinstance(self.alpha, tuple | list) else (self.alpha,)

    def loss(self) -> SIDLoss:
        alpha = self.alpha_values if len(self.alpha_values) > 1 else self.alpha_values[0]
        return SIDLoss(alpha, self.divergence, self.label_smoothing)

    def optimizer_tx(self, total_steps: int) -> optax.GradientTransformation:
        """The optimizer of every part (stem and units), for a run of ``total_steps`` steps."""
        lr = optax.cosine_decay_schedule(self.lr, total_steps) if self.schedule == "cosine" else self.lr
        if self.optimizer == "adam":
            return optax.adamw(lr, weight_decay=self.weight_decay) if self.weight_decay else optax.adam(lr)
        sgd = optax.sgd(lr, momentum=self.momentum or None)
        return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd) if self.weight_decay else sgd

    @property
    def depth(self) -> int:
        """Number of belief units: L (trunk) or K (blockwise)."""
        return self.num_modules if self.mode == "trunk" else self.num_blocks

    def build(self, input_shape: tuple[int, ...], num_classes: int, key) -> tuple[Network, NetParams]:
        """The network this config trains (``ConfigError`` for a cut the model does not allow)."""
        try:
            if self.mode == "trunk":
                return make_network(
                    self.model,
                    input_shape,
                    num_classes,
                    self.num_modules,
                    key,
                    conv_impl=self.conv_impl,
                    tiny=self.tiny,
                )
            return make_blockwise_network(
                self.model,
                input_shape,
                num_classes,
                self.num_blocks,
                key,
                belief_input=self.method != "dgl",
                conv_impl=self.conv_impl,
                tiny=self.tiny,
            )
        except ValueError as err:
            raise ConfigError(f"--model {self.model} --mode {self.mode}: {err}") from err


def _prepare_data(config: TrainConfig, dataset: Dataset) -> tuple[Dataset, float]:
    train_x, train_y = dataset.train_images, dataset.train_labels
    test_x, test_y = dataset.test_images, dataset.test_labels
    if config.limit_train is not None:
        train_x, train_y = train_x[: config.limit_train], train_y[: config.limit_train]
    if config.limit_test is not None:
        test_x, test_y = test_x[: config.limit_test], test_y[: config.limit_test]
    if len(train_y) < config.batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(train_y)} training examples; "
            "lower --batch-size or raise --limit-train"
        )
    realised = 0.0
    if config.label_noise > 0:
        train_y, realised = symmetric_label_noise(
            train_y, config.label_noise, dataset.num_classes, config.seed
        )
    data = dataclasses.replace(
        dataset, train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y
    )
    return data, realised


RESULT_FILES = ("metrics.jsonl", "summary.json", "config.json", "checkpoints")


def _config_record(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists, as read back


def _prepare_out_dir(out_dir: str, config: TrainConfig, overwrite: bool, resume: bool) -> None:
    """Creates ``out_dir``; refuses to mix this run with another one's files."""
    existing = [f for f in RESULT_FILES if os.path.exists(os.path.join(out_dir, f))]
    if existing and resume:
        if not os.path.exists(os.path.join(out_dir, "config.json")):
            raise ConfigError(f"--resume: {out_dir} has no config.json (not written by this version)")
        with open(os.path.join(out_dir, "config.json")) as f:
            saved = json.load(f)
        now = _config_record(config)
        # Only the number of epochs may grow, and not under a schedule that depends on it.
        fixed = [k for k in now if k != "epochs" or config.schedule != "constant"]
        changed = [k for k in fixed if saved.get(k) != now[k]]
        if changed:
            raise ConfigError(
                f"--resume: {out_dir} holds a run with other settings "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); use the same flags or another --out"
            )
        return
    if existing and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to replace it, or another --out"
        )
    os.makedirs(out_dir, exist_ok=True)
    for f in existing:
        path = os.path.join(out_dir, f)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(_config_record(config), f, indent=2)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` file (a torn last line, from a kill, is dropped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def _checkpoint_manager(out_dir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")), options=options)


def _resume(
    out_dir: str, manager: ocp.CheckpointManager | None, state: TrainState
) -> tuple[TrainState, list[dict[str, Any]]]:
    """The state and metrics history of the last checkpointed epoch (fresh ones if there is none).

    ``metrics.jsonl`` keeps its lines up to that epoch; lines of later epochs,
    written before the run was stopped, are dropped since they will be redone.
    """
    epoch = manager.latest_step() if manager is not None else None
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    history = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    if epoch is None:
        history = []
    else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        history = [r for r in history if r["epoch"] <= epoch]
        if [r["epoch"] for r in history] != list(range(1, epoch + 1)):
            raise ConfigError(f"--resume: {metrics_path} does not hold epochs 1..{epoch} of the checkpoint")
    tmp = metrics_path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    os.replace(tmp, metrics_path)
    return state, history


def run(
    config: TrainConfig,
    out_dir: str | None = None,
    *,
    dataset: Dataset | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Trains and evaluates one configuration.

    Args:
      config: the run.
      out_dir: if given, ``config.json``, ``metrics.jsonl`` (one line per
        epoch, flushed as it is written), orbax checkpoints every
        ``config.checkpoint_every`` epochs under ``checkpoints/`` and, at the
        end, ``summary.json`` go here.
      dataset: an already loaded dataset (skips loading; must match
        ``config.dataset``).
      data_dir, manual_dir: passed to ``sidjax.data.load_dataset``.
      progress: show a tqdm bar per epoch.
      overwrite: replace the files of an earlier run in ``out_dir``.
      resume: continue the run in ``out_dir`` from its last checkpoint (same
        config; ``epochs`` may grow under a constant schedule). The result
        equals an uninterrupted run's. A finished run is returned as is.
      on_epoch: called with each epoch's metrics record.

    Returns:
      The summary dict (also written to ``out_dir/summary.json``).
    """
    config.validate()
    if jax.process_count() > 1:  # every process trains; process 0 alone writes the files
        if resume:
            raise ConfigError("--resume is for single-process runs; continue multi-process runs anew")
        out_dir = out_dir if jax.process_index() == 0 else None
    if resume and out_dir is None:
        raise ConfigError("--resume needs --out, the directory of the run to continue")
    if resume and os.path.exists(os.path.join(out_dir, "summary.json")):
        with open(os.path.join(out_dir, "summary.json")) as f:
            summary = json.load(f)
        if summary.get("epochs") == config.epochs:
            _prepare_out_dir(out_dir, config, overwrite, resume)  # same settings?
            return summary
    # Build first: a config the model does not allow fails before any data is loaded.
    try:
        input_shape, num_classes = dataset_info(config.dataset, config.image_size)
    except DatasetUnavailableError as err:
        raise ConfigError(str(err)) from err
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    network, params = config.build(input_shape, num_classes, init_key)
    augment_on = (
        config.augment
        if config.augment is not None
        else config.dataset.startswith("cifar") or is_image_folder(config.dataset)
    )
    augment = random_crop_flip if augment_on else None

    def build_step(total_steps: int) -> tuple[Callable, Callable[[], Any], Callable[[Any], TrainState]]:
        """``(step, init_state, to_train_state)``: ``init_state()`` places a fresh state (a
        ``PipelineState`` with --pipeline), so checking a config places nothing."""
        tx = config.optimizer_tx(total_steps)
        try:
            if config.pipeline != "off":
                devices = jax.devices()[: config.devices] if config.devices else None
                pipe = BlockPipeline(
                    network,
                    tx,
                    config.method,
                    config.loss(),
                    schedule=config.pipeline,
                    devices=devices,
                    augment=augment,
                )
                return pipe.step, lambda: pipe.init(params, input_shape, config.batch_size), pipe.gather
            step = make_train_step(
                network,
                tx,
                config.method,
                config.loss(),
                execution=config.execution,
                augment=augment,
                donate=True,
            )
            if config.mesh is None:
                return step, lambda: init_train_state(params, tx), lambda state: state
            mesh = make_mesh(*config.mesh)
            check_mesh(network, mesh, config.batch_size)
        except ValueError as err:
            raise ConfigError(str(err)) from err

        def sharded_step(state, batch, key):
            return step(state, shard_batch(batch, network, mesh), key)

        return (
            sharded_step,
            lambda: shard_state(init_train_state(params, tx), network, mesh),
            lambda state: jax.tree.map(jnp.asarray, gather(state)),
        )

    build_step(1)  # a method/execution the network does not allow fails here, before the data
    eval_step = make_eval_step(network, config.label_smoothing)
    if out_dir is not None:
        _prepare_out_dir(out_dir, config, overwrite, resume)

    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir, manual_dir, image_size=config.image_size)
    elif dataset.name != config.dataset:
        raise ConfigError(f"the given dataset is {dataset.name!r} but the config says {config.dataset!r}")
    if dataset.input_shape != input_shape:
        raise ConfigError(f"{config.dataset} images are {dataset.input_shape}, expected {input_shape}")
    data, realised_noise = _prepare_data(config, dataset)
    steps_per_epoch = len(data.train_labels) // config.batch_size
    step, init_state, to_train_state = build_step(steps_per_epoch * config.epochs)
    state = init_state()

    # Compile (and warm up) on a copy, so that epoch times exclude compilation.
    x0 = jnp.zeros((config.batch_size, *data.input_shape), jnp.float32)
    y0 = jnp.zeros((config.batch_size,), jnp.int32)
    start = time.perf_counter()
    jax.block_until_ready(step(jax.tree.map(jnp.copy, state), (x0, y0), train_key))
    compile_time = time.perf_counter() - start

    # Checkpoints are single-process (a multi-process run's state spans hosts).
    checkpoints = out_dir and config.checkpoint_every and jax.process_count() == 1
    manager = _checkpoint_manager(out_dir) if checkpoints else None
    history: list[dict[str, Any]] = []
    if resume:
        state, history = _resume(out_dir, manager, state)
    metrics_file = open(os.path.join(out_dir, "metrics.jsonl"), "a") if out_dir else None
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            batches = epoch_batches(
                data.train_images, data.train_labels, config.batch_size, config.seed, epoch
            )
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                desc=f"{config.method} epoch {epoch}/{config.epochs}",
                disable=not progress,
                leave=False,
                mininterval=0.1 if sys.stderr.isatty() else 30.0,  # keep CI logs short
            )
            start = time.perf_counter()
            step_metrics = []
            for x, y in bar:
                state, metrics = step(state, (jnp.asarray(x), jnp.asarray(y)), train_key)
                step_metrics.append(metrics)
            jax.block_until_ready(state)
            epoch_time = time.perf_counter() - start
            means = jax.device_get(jax.tree.map(lambda *m: jnp.stack(m).mean(0), *step_metrics))
            start = time.perf_counter()
            test = evaluate(
                eval_step,
                to_train_state(state).params,
                data.test_images,
                data.test_labels,
                config.eval_batch_size,
            )
            record = {
                "epoch": epoch,
                "train_loss": float(means["loss"]),
                "train_ce": float(means["ce"]),
                "train_accuracy": float(means["accuracy"]),
                "test_accuracy": test["accuracy"],
                "per_module_accuracy": test["per_module_accuracy"],
                "per_module_kl": test["per_module_kl"],
                "epoch_time_s": epoch_time,
                "eval_time_s": time.perf_counter() - start,
            }
            if not np.isfinite(record["train_loss"]):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss {record['train_loss']}); lower --lr"
                )
            history.append(record)
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if manager and (epoch % config.checkpoint_every == 0 or epoch == config.epochs):
                manager.save(epoch, args=ocp.args.StandardSave(state))
            if on_epoch:
                on_epoch(record)
            if progress:
                tqdm.write(
                    f"{config.method} epoch {epoch}: loss {record['train_loss']:.4f}, "
                    f"test acc {record['test_accuracy']:.4f}, {epoch_time:.1f}s"
                )
    finally:
        if metrics_file:
            metrics_file.close()
        if manager:
            manager.close()

    train_time = sum(r["epoch_time_s"] for r in history)
    examples = steps_per_epoch * config.batch_size * config.epochs
    summary = {
        **_config_record(config),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in history),
        "best_epoch": max(history, key=lambda r: r["test_accuracy"])["epoch"],
        "per_module_accuracy": history[-1]["per_module_accuracy"],
        "per_module_kl": history[-1]["per_module_kl"],
        "train_time_s": train_time,
        "time_per_epoch_s": train_time / config.epochs,
        "examples_per_s": examples / train_time,
        "compile_time_s": compile_time,
        "num_train": int(len(data.train_labels)),
        "num_test": int(len(data.test_labels)),
        "realised_label_noise": realised_noise,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "host": f"{platform.machine()}, {os.cpu_count()} cpus",
        "jax_version": jax.__version__,
        "num_processes": jax.process_count(),
    }
    if out_dir:
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
