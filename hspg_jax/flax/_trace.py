"""Tracing a Flax NNX model's eval-mode forward into a jaxpr over its state leaves."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hspg_jax import groups as groups_lib

ApplyFn = Callable[[nnx.Module, Any], Any]


def default_apply(model, x):
  return model(x)


@dataclasses.dataclass(frozen=True)
class Traced:
  """The eval forward as a jaxpr whose first invars are the model's state leaves.

  Attributes:
    jaxpr: ``ClosedJaxpr`` of ``f(*param_leaves, *other_leaves, *input_leaves)``.
    paths: ``a/b/kernel`` path of every state leaf (params first).
    shapes: shape of every state leaf.
    num_params: how many of the leaves are ``nnx.Param`` leaves (they come first,
      in the flattening order of ``nnx.state(model, nnx.Param)``).
  """

  jaxpr: Any
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  num_params: int

  @property
  def num_leaves(self) -> int:
    return len(self.paths)


def as_abstract(inputs):
  """Array, ``ShapeDtypeStruct`` or shape tuple (float32) -> ShapeDtypeStruct pytree."""
  if isinstance(inputs, tuple) and all(isinstance(d, (int, np.integer)) for d in inputs):
    return jax.ShapeDtypeStruct(tuple(int(d) for d in inputs), jnp.float32)
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), inputs)


def trace_eval(model: nnx.Module, inputs, apply_fn: ApplyFn | None = None) -> Traced:
  """Traces ``apply_fn(model_in_eval_mode, inputs)`` (no FLOPs are spent)."""
  apply_fn = apply_fn or default_apply
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  p_paths, p_leaves = _flat(params)
  r_paths, r_leaves = _flat(rest)
  p_def = jax.tree_util.tree_structure(params)
  r_def = jax.tree_util.tree_structure(rest)
  n_p = len(p_leaves)
  x_abs = as_abstract(inputs)

  def f(*args):
    p = jax.tree_util.tree_unflatten(p_def, args[:n_p])
    r = jax.tree_util.tree_unflatten(r_def, args[n_p:n_p + len(r_leaves)])
    m = nnx.merge(graphdef, p, r)
    m.eval()  # a fresh object: the caller's model keeps its mode
    return apply_fn(m, args[n_p + len(r_leaves)])

  abstract = [jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in p_leaves + r_leaves]
  jaxpr = jax.make_jaxpr(f)(*abstract, x_abs)
  shapes = tuple(tuple(np.shape(a)) for a in p_leaves + r_leaves)
  return Traced(jaxpr, tuple(p_paths + r_paths), shapes, n_p)


def _flat(state):
  path_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return [groups_lib.path_str(p) for p, _ in path_leaves], [x for _, x in path_leaves]


def module_path(leaf_path: str) -> str:
  """``stage1/block1/conv1`` for ``stage1/block1/conv1/kernel``."""
  return leaf_path.rsplit("/", 1)[0] if "/" in leaf_path else leaf_path
