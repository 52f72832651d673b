"""Shared helpers of the pruning tests: zeroing groups, eval forwards, perturbations."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hspg_jax import groups as groups_lib

prune_lib = importlib.import_module("hspg_jax.flax.prune")  # the module, not the function


def zero_groups(model, graph, frac=None, which=None, seed=0):
  """Zeroes a fraction (or the listed indices) of every family's groups in place.

  Returns ``{family: bool mask of zeroed groups}``. NumPy, so no compile per shape.
  """
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  masks = {}
  for fam in graph.structure.families:
    zero = np.zeros(fam.num_groups, bool)
    if which is not None:
      zero[list(which.get(fam.name, ()))] = True
    else:
      zero[rng.choice(fam.num_groups, int(round(frac * fam.num_groups)), replace=False)] = True
    masks[fam.name] = zero
    for m in fam.members:
      a = np.array(leaves[m.index])
      idx = [slice(None)] * a.ndim
      idx[m.axis] = zero
      a[tuple(idx)] = 0
      leaves[m.index] = jnp.asarray(a)
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
  return masks


@nnx.jit
def forward(model, x):
  return model(x)


def eval_out(model, x):
  model.eval()
  return np.asarray(forward(model, x))


def assert_close(a, b, rtol=1e-5):
  """``|a - b| <= rtol * max|a|`` (outputs near zero elementwise would be too strict)."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = float(np.max(np.abs(a)))
  assert np.isfinite(scale) and scale > 1e-3
  np.testing.assert_allclose(b, a, rtol=0, atol=rtol * scale)


def assert_same_eval_outputs(dense, small, x):
  assert_close(eval_out(dense, x), eval_out(small, x))


def perturb_removed(model, graph, seed=1):
  """A copy with every state slice pruning would cut, except the groups' parameters, randomized.

  Those are the slices that only see removed channels: consumers' input slices
  and the removed channels' BatchNorm statistics. If the removed channels are
  really zero wherever they are used, the outputs do not change.
  Returns ``(copy, number of scalars changed)``.
  """
  remove = prune_lib.removal_masks(model, graph)
  is_param = set(graph.structure.paths)
  changes: dict[str, np.ndarray] = {}
  shapes = dict(zip(graph.paths, graph.shapes))

  def mark(path, axis, positions):
    m = changes.setdefault(path, np.zeros(shapes[path], bool))
    idx = [slice(None)] * m.ndim
    idx[axis] = positions
    m[tuple(idx)] = True

  for fam in graph.families:
    r = remove[fam.name]
    for path, axis in fam.members:
      if path not in is_param:
        mark(path, axis, r)
    for path, axis, start, n, off in fam.dependents:
      mark(path, axis, np.flatnonzero(r[off:off + n]) + start)
    for path, axis, start, n, off, outer, mid, inner in fam.flat_dependents:
      pos = np.zeros((outer, mid, inner), bool)
      pos[:, start:start + n, :] = r[off:off + n][None, :, None]
      mark(path, axis, pos.reshape(-1))
  copy = nnx.clone(model)
  state = nnx.state(copy)
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  rng = np.random.default_rng(seed)
  leaves, count = [], 0
  for p, x in path_leaves:
    path = groups_lib.path_str(p)
    m = changes.get(path)
    if m is not None and m.any():
      a = np.array(x)
      k = int(m.sum())
      sign = 1.0 if path.endswith("/var") else rng.choice([-1.0, 1.0], k)  # variances stay > 0
      a[m] = rng.uniform(1.0, 3.0, k) * sign
      count += int(m.sum())
      x = jnp.asarray(a)
    leaves.append(x)
  nnx.update(copy, jax.tree_util.tree_unflatten(treedef, leaves))
  return copy, count
