"""Alpha ablation: the fidelity/consistency trade-off and the two divergences.

SID, trunk mode, MLP extractor, L = 10, 10 epochs on full Fashion-MNIST:
alpha in {0.1, 0.3, 0.5, 0.7, 0.9, 1.0}; a per-module schedule going linearly
from 0.9 (module 1) to 0.1 (module 10), large early, small late; and the
paper's reverse-KL form against the forward form at alpha 0.5, both with label
smoothing 0.1 (the reverse form needs it).

Command:  python -m experiments.run alpha
Hardware: 2-core x86_64 CPU: 9 runs, each with its 2 seeds trained together
(~6.2 s per epoch for both), ~10 min in all.
Expected: alpha = 1 (no consistency term) makes every module a separate
classifier; the closed-form minimiser says small alpha slows how fast the
belief approaches the target with depth, large alpha makes depth useless.
"""

import dataclasses

import numpy as np

from experiments.configs import Experiment
from sidjax.train.config import TrainConfig

BASE = TrainConfig(model="mlp", num_modules=10, epochs=10)
SCHEDULE = tuple(round(float(a), 4) for a in np.linspace(0.9, 0.1, BASE.num_modules))

EXPERIMENT = Experiment(
    name="alpha",
    doc=__doc__,
    runs={
        **{
            f"alpha{alpha:.1f}": dataclasses.replace(BASE, alpha=alpha)
            for alpha in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
        },
        "schedule_0.9_to_0.1": dataclasses.replace(BASE, alpha=SCHEDULE),
        "forward_ls0.1": dataclasses.replace(BASE, label_smoothing=0.1),
        "reverse_ls0.1": dataclasses.replace(BASE, divergence="reverse", label_smoothing=0.1),
    },
    seeds=(0, 1),
    smoke_runs=("alpha0.5", "schedule_*", "reverse_*"),
)
