"""Hierarchical (sparse-group) HSPG: zero groups and zero elements inside the survivors.

Solves the sparse-group lasso

    min_x  f(x) + lambda_g * sum_g ||x_g||_2 + lambda_1 * ||x||_1,

where the l1 term covers every element of every grouped leaf (ungrouped
leaves, e.g. biases, are never regularised). With ``s = sign(x)`` (0 at 0) and
the subgradient direction

    d = grad + lambda_g * x_g / (||x_g|| + 1e-6) + lambda_1 * s

(the group term is 0 for a zero group), a step with learning rate ``lr`` is:

* before ``half_space_start``: ``x <- x - lr * d`` (subgradient stage);
* from ``half_space_start`` on, with the trial point ``x_hat = x - lr * d``:

  1. group half-space projection: ``x_g <- 0`` for a group that is zero or
     whose trial leaves the half-space, ``<x_hat_g, x_g> < epsilon * ||x_g||^2``;
  2. orthant projection inside each surviving group: an element whose trial
     leaves its orthant, ``x_hat_i * s_i <= 0``, becomes 0 (so an element that
     is already 0 stays 0); the others take ``x_hat_i``.

The half-space stage therefore never flips the sign of an element and never
revives a zero element or a zero group. With ``momentum`` the direction is a
heavy-ball buffer ``buf = mu * buf + d`` that restarts (``buf = d``) at
``half_space_start``, like :func:`hspg_jax.hspg`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import obproxsg
from hspg_jax import proxsg
# Names, not the module: ``hspg_jax.hspg`` is also the name of the hspg() function.
from hspg_jax.hspg import family_epsilons
from hspg_jax.hspg import half_space_kill
from hspg_jax.hspg import subgradient_coefficient

__all__ = ["HierarchicalState", "hierarchical_hspg"]

SIGNATURE = ("Signature: hierarchical_hspg(learning_rate, group_strength, l1_strength, groups, "
             "*, half_space_start, epsilon, momentum).")


class HierarchicalState(NamedTuple):
  """State of :func:`hierarchical_hspg`."""

  count: jax.Array  # int32 step counter
  momentum: Any  # the heavy-ball buffer, like params (None without momentum)


def hierarchical_hspg(
    learning_rate,
    group_strength,
    l1_strength,
    groups,
    *,
    half_space_start: int,
    epsilon: float | Mapping[str, float] = 0.0,
    momentum: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """HSPG for the sparse-group lasso: zero groups and zero elements at once.

  See the module docstring for the equations. The projection steps return
  ``target - params``, so ``optax.apply_updates`` lands exactly on zero.

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    group_strength: ``lambda_g >= 0``, float or schedule.
    l1_strength: ``lambda_1 >= 0``, float or schedule.
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`; the l1 term covers the grouped leaves.
    half_space_start: first step of the projection stage, >= 0.
    epsilon: half-space control in [0, 1): float or schedule, or ``{family
      regex: float or schedule}``.
    momentum: optional heavy-ball momentum in [0, 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params``; works
    under ``optax.inject_hyperparams``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> groups = {"w": 0, "b": None}          # 3 groups: the rows of w
    >>> c = jnp.array([[2.0, 0.0], [0.01, 0.01], [1.0, 1.0]])
    >>> loss = lambda p: 0.5 * jnp.sum((p["w"] - c) ** 2)
    >>> tx = hspg_jax.hierarchical_hspg(0.1, 0.1, 0.1, groups, half_space_start=5)
    >>> state = tx.init(params)
    >>> for _ in range(60):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params["w"].round(2))   # row 1 is a zero group, element (0, 1) is zero
    [[1.8  0.  ]
     [0.   0.  ]
     [0.83 0.83]]
  """
  _hparams.check_range("learning_rate", learning_rate, 0.0, hint=SIGNATURE)
  _hparams.check_range("group_strength", group_strength, 0.0, hint=SIGNATURE)
  _hparams.check_range("l1_strength", l1_strength, 0.0, hint=SIGNATURE)
  groups_lib.check_spec(groups, "hierarchical_hspg: groups", hint=SIGNATURE)
  _hparams.check_step("half_space_start", half_space_start, hint=SIGNATURE)
  if momentum is not None:
    _hparams.check_range("momentum", momentum, 0.0, 1.0)
  if not isinstance(epsilon, Mapping):
    _hparams.check_range("epsilon", epsilon, 0.0, 1.0)
  has_m = momentum is not None

  def init_fn(params):
    family_epsilons(epsilon, groups_lib.resolve(params, groups), None)  # validate the mapping
    buf = jax.tree.map(jnp.zeros_like, params) if has_m else None
    return HierarchicalState(count=jnp.zeros([], jnp.int32), momentum=buf)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    structure, x, g, treedef = proxsg.flatten_inputs("hierarchical_hspg", groups, updates, params)
    count = state.count
    lr = _hparams.value_at(learning_rate, count)
    lam_g = _hparams.clip(_hparams.value_at(group_strength, count), 0.0, np.inf)
    lam_1 = _hparams.clip(_hparams.value_at(l1_strength, count), 0.0, np.inf)
    half_space = count >= half_space_start

    sq = groups_lib.family_sq_norms(structure, x)
    coefs = [subgradient_coefficient(s, lam_g) for s in sq]

    def direction(m, coef):
      xi = groups_lib.promote(x[m.index])
      return coef * xi + lam_1 * jnp.sign(xi) + groups_lib.promote(g[m.index])

    d = groups_lib.map_members(structure, coefs, direction, [groups_lib.promote(v) for v in g])
    if has_m:
      mu = _hparams.clip(momentum, 0.0, 1.0)
      keep = count != half_space_start  # the half-space stage starts a fresh buffer
      old = jax.tree_util.tree_leaves(state.momentum)
      d = [jnp.where(keep, mu, 0.0) * b + di for b, di in zip(old, d)]
      new_m = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.momentum),
                                           [di.astype(b.dtype) for b, di in zip(old, d)])
    else:
      new_m = None
    u = [-lr * di for di in d]

    # <x_hat_g, x_g> = ||x_g||^2 + <u_g, x_g>
    ux = groups_lib.family_sums(structure, [x, u], jnp.multiply)
    eps = family_epsilons(epsilon, structure, count)
    kills = [half_space & half_space_kill(s == 0, s, s + p, e, None)
             for s, p, e in zip(sq, ux, eps)]

    def project(m, kill):
      xi, ui = groups_lib.promote(x[m.index]), u[m.index]
      projected = jnp.where(kill, -xi, obproxsg.orthant_target(xi, ui))
      return jnp.where(half_space, projected, ui)

    new_u = groups_lib.map_members(structure, kills, project, u)
    new_u = [ui.astype(gi.dtype) for ui, gi in zip(new_u, g)]
    return (jax.tree_util.tree_unflatten(treedef, new_u),
            HierarchicalState(count=optax.safe_int32_increment(count), momentum=new_m))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
