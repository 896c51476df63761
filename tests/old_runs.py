"""The run directories in ``tests/data/old_runs``: written by sidjax before ``TrainState`` held one
``PartState`` per part (commit bdc743b), so that every later sidjax is tested to load and resume them.

Regenerate only to add a layout, with the sidjax being pinned on ``PYTHONPATH``:

    PYTHONPATH=<checkout of that commit> .venv/bin/python tests/old_runs.py tests/data/old_runs
"""

import os
import shutil
import sys

import numpy as np

import sidjax
from sidjax.train.config import TrainConfig

OLD_RUNS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "old_runs")

CONFIGS = {
    "trunk": dict(model="mlp", num_modules=2),  # stacked units
    "blockwise_pipelined": dict(
        mode="blockwise", model="simplecnn", num_blocks=2, pipelined=True
    ),  # tuples, slots
}


def toy() -> sidjax.Dataset:
    """96 random 8x8 images of 5 classes, the first 32 also the test split."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), rng.integers(0, 5, 96)
    return sidjax.Dataset.from_arrays(images, labels, images[:32], labels[:32], name="toy")


def config(name: str, epochs: int) -> TrainConfig:
    return TrainConfig(dataset="toy", epochs=epochs, batch_size=16, tiny=True, **CONFIGS[name])


if __name__ == "__main__":
    out = sys.argv[1]
    shutil.rmtree(out, ignore_errors=True)
    for name in CONFIGS:
        sidjax.run(config(name, 2), os.path.join(out, name), dataset=toy(), progress=False)
        checkpoints = os.path.join(out, name, "checkpoints")
        for step in sorted(os.listdir(checkpoints), key=int)[:-1]:  # the last epoch's checkpoint is enough
            shutil.rmtree(os.path.join(checkpoints, step))
