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
# # Parallel modules: one device, eight devices, blocks on devices
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sidjax/sidjax/blob/main/notebooks/03_parallel_modules.ipynb)
#
# SID's modules never exchange gradients, so their updates can run side by
# side. On one device the stacked modules are updated with `jax.vmap`; on
# many, the module axis is sharded. On a CPU runtime this notebook simulates 8
# devices: that checks the logic (same numbers as one device) but cannot show
# a speed-up, since the simulated devices share the same cores. On a TPU
# runtime the devices are real. `SIDJAX_NOTEBOOK_TINY=1` runs a tiny budget.

# %%
import importlib.util
import os
import subprocess
import sys
import time

# 8 simulated devices if this is a CPU runtime; must be set before jax starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
TINY = os.environ.get("SIDJAX_NOTEBOOK_TINY", "0") == "1"
if importlib.util.find_spec("sidjax") is None:  # e.g. on Colab: install this repository
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sidjax @ git+https://github.com/sidjax/sidjax"],
                   check=True)  # fmt: skip

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import sidjax  # noqa: E402
from sidjax.parallel import make_mesh, shard_batch, shard_state  # noqa: E402

print(jax.device_count(), "devices:", jax.devices()[0].device_kind, "| tiny budget:", TINY)

# %% [markdown]
# ## The shared trunk on one device and on a (data, module) mesh
# The same jitted step; only where the state and the batch live changes.

# %%
dataset = sidjax.load_dataset("fashion_mnist")
batch_size, steps = (64, 5) if TINY else (256, 30)
x = dataset.train_images[:batch_size]
y = dataset.train_labels[:batch_size]
network, params = sidjax.make_network("mlp", dataset.input_shape, 10, 8, jax.random.key(0))
tx = optax.adam(1e-3)
step = sidjax.make_train_step(network, tx, "sid", sidjax.SIDLoss(0.5))

results = {}
for name, mesh in [("1 device", None), ("mesh (1, 8)", make_mesh(1, 8)), ("mesh (2, 4)", make_mesh(2, 4))]:
    state = sidjax.init_train_state(params, tx)
    batch = (x, y)
    if mesh is not None:
        state, batch = shard_state(state, network, mesh), shard_batch(batch, network, mesh)
    state, _ = step(state, batch, jax.random.key(0))  # compile
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(state)
    results[name] = (state, (time.perf_counter() - start) / steps)

reference = results["1 device"][0].params
for name, (state, seconds) in results.items():
    gap = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference), strict=True)
    )
    print(f"{name:12s}: {1000 * seconds:7.2f} ms/step, max |params - 1-device params| = {gap:.1e}")

# %% [markdown]
# ## Blockwise SID with blocks on devices
# Cut a SimpleCNN into K = 4 blocks, one per device. `synchronous` is the
# exact blockwise step; `pipelined` feeds block k the previous step's output
# of block k-1, so all blocks update at once (no update locking).

# %%
shape = dataset.input_shape
blockwise, bparams = sidjax.make_blockwise_network("simplecnn", shape, 10, 4, jax.random.key(0), tiny=TINY)
n_train = 1_024 if TINY else 12_800
curves = {}
for schedule in ("synchronous", "pipelined"):
    pipe = sidjax.BlockPipeline(
        blockwise, tx, "sid", sidjax.SIDLoss(0.5), schedule=schedule, devices=jax.devices()[:4]
    )
    pstate = pipe.init(bparams, shape, 128)
    losses = []
    for i in range(0, n_train, 128):
        pstate, metrics = pipe.step(pstate, (dataset.train_images[i:i + 128], dataset.train_labels[i:i + 128]),
                                    jax.random.key(0))  # fmt: skip
        losses.append(np.asarray(metrics["module_loss"]))
    curves[schedule] = np.stack(losses)
    logits = blockwise.apply(pipe.gather(pstate).params, dataset.test_images[:2_000])
    print(
        f"{schedule:12s}: test accuracy of the last block {float((logits[-1].argmax(-1) == dataset.test_labels[:2_000]).mean()):.4f}"
    )

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, (schedule, c) in zip(axes, curves.items(), strict=True):
    for k in range(c.shape[1]):
        ax.plot(c[:, k], label=f"block {k + 1}")
    ax.set(title=f"{schedule}: local loss per block", xlabel="step", ylabel="local loss")
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# In the pipelined schedule block k starts training at step k (its input
# slot is empty before), then every block trains at every step.
#
# ## Memory: a blockwise step holds one block's activations
# XLA's compiled temp memory of one step (`sidjax.step_temp_bytes`), ViT-Tiny
# cut into K blocks: BP keeps every block's activations for its backward
# pass; sequential blockwise SID only one block's.

# %%
vit_shape, vit_batch = ((8, 8, 3), 8) if TINY else ((32, 32, 3), 64)
ks = (1, 2, 4) if TINY else (1, 2, 4, 8)
rows = []
xb = np.zeros((vit_batch, *vit_shape), np.float32)
yb = np.zeros((vit_batch,), np.int32)
for k in ks:
    net, p = sidjax.make_blockwise_network("vit_tiny", vit_shape, 10, k, jax.random.key(0), tiny=TINY)
    mem = {}
    for method, execution in (("bp", "auto"), ("sid", "sequential")):
        s = sidjax.make_train_step(net, tx, method, sidjax.SIDLoss(0.5), execution=execution)
        mem[method] = sidjax.step_temp_bytes(s, sidjax.init_train_state(p, tx), (xb, yb), jax.random.key(0))
    rows.append((k, mem["bp"] / 2**20, mem["sid"] / 2**20, mem["sid"] / mem["bp"]))
print("| K | BP temp MiB | sequential SID temp MiB | SID / BP |\n|---|---|---|---|")
for k, bp, sid, ratio in rows:
    print(f"| {k} | {bp:.1f} | {sid:.1f} | {ratio:.2f} |")

# %% [markdown]
# What simulated devices can show: that sharded and placed steps compute the
# same numbers as one device, and where memory goes. What they cannot show:
# speed-ups (the 8 "devices" share the same cores). For throughput on real
# accelerators run `bash experiments/device_check.sh` (see README.md).
