"""Pipeline staleness: blockwise SID, synchronous vs pipelined schedule, same network and epochs.

The pipelined schedule trains block k at step t on block k-1's output from
step t-1 (one step stale), so all blocks update at once with no update
locking (sidjax.pipelined). What does the staleness cost in accuracy?
SimpleCNN cut into K = 4 blocks, SID alpha 0.5, Adam 1e-3, batch 128, 2
epochs on full Fashion-MNIST. Placement does not change the numbers (tested),
so this runs on one device, each schedule as one program per step.

Command:  python -m experiments.run pipeline
Hardware: 2-core x86_64 CPU: 2 runs of 2 epochs, 2.5-2.7 min per epoch, ~11 min.
Expected: a small loss for the pipelined schedule (stale inputs, and block k
sees each batch k steps late), shrinking as training settles.
"""

import dataclasses

from experiments.configs import Experiment
from sidjax.train.config import TrainConfig

BASE = TrainConfig(mode="blockwise", model="simplecnn", num_blocks=4, epochs=2)

EXPERIMENT = Experiment(
    name="pipeline",
    doc=__doc__,
    runs={
        schedule: dataclasses.replace(BASE, pipelined=schedule == "pipelined")
        for schedule in ("synchronous", "pipelined")
    },
)
