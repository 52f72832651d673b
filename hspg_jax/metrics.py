"""Group norms, zero-group masks, group sparsity and omega = sum_g ||x_g||_2."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hspg_jax import groups as groups_lib

__all__ = [
    "group_norms",
    "zero_group_masks",
    "num_zero_groups",
    "group_sparsity",
    "omega",
    "group_mask_tree",
]


def group_norms(params, groups) -> dict:
  """``{family name: ||x_g||_2 for each group g}`` (float32 vectors, or wider).

  Accumulated in float32 whatever the leaf dtype, and scaled so that neither
  tiny nor huge entries are lost; 0 only for groups that are exactly zero.
  """
  structure = groups_lib.resolve(params, groups)
  leaves = jax.tree_util.tree_leaves(params)
  norms = groups_lib.family_norms(structure, leaves)
  return {f.name: n for f, n in zip(structure.families, norms)}


def zero_group_masks(params, groups) -> dict:
  """``{family name: bool vector}``, True where every entry of the group is exactly zero."""
  structure = groups_lib.resolve(params, groups)
  leaves = jax.tree_util.tree_leaves(params)
  sq = groups_lib.family_sq_norms(structure, leaves)
  return {f.name: s == 0 for f, s in zip(structure.families, sq)}


def num_zero_groups(params, groups):
  """Number of groups whose every entry is exactly zero (int32 scalar)."""
  masks = zero_group_masks(params, groups)
  return sum((jnp.sum(m, dtype=jnp.int32) for m in masks.values()), jnp.int32(0))


def group_sparsity(params, groups):
  """Fraction of groups that are exactly zero, over all families (float32 scalar)."""
  structure = groups_lib.resolve(params, groups)
  if structure.num_groups == 0:
    return jnp.float32(0.0)
  return num_zero_groups(params, structure).astype(jnp.float32) / structure.num_groups


def omega(params, groups):
  """The group-lasso regulariser ``sum_g ||x_g||_2`` (without lambda)."""
  norms = group_norms(params, groups)
  return sum((jnp.sum(n) for n in norms.values()), jnp.float32(0.0))


def group_mask_tree(params, groups):
  """A pytree like params: per leaf, a bool array broadcastable to the leaf that is
  True where the entry belongs to a zero group. Ungrouped leaves get ``False``.
  """
  structure = groups_lib.resolve(params, groups)
  leaves = jax.tree_util.tree_leaves(params)
  sq = groups_lib.family_sq_norms(structure, leaves)
  out = [jnp.zeros((), bool)] * len(leaves)
  for fam, s in zip(structure.families, sq):
    for m in fam.members:
      out[m.index] = groups_lib.expand(s == 0, m)
  return jax.tree_util.tree_unflatten(structure.treedef, out)
