"""Backbones of the paper's four architectures (and an MLP), cut into K blocks.

A backbone is an optional ``stem`` followed by ordered ``layers`` (NNX
modules, each ``h -> h``) and a rule saying how the layers may be cut into K
contiguous blocks. The same backbone serves three ways:

* blockwise SID/DGL: block k = its group of layers + a belief head
  (``sidjax.builders.make_blockwise_network``); the stem trains with block 1;
* the shared-trunk extractor: stem + all layers + pool + linear -> d
  (``sidjax.builders.make_network``);
* end to end for BP: the blockwise network trained with CE on the last head.

Images are NHWC, 28x28x1 or 32x32x3 (any size works where the pools fit).
ResNet-18 uses BatchNorm, as in the paper (each block's local forward pass
updates its running statistics; evaluation reads them); ``resnet18_gn`` is
the same network with GroupNorm, which behaves the same in training and
evaluation and does not depend on the batch's composition.

Every builder is ``builder(input_shape, tiny, conv_impl, rngs) -> Backbone``;
your own backbone is a ``Backbone`` of your own layers, accepted wherever a
model name is (``sidjax.make_network``, ``sidjax.make_blockwise_network``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.heads import pool_features
from sidjax.ops import ConvImpl, conv2d, max_pool


class Conv3x3(nnx.Module):
    """3x3 'SAME' convolution with bias; the backward pass follows ``conv_impl``."""

    def __init__(self, in_channels: int, out_channels: int, *, conv_impl: ConvImpl, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (3, 3, in_channels, out_channels)))
        self.bias = nnx.Param(jnp.zeros((out_channels,)))
        self.conv_impl = conv_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C_in] -> [B, H, W, C_out]``."""
        return conv2d(x, self.kernel[...], self.conv_impl) + self.bias[...]


class ConvLayer(nnx.Module):
    """3x3 conv + ReLU, then an optional 2x2 max-pool (skipped below 2x2)."""

    def __init__(self, cin: int, cout: int, pool: bool, *, conv_impl: ConvImpl, rngs: nnx.Rngs):
        self.conv = Conv3x3(cin, cout, conv_impl=conv_impl, rngs=rngs)
        self.pool = pool

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C_in] -> [B, H', W', C_out]``."""
        x = jax.nn.relu(self.conv(x))
        if self.pool and min(x.shape[1:3]) >= 2:
            x = max_pool(x, 2)
        return x


class DenseLayer(nnx.Module):
    """Flatten, linear, ReLU."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(cin, cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, ...] -> [B, C_out]``."""
        return jax.nn.relu(self.linear(x.reshape(x.shape[0], -1)))


