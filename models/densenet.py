"""A DenseNet-style CNN for acoustic scene classification (Flax NNX).

Densely connected blocks (Huang et al., 2017) with the receptive-field control
of Koutini et al.: the ``dn1`` preset keeps 3x3 kernels only in the first dense
block and uses 1x1 kernels afterwards, so the receptive field stops growing
after block 1. The widths and the preset are this project's design, not a
reproduction of a published model.

Each dense layer is conv -> BN -> ReLU (post-activation), and its output is
concatenated to the block's features. Post-activation is deliberate: each BN
then normalises the channels of exactly one conv, so every channel of every
concatenation has a zero-invariant group (conv filter + BN scale/bias). With
the classic pre-activation layer (BN -> ReLU -> conv on the concatenation) one
BN's scale would span several producers, which a group spec (one family per
parameter leaf) cannot express.

Layer by layer, for input ``(batch, mel, frames, in_channels)``, growth ``g``,
``L = layers`` per block and kernel ``k_b`` of block ``b`` (all times
``width_mult`` where a width)::

  stem         conv 5x5 stride 2 padding 2 (in -> 2g), BN, ReLU
  dense block  L times: y = ReLU(BN(conv k_b x k_b (C -> g))); x = concat(x, y)  (C += g)
  transition   after blocks 1 and 2: conv 1x1 (C -> floor(C * compression)), BN, ReLU,
               average-pool 2x2
  head         conv 1x1 (C -> n_classes), BN, global average pool -> logits

Convs have no bias; a k x k conv pads by k // 2 (size kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

# PyTorch's kaiming_normal_(mode='fan_in', nonlinearity='relu'): an untruncated normal.
_KAIMING = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")

__all__ = ["DenseNet", "DN_PRESETS"]

# Kernel size of each dense block's convs.
DN_PRESETS = {"default": (3, 3, 3), "dn1": (3, 1, 1)}


def _conv_bn(cin, cout, k, *, rngs, stride=1):
  conv = nnx.Conv(cin, cout, (k, k), strides=stride, padding=((k // 2, k // 2),) * 2,
                  use_bias=False, kernel_init=_KAIMING, rngs=rngs)
  return conv, nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)


class DenseLayer(nnx.Module):
  """conv -> BN -> ReLU producing ``growth`` new channels."""

  def __init__(self, cin, growth, k, *, rngs):
    self.conv, self.bn = _conv_bn(cin, growth, k, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


class DenseBlock(nnx.Module):
  """``layers`` dense layers named ``layer1..layerL``; returns all features."""

  def __init__(self, cin, growth, layers, k, *, rngs):
    self.names = tuple(f"layer{i + 1}" for i in range(layers))
    for i, name in enumerate(self.names):
      setattr(self, name, DenseLayer(cin + i * growth, growth, k, rngs=rngs))

  def __call__(self, x):
    for name in self.names:
      x = jnp.concatenate([x, getattr(self, name)(x)], axis=-1)
    return x


class Transition(nnx.Module):
  """conv 1x1 -> BN -> ReLU -> 2x2 average pool."""

  def __init__(self, cin, cout, *, rngs):
    self.conv, self.bn = _conv_bn(cin, cout, 1, rngs=rngs)

  def __call__(self, x):
    return nnx.avg_pool(nnx.relu(self.bn(self.conv(x))), (2, 2), strides=(2, 2))


class DenseNet(nnx.Module):
  """DenseNet-style ASC CNN; see the module docstring for the layer table.

  Args:
    n_classes: number of output classes.
    growth: channels added by each dense layer.
    layers: dense layers per block (one entry per block).
    kernels: kernel size of each block's convs (``DN_PRESETS``).
    compression: transition width factor.
    width_mult: multiplies ``growth`` (rounded, at least 1).
    in_channels: input channels.
    rngs: ``nnx.Rngs``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from models.densenet import DenseNet
    >>> model = DenseNet(10, growth=4, layers=(2, 2, 2), rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((1, 64, 48, 2))).shape
    (1, 10)
  """

  def __init__(self, n_classes: int, *, growth: int = 32, layers: Sequence[int] = (4, 4, 4),
               kernels: Sequence[int] = DN_PRESETS["default"], compression: float = 0.5,
               width_mult: float = 1.0, in_channels: int = 2, rngs: nnx.Rngs):
    if len(kernels) != len(layers):
      raise ValueError(f"kernels {tuple(kernels)} and layers {tuple(layers)} differ in length")
    if not 0 < compression <= 1:
      raise ValueError(f"compression must be in (0, 1], got {compression}")
    g = max(1, int(round(growth * width_mult)))
    c = 2 * g
    self.stem_conv, self.stem_bn = _conv_bn(in_channels, c, 5, stride=2, rngs=rngs)
    names = []
    for b, (n, k) in enumerate(zip(layers, kernels)):
      setattr(self, f"block{b + 1}", DenseBlock(c, g, n, k, rngs=rngs))
      names.append(f"block{b + 1}")
      c += n * g
      if b + 1 < len(layers):
        cout = max(1, int(c * compression))
        setattr(self, f"transition{b + 1}", Transition(c, cout, rngs=rngs))
        names.append(f"transition{b + 1}")
        c = cout
    self.names = tuple(names)
    self.head_conv, self.head_bn = _conv_bn(c, n_classes, 1, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem_conv(x)))
    for name in self.names:
      x = getattr(self, name)(x)
    return jnp.mean(self.head_bn(self.head_conv(x)), axis=(1, 2))
