"""Proximal operators of the sparsity regularisers (pure functions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hspg_jax import groups as groups_lib

__all__ = ["block_soft_threshold_factor", "group_soft_threshold", "l1_soft_threshold"]


def block_soft_threshold_factor(sq_norms, threshold):
  """``max(0, 1 - t / ||v_g||)`` from squared group norms (0 where ``v_g = 0``).

  ``prox_{t ||.||_2}(v_g) = factor_g * v_g`` is the block soft-threshold.
  """
  norms = jnp.sqrt(sq_norms)
  safe = jnp.where(norms > 0, norms, 1.0)
  return jnp.where(norms > threshold, 1.0 - threshold / safe, 0.0)


def group_soft_threshold(params, groups, threshold):
  """The proximal operator of ``t * sum_g ||x_g||_2`` applied to a pytree.

  Every group is scaled by ``max(0, 1 - t / ||x_g||)``; ungrouped leaves are
  returned unchanged.
  """
  structure = groups_lib.resolve(params, groups)
  leaves = jax.tree_util.tree_leaves(params)
  factors = [block_soft_threshold_factor(s, threshold)
             for s in groups_lib.family_sq_norms(structure, leaves)]
  out = groups_lib.map_members(
      structure, factors, lambda m, f: (f * leaves[m.index]).astype(leaves[m.index].dtype),
      leaves)
  return jax.tree_util.tree_unflatten(structure.treedef, out)


def l1_soft_threshold(x, threshold):
  """The proximal operator of ``t * ||x||_1``: ``sign(x) * max(|x| - t, 0)``."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)
