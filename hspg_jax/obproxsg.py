"""OBProx-SG: Orthant-Based Proximal Stochastic Gradient for l1 regularisation.

Solves ``min_x f(x) + lambda * ||x_R||_1`` (Chen et al., "Orthant Based
Proximal Stochastic Gradient Method for l1-Regularized Optimization", ECML
PKDD 2020), where ``x_R`` are the elements of every leaf the group spec
regularises (spec leaf not ``None``). Two kinds of step:

* a Prox-SG step ``x <- soft_{a*lambda}(x - a * grad)``, which predicts the
  support (see :func:`~hspg_jax.prox_sg_l1`);
* an orthant step: with ``zeta = sign(x)``, the trial point
  ``x_hat = x - a * (grad + lambda * zeta)`` on the non-zero coordinates (zero
  coordinates do not move), then the projection onto the orthant face of
  ``x``: every coordinate with ``x_hat * zeta <= 0`` becomes exactly 0. Zeros
  stay zero and signs never flip, so the orthant steps only add sparsity.

Ungrouped leaves (biases, ...) take plain (momentum) SGD steps in both.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import proxsg

__all__ = ["OrthantDirectionState", "obprox_sg", "orthant_projection"]

OBPROX_SIGNATURE = ("Signature: obprox_sg(learning_rate, reg_strength, groups, *, prox_steps, "
                    "orthant_steps=None, momentum=None).")


class OrthantDirectionState(NamedTuple):
  count: jax.Array  # int32 step counter


def orthant_target(x, u):
  """The orthant step's target for one leaf, from ``x`` and the trial step ``u``.

  ``x_hat = x + u`` is kept where it stays strictly inside the orthant of
  ``x`` (``x_hat * sign(x) > 0``) and is 0 elsewhere, which includes every
  coordinate where ``x`` is already 0. Returns the update ``target - x`` in
  ``u``'s dtype.
  """
  xi = groups_lib.promote(x)
  trial = xi + u
  target = jnp.where(trial * jnp.sign(xi) > 0, trial, 0.0)
  return (target - xi).astype(u.dtype)


def _schedule(prox_steps, orthant_steps):
  """``count -> True`` on the orthant steps of the two OBProx-SG schedules.

  The step counts may be traced (``optax.inject_hyperparams`` turns them into
  hyperparameters unless they are listed in its ``static_args``).
  """
  if orthant_steps is None:
    return lambda count: count >= prox_steps
  # The guard only matters for traced counts; concrete ones are checked > 0.
  return lambda count: (count % jnp.maximum(prox_steps + orthant_steps, 1)) >= prox_steps


def _orthant_or_prox(groups, threshold, is_orthant) -> optax.GradientTransformationExtraArgs:
  """Last in a chain: the orthant projection on orthant steps, else ``l1_prox(threshold)``.

  ``threshold=None`` leaves the trial step unchanged on the other steps.
  """
  def new_updates(structure, x, u, count):
    orthant = is_orthant(count)
    if threshold is not None:
      t = _hparams.clip(_hparams.value_at(threshold, count), 0.0, jnp.inf)
    out = list(u)
    for i in proxsg.grouped_indices(structure):
      # Both candidates are cheap elementwise maps; a select keeps it one fusion.
      other = u[i] if threshold is None else proxsg.l1_prox_step(x[i], u[i], t)
      out[i] = jnp.where(orthant, orthant_target(x[i], u[i]), other)
    return out

  return proxsg.projection_transform("orthant_projection", groups, new_updates)


def orthant_projection(groups, start_step: int = 0) -> optax.GradientTransformationExtraArgs:
  """The orthant face projection of OBProx-SG; goes last in a chain.

  From ``start_step`` on, with ``x`` the params, ``u`` the trial step computed
  by the transforms before it and ``zeta = sign(x)``, every coordinate of a
  grouped leaf whose trial point ``x + u`` leaves the orthant of ``x``
  (``(x + u) * zeta <= 0``) gets the update ``-x`` and lands exactly on zero;
  coordinates already zero stay zero; the others keep ``u``. The caller's
  step should already hold ``grad + lambda * zeta`` (zero on zero
  coordinates), as :func:`obprox_sg` arranges. Before ``start_step`` and on
  ungrouped leaves ``u`` passes unchanged.

  Args:
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`; every element of a leaf whose spec
      leaf is not ``None`` is projected.
    start_step: first step on which the projection applies, >= 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([1.0, -1.0, 0.0, 0.5])}
    >>> tx = hspg_jax.orthant_projection({"w": 0})
    >>> step = {"w": jnp.array([-2.0, -1.0, 3.0, -0.25])}  # w[0] would flip sign
    >>> u, _ = tx.update(step, tx.init(params), params)
    >>> print(optax.apply_updates(params, u)["w"])
    [ 0.   -2.    0.    0.25]
  """
  _hparams.check_step("start_step", start_step)
  groups_lib.check_spec(groups, "orthant_projection: groups")
  return _orthant_or_prox(groups, None, lambda count: count >= start_step)


def _orthant_direction(groups, reg_strength, is_orthant) -> optax.GradientTransformationExtraArgs:
  """On orthant steps, ``grad -> grad + lambda * sign(x)`` (0 where ``x == 0``).

  Applies to grouped leaves; other steps and ungrouped leaves pass unchanged.
  """
  def init_fn(params):
    groups_lib.resolve(params, groups)
    return OrthantDirectionState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    structure, x, g, updates_def = proxsg.flatten_inputs("obprox_sg", groups, updates, params)
    lam = _hparams.clip(_hparams.value_at(reg_strength, state.count), 0.0, jnp.inf)
    orthant = is_orthant(state.count)
    out = list(g)
    for i in proxsg.grouped_indices(structure):
      xi = groups_lib.promote(x[i])
      d = jnp.where(xi != 0, g[i] + lam * jnp.sign(xi), 0.0).astype(g[i].dtype)
      out[i] = jnp.where(orthant, d, g[i])
    return (jax.tree_util.tree_unflatten(updates_def, out),
            OrthantDirectionState(count=optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def obprox_sg(
    learning_rate,
    reg_strength,
    groups,
    *,
    prox_steps: int,
    orthant_steps: int | None = None,
    momentum: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """OBProx-SG for ``min_x f(x) + lambda * ||x_R||_1`` (fine-grained sparsity).

  Two schedules, as in the reference (tianyic/obproxsg, ``run.py``):

  * ``orthant_steps=None`` ("OBProx-SG+"): Prox-SG steps for the first
    ``prox_steps`` steps, orthant steps afterwards (the reference uses the
    first tenth of training);
  * otherwise: blocks of ``prox_steps`` Prox-SG steps then ``orthant_steps``
    orthant steps, repeated (the reference alternates 5 and 5 epochs).

  The reference counts its schedule in epochs; here it counts optimizer steps,
  so pass ``epochs * steps_per_epoch``. With ``a`` the learning rate:

  * Prox-SG step: ``x <- soft_{a*lambda}(x - a * grad)``;
  * orthant step: ``zeta = sign(x)``,
    ``x_hat = x - a * (grad + lambda * zeta)`` on coordinates with
    ``x != 0`` (zero coordinates do not move), then ``x_i <- 0`` wherever
    ``x_hat_i * zeta_i <= 0``, else ``x_hat_i``.

  Ungrouped leaves take plain SGD steps throughout. With ``momentum`` the
  direction (``grad`` or ``grad + lambda * zeta``) feeds one heavy-ball buffer
  shared by both kinds of step; the reference has no momentum.

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    reg_strength: lambda >= 0, float or optax schedule.
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`; every element of a leaf with a spec
      leaf other than ``None`` is regularised.
    prox_steps: ``N_P``, the number of Prox-SG steps (per block), >= 0.
    orthant_steps: ``N_O``, the number of orthant steps per block (>= 0), or
      ``None`` for orthant steps only once the first ``prox_steps`` are done.
    momentum: optional heavy-ball momentum in [0, 1).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; works under ``jit``,
    ``vmap``, ``pmap`` and ``optax.inject_hyperparams``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.array([2.0, -1.0, 0.3, -0.1]), "b": jnp.zeros(1)}
    >>> loss = lambda p: 0.5 * jnp.sum((p["w"] - jnp.array([1.0, -1.0, 0.05, 0.0])) ** 2)
    >>> tx = hspg_jax.obprox_sg(0.1, 0.2, {"w": 0, "b": None}, prox_steps=5)
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print([round(float(v), 3) for v in params["w"]])   # soft_0.2 of the targets
    [0.8, -0.8, 0.0, 0.0]
  """
  proxsg.check_sgd_hparams(learning_rate, reg_strength, momentum, groups, "obprox_sg")
  _hparams.check_step("prox_steps", prox_steps, hint=OBPROX_SIGNATURE)
  if orthant_steps is not None:
    _hparams.check_step("orthant_steps", orthant_steps, hint=OBPROX_SIGNATURE)
    if not isinstance(prox_steps + orthant_steps, jax.core.Tracer) and (
        prox_steps + orthant_steps == 0):
      raise ValueError("obprox_sg: prox_steps + orthant_steps must be > 0 (a block of "
                       "zero steps); use orthant_steps=None for orthant steps only")
  is_orthant = _schedule(prox_steps, orthant_steps)
  return optax.chain(
      _orthant_direction(groups, reg_strength, is_orthant),
      optax.sgd(learning_rate, momentum=momentum),
      _orthant_or_prox(groups, proxsg.lr_times_reg(learning_rate, reg_strength), is_orthant),
  )
