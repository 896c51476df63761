"""Label noise: SID vs BP with 0 / 20 / 40 % of the training labels flipped.

The paper claims SID is more robust than BP under symmetric label noise. Same
network for both (MLP extractor, shared trunk, L = 10), authors' recipe (Adam
1e-3, batch 128, alpha 0.5), 10 epochs, full Fashion-MNIST, clean test set.
BP memorises noisy labels late in training, so the claim is also tested
where that happens (runs "long/..."): the authors' SimpleCNN trunk (L = 10)
and ResNet-18 blockwise (K = 4) with 0 and 40 % noise, 50 epochs, on a GPU.

Command:  python -m experiments.run label_noise --only 'noise*'   (here; seeds train together)
          bash experiments/gpu_sweep.sh label_noise 'long/*'       (GPU; not run yet)
Hardware: "noise*": 2-core x86_64 CPU: 6 runs, each with its 3 seeds trained
together (~9-11 s per epoch for all three), ~10 min in all. "long/*": a GPU.
Expected: both lose accuracy as noise grows; the claim holds if SID's final
accuracy drops less than BP's at 20 % and 40 %.
"""

import dataclasses

from experiments.configs import Experiment
from sidjax.config import TrainConfig

BASE = TrainConfig(model="mlp", num_modules=10, epochs=10)
LONG = {
    "simplecnn_trunk": TrainConfig(model="simplecnn", num_modules=10, epochs=50),
    "resnet18_blockwise": TrainConfig(mode="blockwise", model="resnet18", num_blocks=4, epochs=50),
}

EXPERIMENT = Experiment(
    name="label_noise",
    doc=__doc__,
    runs={
        f"noise{round(100 * noise)}/{method}": dataclasses.replace(BASE, method=method, label_noise=noise)
        for noise in (0.0, 0.2, 0.4)
        for method in ("sid", "bp")
    }
    | {
        f"long/{name}/noise{round(100 * noise)}/{method}": dataclasses.replace(
            base, method=method, label_noise=noise
        )
        for name, base in LONG.items()
        for noise in (0.0, 0.4)
        for method in ("sid", "bp")
    },
    seeds=(0, 1, 2),
    smoke_runs=("noise40/*",),
)
