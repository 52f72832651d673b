"""HSPG: Half-Space Proximal Stochastic Gradient as Optax transforms.

Solves ``min_x f(x) + lambda * sum_g ||x_g||_2`` (Chen et al., "A Half-Space
Stochastic Projected Gradient Method for Group Sparsity Regularization";
OTOv1). The algorithm is split into composable pieces:

* :func:`add_group_lasso_subgradient` turns gradients into the direction
  ``d_g = grad_g + lambda * x_g / (||x_g|| + 1e-6)`` (plain ``grad_g`` for a
  zero group and for ungrouped leaves);
* any Optax base direction follows (``optax.sgd`` with or without momentum,
  ``optax.adam``, ...) and produces the trial step ``u``, so the trial point is
  ``x_hat = x + u``;
* :func:`half_space_projection` goes last: from step ``start_step`` on it sets
  ``x_hat_g = 0`` for every group already zero and for every group whose trial
  point leaves the half-space ``<x_hat_g, x_g> >= epsilon * ||x_g||^2``. It
  returns ``target - params`` so that ``optax.apply_updates`` lands exactly on
  zero, and zero groups stay zero for good.

:func:`hspg` chains them into the paper's optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import prox as prox_lib

__all__ = [
    "GroupLassoState",
    "HalfSpaceState",
    "add_group_lasso_subgradient",
    "half_space_projection",
    "hspg",
]

NORM_EPS = 1e-6  # the reference implementation's guard in x_g / (||x_g|| + 1e-6)


class GroupLassoState(NamedTuple):
  count: jax.Array  # int32 step counter


class HalfSpaceState(NamedTuple):
  count: jax.Array  # int32 step counter


def _require_params(params, name):
  if params is None:
    raise ValueError(f"{name} needs params: call update(updates, state, params). "
                     + optax._src.base.NO_PARAMS_MSG)


def add_group_lasso_subgradient(
    groups, reg_strength, *, start_step: int = 0
) -> optax.GradientTransformationExtraArgs:
  """Adds the group-lasso subgradient ``lambda * x_g / (||x_g|| + 1e-6)`` to updates.

  Groups with ``||x_g|| == 0`` get nothing added (the minimum-norm subgradient
  is taken as zero there); ungrouped leaves pass through.

  Args:
    groups: a group spec pytree, :class:`~hspg_jax.GroupRules` or resolved
      :class:`~hspg_jax.GroupStructure`.
    reg_strength: lambda >= 0, a float or an optax schedule.
    start_step: the term is added only from this step on (a Prox-SG first stage
      handles the regulariser in its proximal step instead).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([[3.0, 4.0], [0.0, 0.0]])}
    >>> tx = hspg_jax.add_group_lasso_subgradient({"w": 0}, reg_strength=0.5)
    >>> u, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
    >>> print(u["w"].round(3))   # row 0: 0.5 * (3, 4) / 5; row 1 is a zero group
    [[0.3 0.4]
     [0.  0. ]]
  """
  _hparams.check_range("reg_strength", reg_strength, 0.0)

  def init_fn(params):
    groups_lib.resolve(params, groups)  # validate once, outside jit
    return GroupLassoState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "add_group_lasso_subgradient")
    structure = groups_lib.resolve(params, groups)
    x = jax.tree_util.tree_leaves(params)
    u, updates_def = jax.tree_util.tree_flatten(updates)
    groups_lib.check_same_leaves(x, u)
    lam = _hparams.value_at(reg_strength, state.count)
    active = state.count >= start_step
    coefs = []
    for s in groups_lib.family_sq_norms(structure, x):
      norm = jnp.sqrt(s)
      coefs.append(jnp.where(active & (s != 0), lam / (norm + NORM_EPS), 0.0))

    def add(m, coef):
      xi, ui = x[m.index], u[m.index]
      return (ui + coef * xi).astype(ui.dtype)

    new_u = groups_lib.map_members(structure, coefs, add, u)
    return (jax.tree_util.tree_unflatten(updates_def, new_u),
            GroupLassoState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _cap_projection(proj, zero, margin, upper):
  """The reference implementation's sparsity cap, for one family.

  With ``G`` groups, ``Z`` the zero groups and ``P`` the candidates:
  nothing is projected unless ``|Z| < G * upper``; if ``n = |P u Z|`` exceeds
  ``G * upper``, only ``k = floor(n - G * upper)`` (clipped to ``[0, G - 1]``)
  candidates are projected, those with the most negative margin
  ``<x_hat_g, x_g> - epsilon ||x_g||^2`` relative to ``||x_g||^2`` (ties by index).
  The reference picks the ``k`` at random. Counts are compared as integers
  (with a 1e-6 round-off guard on ``G * upper``), using
  ``floor(n - G*upper) = n - ceil(G*upper)`` for integer ``n``.
  """
  num_groups = proj.shape[0]
  allowed = num_groups * upper
  floor = jnp.floor(allowed + 1e-6).astype(jnp.int32)  # n > G*upper  <=>  n > floor
  ceil = jnp.ceil(allowed - 1e-6).astype(jnp.int32)    # n < G*upper  <=>  n < ceil
  n_zero = jnp.sum(zero, dtype=jnp.int32)
  n_trial = jnp.sum(proj | zero, dtype=jnp.int32)
  k = jnp.clip(n_trial - ceil, 0, num_groups - 1)
  ranked = jnp.where(proj, margin, jnp.inf)
  rank = jnp.argsort(jnp.argsort(ranked, stable=True), stable=True)
  capped = proj & (rank < k)
  limited = jnp.where(n_trial > floor, capped, proj)
  return jnp.where(n_zero < ceil, limited, False)


def half_space_projection(
    groups,
    epsilon: float | Mapping[str, float] = 0.0,
    *,
    start_step: int = 0,
    upper_group_sparsity: float | None = None,
    prox_threshold: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """The half-space projection stage of HSPG; goes last in a chain.

  Reads the trial step ``u`` computed by the transforms before it and the
  current ``params`` ``x``; with ``x_hat = x + u``:

  * before ``start_step``: returns ``u`` unchanged (subgradient stage), or, when
    ``prox_threshold`` is given, the group soft-threshold step
    ``x_hat_g * max(0, 1 - t / ||x_hat_g||) - x_g`` (a Prox-SG stage; then
    leave the subgradient term out before ``start_step``);
  * from ``start_step`` on: groups already zero (``Z``) and groups with
    ``<x_hat_g, x_g> < epsilon * ||x_g||^2`` (``P``) get the update ``-x_g``,
    landing exactly on zero; the rest get ``u``. Ungrouped leaves always get
    ``u``.

  Args:
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    epsilon: in [0, 1); a float, or ``{family regex: float}`` to give group
      families different values (first full match wins). Larger values project
      more aggressively.
    start_step: first step of the half-space stage (``N_P`` in the paper).
    upper_group_sparsity: optional cap in (0, 1] on each family's fraction of
      zero groups, applied as in the reference implementation (see
      ``_cap_projection``): projection stops once a family reaches the cap, and
      a step that would overshoot projects only ``floor(|P u Z| - G * upper)``
      of the candidates, which damps but does not strictly bound the overshoot.
    prox_threshold: optional threshold ``t`` (float or schedule; ``lr * lambda``
      for a Prox-SG first stage).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([[1.0, 1.0], [1.0, 1.0]])}
    >>> tx = hspg_jax.half_space_projection({"w": 0}, epsilon=0.0)
    >>> step = {"w": jnp.array([[-2.0, -2.0], [-0.5, 0.0]])}  # row 0 crosses the origin
    >>> u, _ = tx.update(step, tx.init(params), params)
    >>> optax.apply_updates(params, u)["w"].tolist()
    [[0.0, 0.0], [0.5, 1.0]]
  """
  if upper_group_sparsity is not None:
    _hparams.check_range("upper_group_sparsity", upper_group_sparsity, 0.0, 1.0,
                         closed_high=True)
  if prox_threshold is not None:
    _hparams.check_range("prox_threshold", prox_threshold, 0.0)
  if not isinstance(epsilon, Mapping):
    _hparams.check_range("epsilon", epsilon, 0.0, 1.0)

  def init_fn(params):
    structure = groups_lib.resolve(params, groups)
    _hparams.per_family("epsilon", epsilon, structure.family_names, 0.0, 1.0)
    return HalfSpaceState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "half_space_projection")
    structure = groups_lib.resolve(params, groups)
    epsilons = _hparams.per_family("epsilon", epsilon, structure.family_names, 0.0, 1.0)
    x = jax.tree_util.tree_leaves(params)
    u, updates_def = jax.tree_util.tree_flatten(updates)
    groups_lib.check_same_leaves(x, u)
    half_space = state.count >= start_step

    sq = groups_lib.family_sq_norms(structure, x)
    dot = groups_lib.family_sums(structure, [x, u], lambda xi, ui: (xi + ui) * xi)
    if prox_threshold is not None:
      t = _hparams.value_at(prox_threshold, state.count)
      trial_sq = groups_lib.family_sums(structure, [x, u], lambda xi, ui: jnp.square(xi + ui))

    kill, scale = [], []
    for i, (s, d, eps) in enumerate(zip(sq, dot, epsilons)):
      zero = s == 0
      bound = eps * s
      proj = (~zero) & (d < bound)
      if upper_group_sparsity is not None:
        margin = jnp.where(zero, 0.0, (d - bound) / jnp.where(zero, 1.0, s))
        proj = _cap_projection(proj, zero, margin, upper_group_sparsity)
      kill.append(half_space & (proj | zero))
      if prox_threshold is not None:
        factor = prox_lib.block_soft_threshold_factor(trial_sq[i], t)
        scale.append(jnp.where(half_space, 1.0, factor))

    def project(m, k):
      xi, ui = x[m.index], u[m.index]
      return jnp.where(k, -xi, ui).astype(ui.dtype)

    new_u = groups_lib.map_members(structure, kill, project, u)
    if prox_threshold is not None:
      def shrink(m, f):
        xi, ui = x[m.index], new_u[m.index]
        # f == 1 keeps the half-space result; otherwise target = f * x_hat.
        return jnp.where(f == 1.0, ui, f * (xi + u[m.index]) - xi).astype(ui.dtype)

      new_u = groups_lib.map_members(structure, scale, shrink, new_u)
    return (jax.tree_util.tree_unflatten(updates_def, new_u),
            HalfSpaceState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def hspg(
    learning_rate,
    reg_strength,
    groups,
    *,
    half_space_start: int = 0,
    epsilon: float | Mapping[str, float] = 0.0,
    momentum: float | None = None,
    nesterov: bool = False,
    upper_group_sparsity: float | None = None,
    first_stage: str = "subgradient",
) -> optax.GradientTransformationExtraArgs:
  """HSPG with an SGD base direction, as in the paper and OTOv1.

  Steps ``< half_space_start`` are the first stage: subgradient steps
  ``x - lr * d`` (``first_stage="subgradient"``, the reference implementation)
  or Prox-SG steps ``prox_{lr*lambda}(x - lr * grad)`` (``first_stage="prox"``,
  the paper's Algorithm 1). Later steps are half-space steps. With
  ``momentum`` the direction is a heavy-ball buffer ``buf = mu * buf + d``
  (first ``buf = d``), shared by both stages.

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    reg_strength: lambda >= 0, float or optax schedule.
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    half_space_start: first step of the half-space stage (``N_P``).
    epsilon: half-space control in [0, 1), float or ``{family regex: float}``.
    momentum: optional heavy-ball momentum ``mu``.
    nesterov: use Nesterov momentum.
    upper_group_sparsity: optional cap on each family's group sparsity (see
      :func:`half_space_projection`).
    first_stage: ``"subgradient"`` or ``"prox"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; works under
    ``optax.inject_hyperparams``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> groups = {"w": 0, "b": None}           # one group per row of w
    >>> tx = hspg_jax.hspg(learning_rate=0.1, reg_strength=2.0, groups=groups,
    ...                    half_space_start=5)
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum((p["w"][:2] - 1.0) ** 2)  # rows 2, 3 unused by f
    >>> for _ in range(30):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(hspg_jax.group_sparsity(params, groups), params["w"][2:].tolist())
    0.5 [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
  """
  if first_stage not in ("subgradient", "prox"):
    raise ValueError(f"first_stage must be 'subgradient' or 'prox', got {first_stage!r}")
  _hparams.check_range("learning_rate", learning_rate, 0.0)
  _hparams.check_range("reg_strength", reg_strength, 0.0)
  if momentum is not None:
    _hparams.check_range("momentum", momentum, 0.0, 1.0)
  prox = first_stage == "prox"
  threshold = None
  if prox:
    threshold = lambda count: (_hparams.value_at(learning_rate, count)  # noqa: E731
                               * _hparams.value_at(reg_strength, count))
  return optax.chain(
      add_group_lasso_subgradient(groups, reg_strength,
                                  start_step=half_space_start if prox else 0),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
      half_space_projection(groups, epsilon, start_step=half_space_start,
                            upper_group_sparsity=upper_group_sparsity,
                            prox_threshold=threshold),
  )