def make_norm(kind: str, channels: int, rngs: nnx.Rngs) -> nnx.Module:
    """``"batch"``: BatchNorm (running statistics); ``"group"``: GroupNorm (min(32, C / 2) groups)."""
    if kind == "batch":
        return nnx.BatchNorm(channels, rngs=rngs)
    return nnx.GroupNorm(channels, num_groups=_groups(channels), rngs=rngs)


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 convs with a norm, projection shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, *, conv_impl: ConvImpl, rngs: nnx.Rngs):
        if stride == 1:
            self.conv1 = Conv3x3(cin, cout, conv_impl=conv_impl, rngs=rngs)
        else:
            self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.norm1 = make_norm(norm, cout, rngs)
        self.conv2 = Conv3x3(cout, cout, conv_impl=conv_impl, rngs=rngs)
        self.norm2 = make_norm(norm, cout, rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.shortcut_norm = make_norm(norm, cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C_in] -> [B, H / stride, W / stride, C_out]``."""
        out = jax.nn.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        skip = self.shortcut_norm(self.shortcut(x)) if self.project else x
        return jax.nn.relu(out + skip)


def _groups(channels: int) -> int:
    return min(32, channels // 2) if channels >= 4 else 1


class ConvStem(nnx.Module):
    """ResNet's CIFAR-style stem: 3x3 conv, a norm, ReLU (no max-pool)."""

    def __init__(self, cin: int, cout: int, norm: str, *, conv_impl: ConvImpl, rngs: nnx.Rngs):
        self.conv = Conv3x3(cin, cout, conv_impl=conv_impl, rngs=rngs)
        self.norm = make_norm(norm, cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.norm(self.conv(x)))


class PatchEmbed(nnx.Module):
    """ViT stem: non-overlapping patches -> linear -> + learned position embedding."""

    def __init__(self, input_shape: Sequence[int], patch: int, dim: int, *, rngs: nnx.Rngs):
        h, w, c = input_shape
        if h % patch or w % patch:
            raise ValueError(f"ViT patch size {patch} must divide the input size {h}x{w}")
        self.patch = patch
        self.proj = nnx.Linear(patch * patch * c, dim, rngs=rngs)
        num_tokens = (h // patch) * (w // patch)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, num_tokens, dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C] -> [B, tokens, dim]``."""
        b, h, w, c = x.shape
        p = self.patch
        patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return self.proj(patches.reshape(b, (h // p) * (w // p), p * p * c)) + self.pos[...]


class TransformerBlock(nnx.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, tokens, dim] -> [B, tokens, dim]``."""
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


@dataclasses.dataclass
class Backbone:
    """An architecture as ``stem -> layers``, with its rule for K-way cuts.

    Attributes:
      stem: module run before the layers (trained with block 1), or None.
      layers: the cuttable layers, in order.
      widths: output channels (or token dim) after each layer.
      cut: ``cut(K) -> list of K lists of layer indices`` (raises ValueError
        with a clear message where K is not allowed).
    """

    stem: nnx.Module | None
    layers: list[nnx.Module]
    widths: list[int]
    cut: Callable[[int], list[list[int]]]


def even_cut(
    num_layers: int, name: str, allowed: Sequence[int] | None = None
) -> Callable[[int], list[list[int]]]:
    """Contiguous, as-even-as-possible groups (earlier groups get the extra layer)."""

    def cut(k: int) -> list[list[int]]:
        ok = allowed if allowed is not None else range(1, num_layers + 1)
        if k not in ok:
            raise ValueError(f"{name} can be cut into K in {sorted(ok)} blocks, not {k}")
        sizes = [num_layers // k + (i < num_layers % k) for i in range(k)]
        starts = [sum(sizes[:i]) for i in range(k)]
        return [list(range(s, s + n)) for s, n in zip(starts, sizes, strict=True)]

    return cut


def _conv_stack(name, input_shape, widths, pools, conv_impl, rngs) -> Backbone:
    cin = input_shape[-1]
    layers = []
    for width, pool in zip(widths, pools, strict=True):
        layers.append(ConvLayer(cin, width, pool, conv_impl=conv_impl, rngs=rngs))
        cin = width
    return Backbone(None, layers, list(widths), even_cut(len(layers), name))


def simplecnn(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """The authors' SimpleCNN: conv 32, 64, pool, 128, 128, pool (K <= 4)."""
    widths = (8, 16, 16, 16) if tiny else (32, 64, 128, 128)
    return _conv_stack("simplecnn", input_shape, widths, (False, True, False, True), conv_impl, rngs)


def vgg11(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """VGG-11 (config A, no BatchNorm): 8 convs, 5 pools; cut at conv layers (K <= 8)."""
    widths = (8, 16, 16, 16, 32, 32, 32, 32) if tiny else (64, 128, 256, 256, 512, 512, 512, 512)
    pools = (True, True, False, True, False, True, False, True)
    return _conv_stack("vgg11", input_shape, widths, pools, conv_impl, rngs)


def _resnet18(input_shape, tiny, conv_impl, rngs, norm: str, name: str) -> Backbone:
    stem_width, stages = (8, (8, 16, 16, 32)) if tiny else (64, (64, 128, 256, 512))
    stem = ConvStem(input_shape[-1], stem_width, norm, conv_impl=conv_impl, rngs=rngs)
    layers, widths, cin = [], [], stem_width
    for i, width in enumerate(stages):
        for j in range(2):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(BasicBlock(cin, width, stride, norm, conv_impl=conv_impl, rngs=rngs))
            widths.append(width)
            cin = width
    return Backbone(stem, layers, widths, even_cut(8, name, allowed=(1, 2, 4, 8)))


def resnet18(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """ResNet-18 (CIFAR stem, BatchNorm as in the paper): 8 basic blocks; K in {1, 2, 4, 8}.

    K = 2: two stages per block; K = 4: one stage; K = 8: one residual block.
    """
    return _resnet18(input_shape, tiny, conv_impl, rngs, "batch", "resnet18")


def resnet18_gn(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """ResNet-18 with GroupNorm instead of BatchNorm (no running statistics); cut as ``resnet18``."""
    return _resnet18(input_shape, tiny, conv_impl, rngs, "group", "resnet18_gn")


def vit_tiny(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """ViT-Tiny, patch 4: dim 192, 12 blocks, 3 heads, MLP 768 (K <= 12).

    Blocks are identical, so blocks of equal size stack (vmap/scan).
    """
    del conv_impl
    dim, depth, heads, mlp = (16, 4, 2, 32) if tiny else (192, 12, 3, 768)
    stem = PatchEmbed(input_shape, 4, dim, rngs=rngs)
    layers = [TransformerBlock(dim, heads, mlp, rngs=rngs) for _ in range(depth)]
    return Backbone(stem, layers, [dim] * depth, even_cut(depth, "vit_tiny"))


def mlp(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """Flatten + one hidden layer of 512 (64 tiny): the fast test/benchmark extractor (K = 1)."""
    del conv_impl
    in_features = 1
    for d in input_shape:
        in_features *= d
    width = 64 if tiny else 512
    return Backbone(None, [DenseLayer(in_features, width, rngs=rngs)], [width], even_cut(1, "mlp"))


def mlp4(input_shape, tiny, conv_impl, rngs) -> Backbone:
    """Flatten + four hidden layers of 500 ReLUs (64 tiny), one per block (K <= 4): the dense network on
    which every method trains (Forward-Forward and the HSIC bottleneck were introduced on such MLPs)."""
    del conv_impl
    width, cin = (64 if tiny else 500), 1
    for d in input_shape:
        cin *= d
    layers = []
    for _ in range(4):
        layers.append(DenseLayer(cin, width, rngs=rngs))
        cin = width
    return Backbone(None, layers, [width] * 4, even_cut(4, "mlp4"))


# name -> backbone(input_shape (H, W, C), tiny, conv_impl, rngs)
ARCHITECTURES: dict[str, Callable[..., Backbone]] = {
    "mlp": mlp,
    "mlp4": mlp4,
    "simplecnn": simplecnn,
    "vgg11": vgg11,
    "resnet18": resnet18,
    "resnet18_gn": resnet18_gn,
    "vit_tiny": vit_tiny,
}


class Extractor(nnx.Module):
    """Shared-trunk extractor from a backbone: stem, all layers, pool, linear -> d."""

    def __init__(self, backbone: Backbone, feature_dim: int, *, rngs: nnx.Rngs):
        self.stem = backbone.stem
        self.layers = nnx.List(backbone.layers)
        self.head = nnx.Linear(backbone.widths[-1], feature_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C] -> [B, feature_dim]``."""
        h = x if self.stem is None else self.stem(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(pool_features(h))
