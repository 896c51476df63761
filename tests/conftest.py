"""Test set-up: 8 simulated CPU devices (set before jax is imported), full f32 matmuls, tiny models."""

import atexit
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests compile the same programs (a run, then its resume; the CLI in a subprocess, then in-process).
# One compilation cache per test session, shared by the xdist workers and every subprocess through the
# environment, compiles each once (those that take over 0.3 s). Its size limit turns on its file lock, so
# no worker reads a half-written entry (it needs filelock, a dev dependency). Deleted when the process that
# made it exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and importlib.util.find_spec("filelock"):
    _cache_dir = tempfile.mkdtemp(prefix="sidjax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache_dir,
        JAX_COMPILATION_CACHE_MAX_SIZE=str(4 << 30),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from sidjax import make_blockwise_network, make_network  # noqa: E402

# Tests compare float32 computations; GPUs default f32 matmuls to TF32 (1e-4 relative), CPUs ignore this.
jax.config.update("jax_default_matmul_precision", "highest")


def needs_devices(count: int):
    """Skips where fewer than ``count`` devices exist (CPU runs simulate 8 through XLA_FLAGS above)."""
    return pytest.mark.skipif(
        jax.device_count() < count,
        reason=f"needs {count} devices; this {jax.default_backend()} backend has {jax.device_count()} "
        "(on CPU, XLA_FLAGS simulates 8)",
    )


NUM_CLASSES = 5
NUM_MODULES = 3
INPUT_SHAPE = (8, 8, 1)


def tiny_network(model: str = "mlp", num_modules: int = NUM_MODULES, seed: int = 0, **kwargs):
    """A small network (8x8x1 inputs, 5 classes) whose compiles take well under a second."""
    return make_network(
        model,
        INPUT_SHAPE,
        NUM_CLASSES,
        num_modules,
        jax.random.key(seed),
        feature_dim=8,
        module_hidden=16,
        tiny=True,
        **kwargs,
    )


def tiny_blockwise(model, k, input_shape=INPUT_SHAPE, belief_input="prob", seed=0, **kwargs):
    """A tiny blockwise network cut into ``k`` blocks (5 classes)."""
    return make_blockwise_network(
        model,
        input_shape,
        NUM_CLASSES,
        k,
        jax.random.key(seed),
        head_hidden=8,
        belief_input=belief_input,
        tiny=True,
        **kwargs,
    )


def tiny_batch(batch: int = 16, seed: int = 1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (batch, *INPUT_SHAPE)), jax.random.randint(ky, (batch,), 0, NUM_CLASSES)


@pytest.fixture
def mlp_net():
    return tiny_network("mlp")


@pytest.fixture
def batch():
    return tiny_batch()


@dataclasses.dataclass
class Counter:
    count: int = 0


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations inside the block (JAX's public monitoring events)."""
    counter = Counter()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter.count += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def tree_max_abs(tree) -> float:
    return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="session")
def fashion_mnist():
    """Real Fashion-MNIST, read from its original files (Debian's dataset-fashion-mnist)."""
    from sidjax.data import load_dataset

    return load_dataset("fashion_mnist")


def tiny_config(**overrides):
    """A run that takes a second or two: MLP extractor, 3 modules, 512 real training examples."""
    from sidjax.train.config import TrainConfig

    settings = dict(
        model="mlp", num_modules=3, epochs=2, limit_train=512, limit_test=256, batch_size=64, tiny=True
    )
    return TrainConfig(**{**settings, **overrides})


def records(path) -> list[dict]:
    """metrics.jsonl without the timings, which differ between runs."""
    return [
        {k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
        for line in open(path).read().splitlines()
    ]


# Variants left to ``make test-slow`` for time (the default suite stays near 12 minutes on 2 cores): each
# property keeps at least one variant in the default suite, and these repeat it on larger networks, other
# methods or more devices.
SLOW_VARIANTS = {
    "test_experiments.py::test_smoke_variant_runs_end_to_end_on_real_data[blockwise_heads]",
    "test_experiments.py::test_config_documents_itself_and_plans_without_data[main_table]",
    "test_grid.py::test_each_grid_point_equals_that_point_trained_alone[mlp-grid2]",
    "test_grid.py::test_each_grid_point_equals_that_point_trained_alone[simplecnn-grid1]",
    "test_check_method.py::test_every_built_in_method_passes_its_own_check[sid-blockwise]",
    "test_check_method.py::test_every_built_in_method_passes_its_own_check[noprop-trunk]",
    "test_your_model.py::test_executions_agree_on_params_and_statistics[dgl]",
    "test_blockwise.py::test_fused_and_sequential_execution_agree[resnet18-4-shape2]",
    "test_blockwise.py::test_fused_and_sequential_execution_agree[vit_tiny-2-shape3]",
    "test_blockwise.py::test_no_gradient_crosses_a_block_boundary[resnet18-4-shape2]",
    "test_blockwise.py::test_tiny_variants_train_with_the_objective_going_down[bp-resnet18-4-shape2]",
    "test_blockwise.py::test_tiny_variants_train_with_the_objective_going_down[sid-resnet18-4-shape2]",
    "test_blockwise.py::test_tiny_variants_train_with_the_objective_going_down[bp-vit_tiny-2-shape3]",
    "test_blockwise.py::test_architectures_in_all_three_uses[shape0-simplecnn]",
    "test_pipeline.py::test_pipelined_single_program_equals_the_recurrence[vit_tiny-4-vmap]",
    "test_pipeline.py::test_synchronous_stages_equal_the_single_device_step[vit_tiny-4-shape2-4]",
    "test_local_rules.py::test_stacked_units_split_over_a_unit_mesh_equal_one_device[quiet]",
    "test_local_rules.py::test_the_sequential_step_holds_less_than_the_fused_one[quiet]",
    "test_local_rules.py::test_the_pipelined_schedule_is_its_one_step_stale_recurrence[sequential-sid]",
    "test_local_rules.py::test_the_pipelined_schedule_is_its_one_step_stale_recurrence[sequential-hsic]",
    "test_local_rules.py::test_the_pipelined_schedule_is_its_one_step_stale_recurrence[fused-hsic]",
    "test_local_rules.py::test_the_pipelined_schedule_is_its_one_step_stale_recurrence[fused-ff]",
    "test_local_rules.py::test_stages_equal_one_device[True-hsic]",
    "test_local_rules.py::test_stages_equal_one_device[True-dgl]",
    "test_local_rules.py::test_stages_equal_one_device[False-ff]",
    "test_local_rules.py::test_stages_equal_one_device[False-quiet]",
    "test_recipe.py::test_a_scheduled_alpha_equals_its_value_fixed_at_each_step[vmap-True-single]",
    "test_recipe.py::test_a_scheduled_alpha_equals_its_value_fixed_at_each_step[sequential-False-single]",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("tests/", 1)[-1] in SLOW_VARIANTS:
            item.add_marker(pytest.mark.slow)
