"""``run`` end to end on real data: seeds together, chunks, streaming, placements, your own arrays."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from conftest import needs_devices, records, tiny_config

from sidjax import ConfigError
from sidjax.data import Dataset
from sidjax.train.plan import make_plan
from sidjax.train.runner import run

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "reference_runs.json")
REFERENCE_CONFIGS = {
    "trunk_mlp_sid": tiny_config(label_noise=0.2),
    "blockwise_simplecnn_sid": tiny_config(mode="blockwise", model="simplecnn", num_blocks=2, epochs=1),
    "blockwise_vit_pipelined": tiny_config(
        mode="blockwise", model="vit_tiny", num_blocks=2, pipelined=True, epochs=1
    ),
}


def _without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in history]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the reference numbers are XLA:CPU's")
def test_same_seed_same_numbers_as_recorded(fashion_mnist):
    """Pins the numbers: a change of the engine that moves them must say why. When and how the file may be
    regenerated: tests/data/README.md (only for a change meant to move the numbers, never to pass a test)."""
    found = {}
    for name, config in REFERENCE_CONFIGS.items():
        history = []
        run(config, dataset=fashion_mnist, progress=False, on_epoch=history.append)
        found[name] = _without_times(history)
    if os.environ.get("SIDJAX_UPDATE_REFERENCE"):
        with open(REFERENCE, "w") as f:
            json.dump(found, f, indent=1)
    with open(REFERENCE) as f:
        recorded = json.load(f)
    assert list(found) == list(recorded) and all(len(found[n]) == len(recorded[n]) for n in found)
    moved = [
        f"{name} epoch {now['epoch']} {key}: {now.get(key)} != {then.get(key)}"
        for name in found
        for now, then in zip(found[name], recorded[name], strict=True)
        for key in sorted(set(now) | set(then))
        if not _same_number(now.get(key), then.get(key))
    ]
    assert not moved, "the pinned numbers moved: " + "; ".join(moved)


def _same_number(now, then) -> bool:
    """Equal, floats to float32 rounding: XLA:CPU's vector kernels round the last bit differently on
    CPUs with other vector units (AVX-512 against AVX2), and nothing else may differ."""
    if isinstance(now, list) and isinstance(then, list):
        return len(now) == len(then) and all(map(_same_number, now, then))
    if isinstance(now, float) and isinstance(then, float):
        return bool(np.isclose(now, then, rtol=2e-6, atol=0.0))
    return now == then and type(now) is type(then)


# simplecnn (unrolled convolution seeds) with the slow tests: test_your_model covers seeds of conv blocks
@pytest.mark.parametrize("model", ["mlp", pytest.param("simplecnn", marks=pytest.mark.slow)])
def test_seeds_trained_together_equal_separate_runs(fashion_mnist, tmp_path, model):
    """Same init, data order and label noise per seed. Vmapped seeds reduce their batched matmuls
    in another order, so they agree to float32 round-off (measured: 2.4e-7 in KL); a convolutional
    network on CPU unrolls its seeds instead (vmapped convolutions are slow there): bit for bit."""
    config = tiny_config(
        model=model, label_noise=0.2, seed=(0, 1, 2), epochs=1 if model == "simplecnn" else 2
    )
    exact = make_plan(config).cpu_convolutions
    together = [
        r.summary for r in run(config, str(tmp_path / "together"), dataset=fashion_mnist, progress=False)
    ]
    for seed, summary in zip((0, 1, 2), together, strict=True):
        alone = run(config.for_seed(seed), dataset=fashion_mnist, progress=False).summary
        assert summary["realised_label_noise"] == alone["realised_label_noise"] > 0.1
        assert summary["seeds_trained_together"] == 3 and summary["seed"] == seed
        if exact:
            assert summary["per_unit_kl"] == alone["per_unit_kl"]
        np.testing.assert_allclose(summary["per_unit_kl"], alone["per_unit_kl"], rtol=1e-5)
        assert abs(summary["final_test_accuracy"] - alone["final_test_accuracy"]) <= 1 / 256
        assert (tmp_path / "together" / f"seed{seed}" / "summary.json").exists()
    assert together[0]["per_unit_kl"] != together[1]["per_unit_kl"]  # the seeds really differ


@pytest.mark.parametrize("model", ["mlp", "simplecnn"])
def test_chunks_streaming_and_reruns_give_identical_numbers(fashion_mnist, tmp_path, model):
    """One step per program, scanned chunks of 4, data streamed from the host: the same numbers.

    Streaming and a rerun are equal bit for bit. A scanned step is compiled as a loop body, which
    XLA fuses differently (and XLA:CPU computes convolution gradients there with another
    algorithm): float32 round-off, measured at 2e-6 relative in KL after 8 steps.
    """
    config = tiny_config(model=model, limit_train=256, epochs=2)
    reference = tmp_path / "ref"
    run(dataclasses.replace(config, steps_per_chunk=1), str(reference), dataset=fashion_mnist, progress=False)
    expected = records(reference / "metrics.jsonl")
    variants = {
        "scanned": {"steps_per_chunk": 4},
        "streamed": {"device_data_mb": 0},
        "again": {"steps_per_chunk": 1},
    }
    for name, change in variants.items():
        summary = run(
            dataclasses.replace(config, **change), str(tmp_path / name), dataset=fashion_mnist, progress=False
        ).summary
        found = records(tmp_path / name / "metrics.jsonl")
        if name != "scanned":
            assert found == expected, name
        for new, old in zip(found, expected, strict=True):
            for key in ("train_loss", "per_unit_kl"):
                np.testing.assert_allclose(new[key], old[key], rtol=1e-5)
            assert abs(new["test_accuracy"] - old["test_accuracy"]) <= 1 / 256
        assert summary["data_on_device"] == (name != "streamed")


def test_pipelined_schedule_runs_and_differs_from_synchronous(fashion_mnist):
    config = tiny_config(mode="blockwise", model="simplecnn", num_blocks=3, epochs=1)
    sync = run(config, dataset=fashion_mnist, progress=False).summary
    piped = run(dataclasses.replace(config, pipelined=True), dataset=fashion_mnist, progress=False).summary
    assert piped["per_unit_kl"][0] == sync["per_unit_kl"][0]  # block 1 sees fresh batches either way
    assert piped["per_unit_kl"][-1] != sync["per_unit_kl"][-1]


@needs_devices(8)
@pytest.mark.parametrize(
    "change",
    [
        {"placement": "mesh:2,1", "execution": "fused"},
        {"mode": "blockwise", "model": "simplecnn", "num_blocks": 2, "placement": "stages:2"},
        {
            "mode": "blockwise",
            "model": "simplecnn",
            "num_blocks": 2,
            "placement": "stages:2",
            "pipelined": True,
        },
    ],
)
def test_placements_give_the_single_device_numbers(fashion_mnist, change):
    config = tiny_config(epochs=1, **change)
    placed = run(config, dataset=fashion_mnist, progress=False).summary
    single = run(
        dataclasses.replace(config, placement="single"), dataset=fashion_mnist, progress=False
    ).summary
    np.testing.assert_allclose(placed["per_unit_kl"], single["per_unit_kl"], rtol=1e-4)


def test_your_own_arrays_train_without_tfds():
    """Four noisy class templates: a problem a linear model solves; uint8 arrays as numpy."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (4, 8, 8, 1))

    def split(n):
        labels = rng.integers(0, 4, n)
        noise = rng.normal(0, 40, (n, 8, 8, 1))
        return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

    dataset = Dataset.from_arrays(*split(512), *split(256), name="templates")
    assert dataset.num_classes == 4 and dataset.input_shape == (8, 8, 1)
    summary = run(tiny_config(dataset="templates", epochs=3), dataset=dataset, progress=False).summary
    assert summary["final_test_accuracy"] > 0.9  # chance is 0.25
    with pytest.raises(ConfigError, match="labels must lie in"):
        Dataset.from_arrays(
            np.zeros((2, 4, 4)), np.array([0, 5]), np.zeros((1, 4, 4)), np.array([0]), num_classes=2
        )
    with pytest.raises(ConfigError, match="the given dataset is 'templates' but dataset is 'fashion_mnist'"):
        run(tiny_config(), dataset=dataset, progress=False)


def test_real_fashion_mnist_short_run_learns(fashion_mnist, tmp_path):
    """SID, MLP extractor, 10k real training examples, 2 epochs: >= 80 % test accuracy."""
    config = tiny_config(num_modules=4, tiny=False, limit_train=10_000, limit_test=None, batch_size=128)
    summary = run(config, str(tmp_path), dataset=fashion_mnist, progress=False).summary
    assert summary["num_train"] == 10_000 and summary["num_test"] == 10_000
    assert summary["final_test_accuracy"] >= 0.80, summary
    assert summary["per_unit_kl"][-1] < summary["per_unit_kl"][0]  # the belief sharpens with depth


@pytest.mark.slow
def test_real_fashion_mnist_simplecnn_sid_and_bp(fashion_mnist, tmp_path):
    """The paper's network on 12k real examples, one epoch each (~2 min on 2 cores)."""
    for method in ("sid", "bp"):
        config = tiny_config(method=method, model="simplecnn", tiny=False, epochs=1, limit_train=12_000,
                             limit_test=2_000, batch_size=128, num_modules=10)  # fmt: skip
        summary = run(config, str(tmp_path / method), dataset=fashion_mnist, progress=False).summary
        assert summary["final_test_accuracy"] >= 0.6, summary
