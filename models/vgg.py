"""A VGG-style CNN for acoustic scene classification (Flax NNX).

In the spirit of the CP-JKU VGG-like ASC networks (a strided 5x5 stem, stacks of
3x3 conv-BN-ReLU, 2x2 max-pooling, global pooling); the exact widths here are
this project's choice, not a reproduction of a published model.

Layer by layer, for input ``(batch, mel, frames, in_channels)`` and
``(c1, c2, c3, c4) = widths`` (default 64/128/256/512, times ``width_mult``)::

  stem     conv 5x5 stride 2 padding 2 (in -> c1), BN, ReLU
  block1   conv 3x3 (c1 -> c1), BN, ReLU;                      max-pool 2x2
  block2   conv 3x3 (c1 -> c2), BN, ReLU; conv 3x3 (c2 -> c2), BN, ReLU; max-pool 2x2
  block3   conv 3x3 (c2 -> c3), BN, ReLU; conv 3x3 (c3 -> c3), BN, ReLU; max-pool 2x2
  block4   conv 3x3 (c3 -> c4), BN, ReLU; conv 3x3 (c4 -> c4), BN, ReLU
  head     global average pool; dropout; dense (c4 -> hidden) + bias, ReLU;
           dropout; dense (hidden -> n_classes) + bias -> logits

Convs have no bias (BN follows each); 3x3 convs pad by 1 (size kept).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

# PyTorch's kaiming_normal_(mode='fan_in', nonlinearity='relu'): an untruncated normal.
_KAIMING = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")

__all__ = ["VGG"]


class ConvBN(nnx.Module):
  """conv (no bias) -> BatchNorm -> ReLU."""

  def __init__(self, cin, cout, k, *, rngs, stride=1):
    self.conv = nnx.Conv(cin, cout, (k, k), strides=stride, padding=((k // 2, k // 2),) * 2,
                         use_bias=False, kernel_init=_KAIMING, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


class VGG(nnx.Module):
  """VGG-style ASC CNN; see the module docstring for the layer table.

  Args:
    n_classes: number of output classes.
    widths: channels of the stem/block1 and blocks 2, 3, 4.
    hidden: width of the hidden dense layer.
    width_mult: multiplies ``widths`` and ``hidden`` (rounded, at least 1).
    dropout: dropout rate before each dense layer (training mode only).
    in_channels: input channels.
    rngs: ``nnx.Rngs`` (``params`` and ``dropout`` streams).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from models.vgg import VGG
    >>> model = VGG(10, width_mult=1 / 16, rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> model(jnp.zeros((1, 64, 48, 2))).shape
    (1, 10)
  """

  def __init__(self, n_classes: int, *, widths: Sequence[int] = (64, 128, 256, 512),
               hidden: int = 256, width_mult: float = 1.0, dropout: float = 0.3,
               in_channels: int = 2, rngs: nnx.Rngs):
    if len(widths) != 4:
      raise ValueError(f"widths must have 4 entries, got {widths}")
    c1, c2, c3, c4 = [max(1, int(round(c * width_mult))) for c in widths]
    h = max(1, int(round(hidden * width_mult)))
    self.stem = ConvBN(in_channels, c1, 5, stride=2, rngs=rngs)
    self.block1 = ConvBN(c1, c1, 3, rngs=rngs)
    self.block2a, self.block2b = ConvBN(c1, c2, 3, rngs=rngs), ConvBN(c2, c2, 3, rngs=rngs)
    self.block3a, self.block3b = ConvBN(c2, c3, 3, rngs=rngs), ConvBN(c3, c3, 3, rngs=rngs)
    self.block4a, self.block4b = ConvBN(c3, c4, 3, rngs=rngs), ConvBN(c4, c4, 3, rngs=rngs)
    self.drop1 = nnx.Dropout(dropout, rngs=rngs)
    self.hidden = nnx.Linear(c4, h, rngs=rngs)
    self.drop2 = nnx.Dropout(dropout, rngs=rngs)
    self.classifier = nnx.Linear(h, n_classes, rngs=rngs)

  def __call__(self, x):
    pool = lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))  # noqa: E731
    x = pool(self.block1(self.stem(x)))
    x = pool(self.block2b(self.block2a(x)))
    x = pool(self.block3b(self.block3a(x)))
    x = self.block4b(self.block4a(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nnx.relu(self.hidden(self.drop1(x)))
    return self.classifier(self.drop2(x))
