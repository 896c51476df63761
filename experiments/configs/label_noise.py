"""Label noise: SID vs BP with 0 / 20 / 40 % of the training labels flipped.

The paper claims SID is more robust than BP under symmetric label noise. Same
network for both (MLP extractor, shared trunk, L = 10), authors' recipe (Adam
1e-3, batch 128, alpha 0.5), 10 epochs, full Fashion-MNIST, clean test set.

Command:  python experiments/run.py label_noise
Hardware: 2-core x86_64 CPU, XLA:CPU: 18 runs of ~1 min, ~20 min in all.
Expected: both lose accuracy as noise grows; the claim holds if SID's final
accuracy drops less than BP's at 20 % and 40 %.
"""

import dataclasses

from configs import Experiment
from sidjax.experiment import TrainConfig

BASE = TrainConfig(model="mlp", num_modules=10, epochs=10)

EXPERIMENT = Experiment(
    name="label_noise",
    doc=__doc__,
    runs={
        f"noise{round(100 * noise)}/{method}": dataclasses.replace(BASE, method=method, label_noise=noise)
        for noise in (0.0, 0.2, 0.4)
        for method in ("sid", "bp")
    },
    seeds=(0, 1, 2),
    smoke_runs=("noise40/*",),
)
