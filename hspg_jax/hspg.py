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

:func:`hspg` is the paper's optimizer with an SGD base direction: by default
one fused transform computing the same step in fewer passes over memory (see
``hspg_jax/_fused.py``), or, with ``fused=False``, the chain of the pieces above.
:func:`restart_at` re-initialises a base direction's state (momentum, Adam
moments) at the stage switch, as the reference does for its SGD momentum.

Group reductions accumulate in float32 (or wider) whatever the leaf dtype, and a
group is zero only when every entry is exactly zero.
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
from hspg_jax import prox as prox_lib

__all__ = [
    "GroupLassoState",
    "HalfSpaceState",
    "RestartState",
    "add_group_lasso_subgradient",
    "half_space_projection",
    "hspg",
    "restart_at",
]

NORM_EPS = 1e-6  # the reference implementation's guard in x_g / (||x_g|| + 1e-6)
EPSILON_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))  # epsilon < 1
HSPG_SIGNATURE = ("Signature: hspg(learning_rate, reg_strength, groups, *, half_space_start, "
                  "epsilon, momentum, ...).")


class GroupLassoState(NamedTuple):
  count: jax.Array  # int32 step counter


class HalfSpaceState(NamedTuple):
  count: jax.Array  # int32 step counter


class RestartState(NamedTuple):
  count: jax.Array  # int32 step counter
  inner_state: Any


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
  _hparams.check_step("start_step", start_step)
  groups_lib.check_spec(groups, "add_group_lasso_subgradient: groups")

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
    lam = _hparams.clip(_hparams.value_at(reg_strength, state.count), 0.0, np.inf)
    active = state.count >= start_step
    coefs = [subgradient_coefficient(s, lam, active)
             for s in groups_lib.family_sq_norms(structure, x)]

    def add(m, coef):
      xi, ui = groups_lib.promote(x[m.index]), u[m.index]
      return (ui + coef * xi).astype(ui.dtype)

    new_u = groups_lib.map_members(structure, coefs, add, u)
    return (jax.tree_util.tree_unflatten(updates_def, new_u),
            GroupLassoState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def subgradient_coefficient(sq_norm, lam, active=True):
  """``lambda / (||x_g|| + 1e-6)``, 0 for zero groups and while inactive."""
  return jnp.where(active & (sq_norm != 0), lam / (jnp.sqrt(sq_norm) + NORM_EPS), 0.0)


def half_space_kill(zero, sq_norm, dot, eps, upper):
  """Groups set to zero by the half-space step, for one family.

  ``zero`` marks the groups that are exactly zero, ``sq_norm = ||x_g||^2`` and
  ``dot = <x_hat_g, x_g>``. Zero groups stay zero; a nonzero group is projected
  when ``dot < eps * ||x_g||^2``, limited by the ``upper`` cap when given.
  """
  bound = eps * sq_norm
  proj = (~zero) & (dot < bound)
  if upper is not None:
    margin = jnp.where(zero, 0.0, (dot - bound) / jnp.where(zero, 1.0, sq_norm))
    proj = _cap_projection(proj, zero, margin, upper)
  return proj | zero


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


def family_epsilons(epsilon, structure, count) -> list:
  """Epsilon per family at step ``count`` (validation only when ``count`` is None)."""
  values = _hparams.per_family("epsilon", epsilon, structure.family_names, 0.0, 1.0)
  if count is None:
    return values
  return [_hparams.clip(_hparams.value_at(v, count), 0.0, EPSILON_MAX) for v in values]


def cap_value(upper):
  """The sparsity cap clipped to [0, 1] (it may be traced under inject_hyperparams)."""
  return None if upper is None else _hparams.clip(upper, 0.0, 1.0)


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
    epsilon: in [0, 1); a float or schedule, or ``{family regex: float or
      schedule}`` to give group families different values (first full match
      wins). Larger values project more aggressively. Schedules are checked at
      step 0 and clipped to [0, 1) later (as are values changed under
      ``optax.inject_hyperparams``).
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
  _hparams.check_step("start_step", start_step)
  groups_lib.check_spec(groups, "half_space_projection: groups")

  def init_fn(params):
    family_epsilons(epsilon, groups_lib.resolve(params, groups), None)  # validate the mapping
    return HalfSpaceState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "half_space_projection")
    structure = groups_lib.resolve(params, groups)
    epsilons = family_epsilons(epsilon, structure, state.count)
    upper = cap_value(upper_group_sparsity)
    x = jax.tree_util.tree_leaves(params)
    u, updates_def = jax.tree_util.tree_flatten(updates)
    groups_lib.check_same_leaves(x, u)
    half_space = state.count >= start_step

    # <x_hat_g, x_g> = ||x_g||^2 + <u_g, x_g>: reductions of the inputs only, so
    # the trial point x + u is never materialised.
    sq = groups_lib.family_sq_norms(structure, x)
    ux = groups_lib.family_sums(structure, [x, u], jnp.multiply)
    if prox_threshold is not None:
      t = _hparams.value_at(prox_threshold, state.count)
      trial_sq = groups_lib.family_sums(structure, [x, u], lambda xi, ui: jnp.square(xi + ui))

    kill, scale = [], []
    for i, (s, d, eps) in enumerate(zip(sq, ux, epsilons)):
      kill.append(half_space & half_space_kill(s == 0, s, s + d, eps, upper))
      if prox_threshold is not None:
        factor = prox_lib.block_soft_threshold_factor(trial_sq[i], t)
        scale.append(jnp.where(half_space, 1.0, factor))

    def project(m, k):
      xi, ui = x[m.index], u[m.index]
      return jnp.where(k, -xi.astype(ui.dtype), ui)

    new_u = groups_lib.map_members(structure, kill, project, u)
    if prox_threshold is not None:
      def shrink(m, f):
        xi, ui = groups_lib.promote(x[m.index]), new_u[m.index]
        # f == 1 keeps the half-space result; otherwise target = f * x_hat.
        return jnp.where(f == 1.0, ui, (f * (xi + u[m.index]) - xi).astype(ui.dtype))

      new_u = groups_lib.map_members(structure, scale, shrink, new_u)
    return (jax.tree_util.tree_unflatten(updates_def, new_u),
            HalfSpaceState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def restart_at(inner: optax.GradientTransformation, step) -> optax.GradientTransformationExtraArgs:
  """Runs ``inner`` with its state re-initialised at step ``step``.

  For the stage switch of HSPG built from pieces: the reference HSPG keeps a
  separate momentum buffer for its half-space stage, so that stage starts from
  a fresh buffer. Wrap only the transform that owns the buffer, not the
  learning-rate scaling, whose schedule must keep counting::

      optax.chain(
          hspg_jax.add_group_lasso_subgradient(groups, lam),
          hspg_jax.restart_at(optax.trace(0.9), n_p),
          optax.scale_by_learning_rate(lr),
          hspg_jax.half_space_projection(groups, eps, start_step=n_p),
      )

  With ``optax.scale_by_adam()`` in place of ``optax.trace`` this restarts the
  Adam moments and their bias correction. (The reference's Adam variant,
  DHSPG in OTOv2, does *not* restart them; HSPG itself has no Adam variant.)

  Args:
    inner: the transform whose state is reset.
    step: the step at which ``inner`` sees a freshly initialised state, as if
      it started there.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> tx = hspg_jax.restart_at(optax.trace(0.5), step=2)
    >>> params = g = jnp.ones(1)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   u, state = tx.update(g, state, params)
    ...   print(float(u[0]))
    1.0
    1.5
    1.0
  """
  _hparams.check_step("restart_at: step", step)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return RestartState(count=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    fresh = inner.init(params if params is not None else updates)
    now = state.count == step
    # A select rather than lax.cond: XLA fuses it into inner's update, while a
    # conditional would copy the buffers.
    inner_state = jax.tree.map(lambda old, new: jnp.where(now, new, old),
                               state.inner_state, fresh)
    updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
    return updates, RestartState(count=optax.safe_int32_increment(state.count),
                                 inner_state=inner_state)

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
    restart_momentum: bool = True,
    fused: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """HSPG with an SGD base direction, as in the paper and OTOv1.

  Steps ``< half_space_start`` are the first stage: subgradient steps
  ``x - lr * d`` with ``d = grad + lambda * x_g / (||x_g|| + 1e-6)``
  (``first_stage="subgradient"``, the reference implementation) or Prox-SG
  steps ``prox_{lr*lambda}(x - lr * grad)`` (``first_stage="prox"``, the
  paper's Algorithm 1). Later steps are half-space steps.

  With ``momentum`` the direction is a heavy-ball buffer ``buf = mu * buf + d``
  (first ``buf = d``), on every leaf. Like the reference, the half-space stage
  starts from a fresh buffer (``buf = d`` at step ``half_space_start``);
  ``restart_momentum=False`` carries the first stage's buffer over instead.
  One difference from the reference remains, on purpose: its first stage
  steps the ungrouped parameters without momentum (and with momentum in the
  half-space stage); here momentum applies to them in both stages, as in
  ``optax.sgd``.

  Group reductions accumulate in float32 (or wider) whatever the parameter
  dtype, and a group counts as zero only when every entry is exactly zero;
  updates keep each parameter's dtype, so projected groups land exactly on 0.

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    reg_strength: lambda >= 0, float or optax schedule.
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    half_space_start: first step of the half-space stage (``N_P``), >= 0.
    epsilon: half-space control in [0, 1): float or schedule, or
      ``{family regex: float or schedule}``.
    momentum: optional heavy-ball momentum ``mu`` in [0, 1).
    nesterov: use Nesterov momentum.
    upper_group_sparsity: optional cap on each family's group sparsity (see
      :func:`half_space_projection`).
    first_stage: ``"subgradient"`` or ``"prox"``.
    restart_momentum: start the half-space stage from a fresh momentum buffer
      (the reference's behaviour; default).
    fused: compute the step in one transform that reads the parameters,
      gradients and buffer as few times as possible (default); ``False``
      builds the equivalent chain of :func:`add_group_lasso_subgradient`,
      ``optax`` momentum (wrapped in :func:`restart_at`), learning-rate
      scaling and :func:`half_space_projection`. Their states differ (the
      fused one is a :class:`~hspg_jax.HSPGState`).

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
  _hparams.check_range("learning_rate", learning_rate, 0.0, hint=HSPG_SIGNATURE)
  _hparams.check_range("reg_strength", reg_strength, 0.0, hint=HSPG_SIGNATURE)
  groups_lib.check_spec(groups, "hspg: groups", hint=HSPG_SIGNATURE)
  _hparams.check_step("half_space_start", half_space_start, hint=HSPG_SIGNATURE)
  if momentum is not None:
    _hparams.check_range("momentum", momentum, 0.0, 1.0)
  if upper_group_sparsity is not None:
    _hparams.check_range("upper_group_sparsity", upper_group_sparsity, 0.0, 1.0,
                         closed_high=True)
  if not isinstance(epsilon, Mapping):
    _hparams.check_range("epsilon", epsilon, 0.0, 1.0)
  prox = first_stage == "prox"
  if fused:
    from hspg_jax import _fused  # pylint: disable=import-outside-toplevel
    return _fused.hspg_fused(
        learning_rate, reg_strength, groups, half_space_start=half_space_start,
        epsilon=epsilon, momentum=momentum, nesterov=nesterov,
        upper_group_sparsity=upper_group_sparsity, prox_first=prox,
        restart_momentum=restart_momentum)
  threshold = None
  if prox:
    threshold = lambda count: (_hparams.value_at(learning_rate, count)  # noqa: E731
                               * _hparams.value_at(reg_strength, count))
  if momentum is None:
    direction = optax.identity()
  else:
    direction = optax.trace(decay=momentum, nesterov=nesterov)
    if restart_momentum:
      direction = restart_at(direction, half_space_start)
  return optax.chain(
      add_group_lasso_subgradient(groups, reg_strength,
                                  start_step=half_space_start if prox else 0),
      direction,
      optax.scale_by_learning_rate(learning_rate),
      half_space_projection(groups, epsilon, start_step=half_space_start,
                            upper_group_sparsity=upper_group_sparsity,
                            prox_threshold=threshold),
  )
