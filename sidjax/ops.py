"""Array ops with a fast path for XLA:CPU.

Older XLA:CPU builds computed the weight gradient of a convolution at a few
GFLOP/s (~4x slower training than PyTorch on the same CPU), so ``conv2d`` has
two implementations behind one switch:

* ``"xla"`` (default): ``lax.conv_general_dilated`` and XLA's gradients;
* ``"shifted"``: the same forward convolution, with a ``jax.custom_vjp`` whose
  weight gradient is ``kh * kw`` shifted matrix multiplications and whose
  input gradient is XLA's.

Measured with ``experiments/bench_step.py`` on a 2-core x86 CPU with jax
0.10.2 (SimpleCNN, batch 128), ``"xla"`` was as fast as ``"shifted"`` (within
noise) and used 2.6x less temp memory, hence the default. ``"shifted"`` stays
for XLA builds where the weight gradient is slow; the tests check that both
give the same values and gradients.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

ConvImpl = Literal["xla", "shifted"]
CONV_IMPLS: tuple[str, ...] = ("xla", "shifted")
_DIMS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="SAME", dimension_numbers=_DIMS)


def _same_pads(k: int) -> tuple[int, int]:
    return (k - 1) // 2, k // 2


@jax.custom_vjp
def _shifted_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _xla_conv(x, kernel)


def _shifted_conv_fwd(x, kernel):
    return _xla_conv(x, kernel), (x, kernel)


def _shifted_conv_bwd(res, g):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    _, height, width, _ = x.shape
    (ph0, ph1), (pw0, pw1) = _same_pads(kh), _same_pads(kw)
    xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    g2 = g.reshape(-1, cout)
    # dW[i, j] = sum over (b, h, w) of x_pad[b, h + i, w + j, :]^T g[b, h, w, :]
    dkernel = jnp.stack(
        [
            jnp.stack([xp[:, i : i + height, j : j + width, :].reshape(-1, cin).T @ g2 for j in range(kw)])
            for i in range(kh)
        ]
    )
    # XLA's input gradient (a transposed convolution) is already fast on CPU.
    (dx,) = jax.vjp(lambda x_: _xla_conv(x_, kernel), x)[1](g)
    return dx, dkernel.astype(kernel.dtype)


_shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, impl: ConvImpl = "xla") -> jax.Array:
    """Stride-1 'SAME' 2-D convolution.

    Args:
      x: ``[batch, height, width, in_channels]``.
      kernel: ``[kh, kw, in_channels, out_channels]``.
      impl: ``"xla"`` or ``"shifted"`` (see the module docstring).

    Returns:
      ``[batch, height, width, out_channels]``.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    return _shifted_conv(x, kernel) if impl == "shifted" else _xla_conv(x, kernel)


@functools.partial(jax.jit, static_argnames="window")
def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping max pool by reshape-and-max (its backward is cheap on CPU).

    Args:
      x: ``[batch, height, width, channels]``; odd trailing rows/columns are
        dropped, as ``nn.MaxPool2d(window)`` does.

    Returns:
      ``[batch, height // window, width // window, channels]``.
    """
    b, h, w, c = x.shape
    h2, w2 = h // window, w // window
    x = x[:, : h2 * window, : w2 * window, :]
    return x.reshape(b, h2, window, w2, window, c).max(axis=(2, 4))
