"""Prox-SG baselines: stochastic gradient steps followed by a proximal step.

Two regularisers share one shape of transform: the group lasso
``lambda * sum_g ||x_g||_2`` (:func:`group_prox`, :func:`prox_sg`) and the l1
norm ``lambda * ||x||_1`` of every grouped leaf's elements (:func:`l1_prox`,
:func:`prox_sg_l1`). The proximal transforms go last in a chain and return
``target - params``, so coordinates or groups shrunk to zero land exactly on
zero under ``optax.apply_updates``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import prox as prox_lib

__all__ = ["GroupProxState", "group_prox", "l1_prox", "prox_sg", "prox_sg_l1"]


class GroupProxState(NamedTuple):
  count: jax.Array  # int32 step counter


def grouped_indices(structure: groups_lib.GroupStructure) -> list[int]:
  """Positions (among the flattened leaves) of the leaves some family groups."""
  return sorted({m.index for f in structure.families for m in f.members})


def flatten_inputs(name: str, groups, updates, params):
  """``(structure, params leaves, updates leaves, updates treedef)``, checked.

  Raises:
    ValueError: naming the transform ``name`` when ``params`` is missing, and
      when updates and params do not match.
  """
  if params is None:
    raise ValueError(f"{name} needs params: call update(updates, state, params). "
                     + optax._src.base.NO_PARAMS_MSG)
  structure = groups_lib.resolve(params, groups)
  x = jax.tree_util.tree_leaves(params)
  u, updates_def = jax.tree_util.tree_flatten(updates)
  groups_lib.check_same_leaves(x, u)
  return structure, x, u, updates_def


def projection_transform(name: str, groups, new_updates) -> optax.GradientTransformationExtraArgs:
  """The common frame of a transform that goes last and rewrites the trial step.

  ``new_updates(structure, x, u, count)`` gets the resolved groups, the
  flattened params and updates and the step count, and returns the new list of
  update leaves. The state is a :class:`GroupProxState` step counter.
  """
  def init_fn(params):
    groups_lib.resolve(params, groups)  # validate once, outside jit
    return GroupProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    structure, x, u, updates_def = flatten_inputs(name, groups, updates, params)
    new_u = new_updates(structure, x, u, state.count)
    return (jax.tree_util.tree_unflatten(updates_def, new_u),
            GroupProxState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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

  def new_updates(structure, x, u, count):
    t = _hparams.value_at(threshold, count)
    trial_sq = groups_lib.family_sums(structure, [x, u], lambda xi, ui: jnp.square(xi + ui))
    factors = [prox_lib.block_soft_threshold_factor(s, t) for s in trial_sq]

    def step(m, f):
      xi, ui = x[m.index], u[m.index]
      return (f * (xi + ui) - xi).astype(ui.dtype)

    return groups_lib.map_members(structure, factors, step, u)

  return projection_transform("group_prox", groups, new_updates)


def l1_prox_step(x, u, threshold):
  """``soft_t(x + u) - x`` for one leaf: the l1 Prox-SG step from the trial step ``u``.

  Computed in the accumulation dtype; a coordinate shrunk to zero gets exactly
  ``-x``.
  """
  xi = groups_lib.promote(x)
  target = prox_lib.l1_soft_threshold(xi + u, threshold)
  return (target - xi).astype(u.dtype)


def l1_prox(groups, threshold) -> optax.GradientTransformationExtraArgs:
  """Replaces the trial step ``u`` by ``soft_t(x + u) - x`` on grouped leaves.

  ``soft_t(v) = sign(v) * max(|v| - t, 0)`` elementwise is the proximal
  operator of ``t * ||v||_1``. The spec only says *which* leaves are
  regularised (those with a spec leaf other than ``None``); the group axes do
  not matter for the l1 norm. Ungrouped leaves keep ``u``. Goes last in a
  chain: coordinates shrunk to zero get ``-x`` and land exactly on zero.

  Args:
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    threshold: ``t >= 0`` (``lr * lambda`` for Prox-SG), float or schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([1.0, -0.25, 0.5]), "b": jnp.array([0.5])}
    >>> tx = hspg_jax.l1_prox({"w": 0, "b": None}, threshold=0.25)
    >>> u, _ = tx.update({"w": jnp.zeros(3), "b": jnp.zeros(1)}, tx.init(params), params)
    >>> new = optax.apply_updates(params, u)
    >>> print(new["w"], new["b"])   # b is not regularised
    [0.75 0.   0.25] [0.5]
  """
  _hparams.check_range("threshold", threshold, 0.0)
  groups_lib.check_spec(groups, "l1_prox: groups")

  def new_updates(structure, x, u, count):
    t = _hparams.clip(_hparams.value_at(threshold, count), 0.0, jnp.inf)
    out = list(u)
    for i in grouped_indices(structure):
      out[i] = l1_prox_step(x[i], u[i], t)
    return out

  return projection_transform("l1_prox", groups, new_updates)


def lr_times_reg(learning_rate, reg_strength):
  """The Prox-SG threshold ``lr * lambda`` as a schedule of the step count."""
  return lambda count: (_hparams.value_at(learning_rate, count)
                        * _hparams.value_at(reg_strength, count))


def check_sgd_hparams(learning_rate, reg_strength, momentum, groups, where: str):
  """The input checks every Prox-SG-like factory shares."""
  _hparams.check_range("learning_rate", learning_rate, 0.0)
  _hparams.check_range("reg_strength", reg_strength, 0.0)
  if momentum is not None:
    _hparams.check_range("momentum", momentum, 0.0, 1.0)
  groups_lib.check_spec(groups, f"{where}: groups")


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
  return optax.chain(
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
      group_prox(groups, lr_times_reg(learning_rate, reg_strength)),
  )


def prox_sg_l1(
    learning_rate,
    reg_strength,
    groups,
    *,
    momentum: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """l1 Prox-SG: ``x <- soft_{lr*lambda}(x - lr * grad)`` on grouped leaves.

  Solves ``min_x f(x) + lambda * ||x_R||_1``, where ``x_R`` are the elements of
  every leaf the group spec regularises (spec leaf not ``None``); the other
  leaves (biases, ...) take plain SGD steps. ``soft_t(v) = sign(v) *
  max(|v| - t, 0)`` elementwise, so every coordinate with
  ``|x - lr*grad| <= lr*lambda`` becomes exactly zero. As in the reference
  ``ProxSG`` (tianyic/obproxsg, ``optimizer/proxsg.py``) there is no momentum
  by default; with ``momentum`` the gradient is replaced by a heavy-ball
  buffer ``buf = mu * buf + grad``.

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    reg_strength: lambda >= 0, float or optax schedule.
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`; only ``None`` versus not-``None``
      matters here.
    momentum: optional heavy-ball momentum in [0, 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; works under
    ``optax.inject_hyperparams``.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([1.0, -0.25, 0.5]), "b": jnp.array([0.25])}
    >>> tx = hspg_jax.prox_sg_l1(learning_rate=0.5, reg_strength=0.5,
    ...                          groups={"w": 0, "b": None})
    >>> grads = {"w": jnp.array([0.5, -0.5, -0.5]), "b": jnp.array([1.0])}
    >>> u, _ = tx.update(grads, tx.init(params), params)
    >>> new = optax.apply_updates(params, u)
    >>> print(new["w"], new["b"])   # soft_0.25([0.75, 0, 0.75]); b: plain SGD
    [0.5 0.  0.5] [-0.25]
  """
  check_sgd_hparams(learning_rate, reg_strength, momentum, groups, "prox_sg_l1")
  return optax.chain(
      optax.sgd(learning_rate, momentum=momentum),
      l1_prox(groups, lr_times_reg(learning_rate, reg_strength)),
  )
