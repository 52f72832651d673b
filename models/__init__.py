"""Flax NNX model zoo for acoustic scene classification.

Every model takes ``(batch, mel, frames, channels)`` input and ``n_classes``,
and returns logits ``(batch, n_classes)``. A config names a model by string::

  model = models.get_model("cp_resnet_rn2", n_classes=10, rngs=nnx.Rngs(0))

Registered names:

* ``cp_resnet`` (``rho=`` keyword, default 7), ``cp_resnet_rn1`` / ``_rn2`` /
  ``_rn3`` (rho 3 / 5 / 7; see ``models.cp_resnet.RN_PRESETS``);
* ``vgg``;
* ``densenet`` (3x3 kernels in every block), ``densenet_dn1`` (the
  receptive-field-limited preset: 3x3 in block 1 only).

Keyword arguments (``width_mult``, ``in_channels``, ...) go to the model class.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from models import cp_resnet as _cp_resnet
from models import densenet as _densenet
from models import vgg as _vgg
from models.cp_resnet import CPResNet
from models.densenet import DenseNet
from models.vgg import VGG

__all__ = ["CPResNet", "DenseNet", "VGG", "available_models", "get_model", "register"]

_REGISTRY: dict[str, Callable[..., nnx.Module]] = {}


def register(name: str, factory: Callable[..., nnx.Module] | None = None):
  """Registers ``factory(n_classes, *, rngs, **kw) -> nnx.Module`` under ``name``.

  Usable as a decorator (``@register("my_net")``) or a call. Raises
  ``ValueError`` if the name is taken.

  Example:
    >>> import models
    >>> @models.register("tiny_vgg_doc")
    ... def tiny_vgg(n_classes, *, rngs, **kw):
    ...   return models.VGG(n_classes, width_mult=1 / 16, rngs=rngs, **kw)
    >>> "tiny_vgg_doc" in models.available_models()
    True
  """

  def add(f):
    if name in _REGISTRY:
      raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = f
    return f

  return add if factory is None else add(factory)


def available_models() -> tuple[str, ...]:
  """The registered model names, sorted."""
  return tuple(sorted(_REGISTRY))


def get_model(name: str, n_classes: int, *, rngs: nnx.Rngs, **kw) -> nnx.Module:
  """Builds the model registered as ``name``.

  Args:
    name: a registered name (see :func:`available_models`).
    n_classes: number of output classes.
    rngs: ``nnx.Rngs`` for the initialisers (and dropout).
    **kw: passed to the model's constructor (``width_mult``, ``rho``, ...).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
  return _REGISTRY[name](n_classes, rngs=rngs, **kw)


register("cp_resnet", _cp_resnet.cp_resnet)
for _name, _factory in _cp_resnet.PRESET_FACTORIES.items():
  register(_name, _factory)
register("vgg", lambda n_classes, *, rngs, **kw: _vgg.VGG(n_classes, rngs=rngs, **kw))
register("densenet", lambda n_classes, *, rngs, **kw: _densenet.DenseNet(
    n_classes, rngs=rngs, **kw))
register("densenet_dn1", lambda n_classes, *, rngs, **kw: _densenet.DenseNet(
    n_classes, kernels=_densenet.DN_PRESETS["dn1"], rngs=rngs, **kw))
del _name, _factory
