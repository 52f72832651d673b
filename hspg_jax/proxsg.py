"""Prox-SG baselines: stochastic gradient steps followed by a proximal step."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import prox as prox_lib

__all__ = ["GroupProxState", "group_prox", "prox_sg"]


class GroupProxState(NamedTuple):
  count: jax.Array  # int32 step counter


def group_prox(groups, threshold) -> optax.GradientTransformationExtraArgs:
  """Replaces the trial step ``u`` by ``prox_t(x + u) - x`` (group soft-threshold).

  Goes last in a chain: groups shrunk to zero get the update ``-x_g`` and land
  exactly on zero under ``optax.apply_updates``.

  Args:
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    threshold: ``t >= 0`` (``lr * lambda`` for Prox-SG), float or schedule.
  """
  _hparams.check_range("threshold", threshold, 0.0)

  def init_fn(params):
    groups_lib.resolve(params, groups)
    return GroupProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("group_prox needs params. " + optax._src.base.NO_PARAMS_MSG)
    structure = groups_lib.resolve(params, groups)
    x = jax.tree_util.tree_leaves(params)
    u, updates_def = jax.tree_util.tree_flatten(updates)
    groups_lib.check_same_leaves(x, u)
    t = _hparams.value_at(threshold, state.count)
    trial_sq = groups_lib.family_sums(structure, [x, u], lambda xi, ui: jnp.square(xi + ui))
    factors = [prox_lib.block_soft_threshold_factor(s, t) for s in trial_sq]

    def step(m, f):
      xi, ui = x[m.index], u[m.index]
      return (f * (xi + ui) - xi).astype(ui.dtype)

    new_u = groups_lib.map_members(structure, factors, step, u)
    return (jax.tree_util.tree_unflatten(updates_def, new_u),
            GroupProxState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def prox_sg(
    learning_rate,
    reg_strength,
    groups,
    *,
    momentum: float | None = None,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Group-lasso Prox-SG: ``x <- prox_{lr*lambda}(x - lr * grad)``.

  The proximal operator is the block soft-threshold
  ``x_g * max(0, 1 - lr*lambda / ||x_g||)``. With ``momentum``, ``grad`` is
  replaced by a heavy-ball buffer.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
    >>> tx = hspg_jax.prox_sg(learning_rate=1.0, reg_strength=1.0, groups={"w": 0})
    >>> u, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
    >>> print(optax.apply_updates(params, u)["w"].round(3))
    [[2.4 3.2]
     [0.  0. ]]
  """
  _hparams.check_range("learning_rate", learning_rate, 0.0)
  _hparams.check_range("reg_strength", reg_strength, 0.0)
  threshold = lambda count: (_hparams.value_at(learning_rate, count)  # noqa: E731
                             * _hparams.value_at(reg_strength, count))
  return optax.chain(
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
      group_prox(groups, threshold),
  )
