"""Stochastic ADMM for the group lasso, as an Optax transform.

Solves ``min_x f(x) + lambda * sum_g ||x_g||_2`` through the split
``min f(x) + lambda * sum_g ||z_g||_2  s.t.  x = z`` with the scaled augmented
Lagrangian ``f(x) + lambda * Omega(z) + rho/2 * ||x - z + u||^2``
(Boyd et al. 2011, section 3.1.1). Every step is one stochastic ADMM
iteration (the x-minimisation replaced by one SGD step, as in Ouyang et al.
2013, "Stochastic ADMM"):

* x-step: ``x <- x - lr * (grad f(x) + rho * (x - z + u))`` (the SGD step on
  the augmented Lagrangian; with ``momentum`` a heavy-ball buffer of that
  direction);
* z-step: ``z_g <- block_soft_threshold(x_g + u_g, lambda / rho)`` with the
  new ``x``: exactly zero whenever ``||x_g + u_g|| <= lambda / rho``;
* dual step: ``u <- u + x - z``.

The parameters ``x`` are the primal iterate and are generally dense; the
sparse solution is the consensus ``z``, kept in the optimizer state (read it
with :func:`admm_consensus` or ``optax.tree_utils.tree_get(state, "z")``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import prox as prox_lib
from hspg_jax import proxsg

__all__ = ["ADMMState", "admm", "admm_consensus"]

ADMM_SIGNATURE = ("Signature: admm(learning_rate, reg_strength, groups, *, rho, "
                  "momentum=None).")


class ADMMState(NamedTuple):
  """The state of :func:`admm`.

  Attributes:
    count: int32 step counter.
    z: the consensus variable, a pytree like the params. On grouped leaves it
      is the block soft-threshold of ``x + u`` (exact zero groups); on
      ungrouped leaves, which the regulariser does not touch, it mirrors the
      params ``x``, so ``z`` is a complete parameter pytree (the sparse model).
    u: the scaled dual variable (``y / rho``), like the params; always zero on
      ungrouped leaves.
    inner_state: the state of the SGD (momentum) x-step.
  """

  count: jax.Array
  z: Any
  u: Any
  inner_state: Any


def _check_positive(name, hparam):
  """Raises unless ``hparam`` (a float, or a schedule at step 0) is > 0 and finite."""
  _hparams.check_range(name, hparam, 0.0, hint=ADMM_SIGNATURE)
  value = hparam(0) if callable(hparam) else hparam
  if not isinstance(value, jax.core.Tracer) and np.any(np.asarray(value) <= 0):
    where = " at step 0" if callable(hparam) else ""
    raise ValueError(f"{name} must be > 0, got {np.asarray(value).tolist()}{where}")


def admm(
    learning_rate,
    reg_strength,
    groups,
    *,
    rho,
    momentum: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Stochastic ADMM for ``min_x f(x) + lambda * sum_g ||x_g||_2``.

  One ADMM iteration per step, with the scaled dual ``u`` (see the module
  docstring): the gradient of grouped leaves gets ``rho * (x - z + u)`` added,
  an SGD step (with optional momentum) moves the params ``x``, then
  ``z = block_soft_threshold(x + u, lambda / rho)`` group by group and
  ``u += x - z``, all with the new ``x``. ``z`` starts at the initial params
  and ``u`` at zero, so the first step is a plain SGD step. Ungrouped leaves
  take plain SGD steps; their ``z`` mirrors ``x`` and their ``u`` stays 0.

  ``rho`` trades the two: large values pull ``x`` hard towards ``z`` (and
  shrink ``lambda / rho``, so ``z`` is less sparse early); small values leave
  ``x`` free and make ``z`` sparse long before ``x`` and ``z`` agree.

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    reg_strength: lambda >= 0, float or optax schedule.
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    rho: the augmented-Lagrangian penalty ``rho > 0``, float or schedule
      (values traced under ``inject_hyperparams`` are clipped to be > 0).
    momentum: optional heavy-ball momentum in [0, 1) for the x-step.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an :class:`ADMMState`.
    The params it produces are the dense primal iterate ``x``; the sparse
    consensus is :func:`admm_consensus` ``(state)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, hspg_jax
    >>> target = jnp.array([[3.0, 4.0], [0.3, 0.4]])        # group 1 is small
    >>> loss = lambda p: 0.5 * jnp.sum((p["w"] - target) ** 2)
    >>> params = {"w": jnp.ones((2, 2))}
    >>> tx = hspg_jax.admm(0.2, 1.0, {"w": 0}, rho=1.0)
    >>> state = tx.init(params)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> z = hspg_jax.admm_consensus(state)
    >>> print([[round(float(v), 3) for v in row] for row in z["w"]])  # prox_1(target)
    [[2.4, 3.2], [0.0, 0.0]]
  """
  proxsg.check_sgd_hparams(learning_rate, reg_strength, momentum, groups, "admm")
  _check_positive("rho", rho)
  inner = optax.with_extra_args_support(optax.sgd(learning_rate, momentum=momentum))

  def init_fn(params):
    groups_lib.resolve(params, groups)
    return ADMMState(count=jnp.zeros([], jnp.int32),
                     z=jax.tree.map(jnp.asarray, params),
                     u=jax.tree.map(jnp.zeros_like, params),
                     inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    structure, x, g, updates_def = proxsg.flatten_inputs("admm", groups, updates, params)
    z = jax.tree_util.tree_leaves(state.z)
    u = jax.tree_util.tree_leaves(state.u)
    rho_t = _hparams.clip(_hparams.value_at(rho, state.count), np.finfo(np.float32).tiny,
                          np.inf)
    lam = _hparams.clip(_hparams.value_at(reg_strength, state.count), 0.0, np.inf)
    grouped = proxsg.grouped_indices(structure)

    # x-step: SGD on f(x) + rho/2 ||x - z + u||^2.
    d = list(g)
    for i in grouped:
      d[i] = (g[i] + rho_t * (groups_lib.promote(x[i]) - z[i] + u[i])).astype(g[i].dtype)
    steps, inner_state = inner.update(jax.tree_util.tree_unflatten(updates_def, d),
                                      state.inner_state, params, **extra_args)
    s = jax.tree_util.tree_leaves(steps)
    new_x = [(xi + si).astype(xi.dtype) for xi, si in zip(x, s)]  # as optax.apply_updates

    # z-step with the new x, then the dual step.
    v = [xi + ui for xi, ui in zip(new_x, u)]
    factors = [prox_lib.block_soft_threshold_factor(sq, lam / rho_t)
               for sq in groups_lib.family_sq_norms(structure, v)]
    new_z = groups_lib.map_members(
        structure, factors, lambda m, f: (f * v[m.index]).astype(z[m.index].dtype), new_x)
    new_u = list(u)
    for i in grouped:
      new_u[i] = (u[i] + new_x[i] - new_z[i]).astype(u[i].dtype)

    treedef = jax.tree_util.tree_structure(state.z)
    return steps, ADMMState(count=optax.safe_int32_increment(state.count),
                            z=jax.tree_util.tree_unflatten(treedef, new_z),
                            u=jax.tree_util.tree_unflatten(treedef, new_u),
                            inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def admm_consensus(opt_state):
  """The consensus ``z`` of an :func:`admm` state, wherever it sits in ``opt_state``.

  Works on an :class:`ADMMState` and on states that contain one (a chain,
  ``optax.inject_hyperparams``, ``optax.apply_if_finite``, ...).

  Raises:
    ValueError: when ``opt_state`` holds no ADMM state, or more than one.
  """
  if isinstance(opt_state, ADMMState):
    return opt_state.z
  found = []

  def visit(node):
    if isinstance(node, ADMMState):
      found.append(node)
      return
    if isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)

  visit(opt_state)
  if len(found) != 1:
    raise ValueError(f"admm_consensus: opt_state must contain exactly one ADMMState, "
                     f"found {len(found)} (is this the state of hspg_jax.admm?)")
  return found[0].z
