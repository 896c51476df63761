# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Parallel modules: one device, a mesh, blocks in stages
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sidjax/sidjax/blob/main/notebooks/03_parallel_modules.ipynb)
#
# SID's modules never exchange gradients, so their updates can run side by
# side. On one device the stacked modules are updated with `jax.vmap`; on
# many, the module axis is split over a mesh; blockwise networks can be cut
# into stages, one program each. This notebook uses the devices it finds: a
# GPU or TPU runtime's, or, on a CPU runtime, 8 simulated devices (that checks
# the logic, the same numbers as one device, but shows no speed-up: they share
# the same cores; `SIDJAX_NOTEBOOK_DEVICES=1` simulates one). With one device
# the mesh part says so and moves on. `SIDJAX_NOTEBOOK_TINY=1` runs a tiny
# budget.

# %%
import importlib.util
import os
import subprocess
import sys
import time

TINY = os.environ.get("SIDJAX_NOTEBOOK_TINY", "0") == "1"
if importlib.util.find_spec("sidjax") is None:  # e.g. on Colab: install this repository
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sidjax @ git+https://github.com/sidjax/sidjax"],
                   check=True)  # fmt: skip

import jax  # noqa: E402

# Simulated CPU devices (used only where the runtime is a CPU); set before JAX starts its backends.
jax.config.update("jax_num_cpu_devices", int(os.environ.get("SIDJAX_NOTEBOOK_DEVICES", "8")))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import sidjax  # noqa: E402

n = jax.device_count()
print(n, "device(s):", jax.devices()[0].device_kind, "| tiny budget:", TINY)

# %% [markdown]
# ## The shared trunk on one device and on a (data, unit) mesh
# The same step (`sidjax.make_learner`); only its placement changes: where the
# state lives and how the batch is split.

# %%
dataset = sidjax.load_dataset("fashion_mnist")
batch_size, steps = (64, 5) if TINY else (256, 30)
x = dataset.normalise(dataset.train_images[:batch_size])
y = dataset.train_labels[:batch_size]
network, variables = sidjax.make_network("mlp", dataset.input_shape, 10, 8, jax.random.key(0))
tx = optax.adam(1e-3)

placements = ["single"]
for data, unit in ((1, min(n, 8)), (2, min(n, 8) // 2)):  # meshes that divide the 8 modules
    if data * unit > 1 and data * unit <= n and 8 % unit == 0:
        placements.append(f"mesh:{data},{unit}")
if len(placements) == 1:
    print("one device: nothing to shard here; on a multi-device runtime the same step runs on a mesh")
results = {}
for placement in placements:
    learner = sidjax.make_learner(
        network, tx, "sid", sidjax.SIDLoss(0.5), placement=placement, batch_size=batch_size
    )
    state = learner.init(jax.tree.map(np.copy, variables))
    state, _ = learner.step(state, (x, y), jax.random.key(0))  # compile
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = learner.step(state, (x, y), jax.random.key(0))
    jax.block_until_ready(state)
    results[placement] = (state, (time.perf_counter() - start) / steps)

reference = results["single"][0].params
for name, (state, seconds) in results.items():
    gap = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference), strict=True)
    )
    print(f"{name:14s}: {1000 * seconds:7.2f} ms/step, max |params - 1-device params| = {gap:.1e}")

# %% [markdown]
# ## Blockwise SID in stages
# Cut a SimpleCNN into K = 4 blocks and run them as 4 stages, one program
# each, spread over the devices there are (several stages share a device when
# there are fewer). The synchronous schedule is the exact blockwise step; the
# pipelined one feeds block k the previous step's output of block k-1, so all
# blocks update at once (no update locking).

# %%
shape = dataset.input_shape
blockwise, bvariables = sidjax.make_blockwise_network("simplecnn", shape, 10, 4, jax.random.key(0), tiny=TINY)
n_train = 6_400 if TINY else 12_800
curves, test_accuracy = {}, {}
for pipelined in (False, True):
    name = "pipelined" if pipelined else "synchronous"
    learner = sidjax.make_learner(blockwise, tx, "sid", sidjax.SIDLoss(0.5), pipelined=pipelined,
                                  placement="stages:4", devices=jax.devices()[:4], batch_size=128)  # fmt: skip
    state = learner.init(jax.tree.map(np.copy, bvariables))
    losses = []
    for i in range(0, n_train, 128):
        batch = (dataset.normalise(dataset.train_images[i : i + 128]), dataset.train_labels[i : i + 128])
        state, metrics = learner.step(state, batch, jax.random.key(0))
        losses.append(np.asarray(metrics["unit_loss"]))
    curves[name] = np.stack(losses)
    test = dataset.subset(None, 2_000)  # the first 2 000 test examples
    test_accuracy[name] = sidjax.evaluate(blockwise, learner.gather(state).variables, test)["accuracy"]
    print(f"{name:12s}: test accuracy of the last block {test_accuracy[name]:.4f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, (name, c) in zip(axes, curves.items(), strict=True):
    for k in range(c.shape[1]):
        ax.plot(c[:, k], label=f"block {k + 1}")
    ax.set(title=f"{name}: local loss per block", xlabel="step", ylabel="local loss")
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# In the pipelined schedule block k starts training at step k (its input
# slot is empty before), then every block trains at every step.
#
# ## Memory: a blockwise step holds one block's activations
# XLA's compiled memory of one step beyond its arguments, ViT-Tiny cut into K blocks: BP keeps
# every block's activations for its backward pass; blockwise SID as one
# program walks the blocks in order; as one program per block it holds one
# block at a time.

# %%
vit_shape, vit_batch = ((8, 8, 3), 8) if TINY else ((32, 32, 3), 64)
ks = (1, 4) if TINY else (1, 2, 4, 8)
rows = []
xb = np.zeros((vit_batch, *vit_shape), np.float32)
yb = np.zeros((vit_batch,), np.int32)
for k in ks:
    net, v = sidjax.make_blockwise_network("vit_tiny", vit_shape, 10, k, jax.random.key(0), tiny=TINY)
    learners = {
        "bp": sidjax.make_learner(net, tx, "bp"),
        "sid": sidjax.make_learner(net, tx, "sid", execution="sequential"),
        "stages": sidjax.make_learner(net, tx, "sid", placement=f"stages:{k}", devices=jax.devices()[:1]),
    }
    mem = {
        m: learner.memory_bytes(learner.init(v), (xb, yb), jax.random.key(0))
        for m, learner in learners.items()
    }
    rows.append((k, *(mem[m] / 2**20 for m in ("bp", "sid", "stages")), mem["stages"] / mem["bp"]))
print(
    "| K | BP MiB | SID one program MiB | SID one program per block MiB | per block / BP |\n|---|---|---|---|---|"
)
for k, bp, sid, stages, ratio in rows:
    print(f"| {k} | {bp:.1f} | {sid:.1f} | {stages:.1f} | {ratio:.2f} |")

# %% [markdown]
# What simulated devices can show: that sharded and staged steps compute the
# same numbers as one device, and where memory goes. What they cannot show:
# speed-ups. For throughput on real accelerators run
# `bash experiments/device_check.sh` (see README.md).
