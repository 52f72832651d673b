"""The HSPG step with an SGD base direction as one transform, at the memory-traffic floor.

:func:`hspg_jax.hspg` returns this by default. It computes the same iterates as
the chain ``add_group_lasso_subgradient -> momentum -> learning rate ->
half_space_projection`` but reads the parameters, gradients and momentum buffer
as few times as XLA allows. On CPU, XLA neither fuses a reduction with the
elementwise work that consumes it nor produces two outputs from one loop, so
a step is a set of per-group reductions followed by elementwise loops:

* ``||x_g||^2`` is computed once and shared by the subgradient and the
  half-space test;
* the trial point is never materialised: with ``v`` the step direction,
  ``<x_hat_g, x_g> = ||x_g||^2 - lr * <v_g, x_g>`` and ``<v_g, x_g>`` follows
  algebraically from one reduction of the old data (``<m + g, x>``);
* the buffer is stored pre-scaled, ``m = mu * buf``, so that reduction needs
  no scalar (XLA CPU would materialise the scalar's broadcast) and the new
  parameters follow from the new buffer alone: ``x' = x - (lr / mu) * m'``;
* ``jax.lax.optimization_barrier`` orders the reductions before the loops and
  the buffer write before the parameter write, so that with donated buffers
  XLA updates both in place instead of copying them.

Passes over parameter-sized arrays in the half-space stage: 6 without momentum
(reads 1 + 2, loop 3) and 11 with momentum (reads 1 + 3, buffer loop 4,
parameter loop 3); ``optax.sgd(momentum=0.9)`` makes 6. The first stage skips
the ``<m + g, x>`` reduction (a ``lax.switch`` on the step).

Exact zero groups: squares are accumulated in float32, in which a nonzero
float32 or bfloat16 group with all entries below about 1e-19 squares to 0.
Such a group must not count as zero, so groups with ``||x_g||^2 == 0`` are
checked with ``sum |x|`` inside a ``lax.cond``, which runs only when some group
has a zero norm that this optimizer did not produce itself (the state records
the groups it set to zero last step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hspg_jax import _hparams
from hspg_jax import groups as groups_lib
from hspg_jax import hspg as hspg_lib
from hspg_jax import prox as prox_lib

__all__ = ["HSPGState", "hspg_fused"]


class HSPGState(NamedTuple):
  """State of the fused :func:`hspg_jax.hspg`."""

  count: jax.Array  # int32 step counter
  momentum: Any  # mu * heavy-ball buffer, like params (None without momentum)
  zeroed: tuple  # per family, bool (G,): groups this optimizer set to zero last step


def _exact_zero_needed(dtype) -> bool:
  """Whether a nonzero entry of ``dtype`` can square to 0 in its accumulation dtype."""
  acc = groups_lib.accumulation_dtype(dtype)
  return float(jnp.finfo(dtype).tiny) ** 2 < float(jnp.finfo(acc).tiny)


def hspg_fused(learning_rate, reg_strength, groups, *, half_space_start, epsilon, momentum,
               nesterov, upper_group_sparsity, prox_first,
               restart_momentum) -> optax.GradientTransformationExtraArgs:
  """The fused HSPG transform; arguments as :func:`hspg_jax.hspg` (already checked)."""
  has_m = momentum is not None
  restart = has_m and restart_momentum
  mu_const = None if not has_m else _hparams._concrete(momentum)  # pylint: disable=protected-access

  def init_fn(params):
    structure = groups_lib.resolve(params, groups)
    hspg_lib.family_epsilons(epsilon, structure, None)
    buf = jax.tree.map(jnp.zeros_like, params) if has_m else None
    zeroed = tuple(jnp.zeros(f.num_groups, bool) for f in structure.families)
    return HSPGState(count=jnp.zeros([], jnp.int32), momentum=buf, zeroed=zeroed)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    hspg_lib._require_params(params, "hspg")  # pylint: disable=protected-access
    structure = groups_lib.resolve(params, groups)
    fams = structure.families
    x = jax.tree_util.tree_leaves(params)
    g, treedef = jax.tree_util.tree_flatten(updates)
    groups_lib.check_same_leaves(x, g)
    m = jax.tree_util.tree_leaves(state.momentum) if has_m else [None] * len(x)

    count = state.count
    lr = _hparams.value_at(learning_rate, count)
    lam = _hparams.clip(_hparams.value_at(reg_strength, count), 0.0, np.inf)
    eps = hspg_lib.family_epsilons(epsilon, structure, count)
    upper = hspg_lib.cap_value(upper_group_sparsity)
    mu = _hparams.clip(momentum, 0.0, 1.0) if has_m else None
    half_space = count >= half_space_start
    prox_stage = (~half_space) if prox_first else False
    keep = (count != half_space_start) if restart else True  # False: fresh buffer now

    f32 = groups_lib.promote

    def fam_sum(fam, fn):
      total = None
      for mb in fam.members:
        s = groups_lib.member_reduce(fn(mb.index), mb)
        total = s if total is None else total + s
      return total

    # 1. ||x_g||^2 (one single-input reduction per leaf), the exact zero test and
    #    the subgradient coefficients.
    sq = [fam_sum(f, lambda i: jnp.square(f32(x[i]))) for f in fams]
    zero = _exact_zeros(fams, x, sq, state.zeroed, fam_sum)
    coefs = [jnp.where(z | prox_stage, 0.0, lam / (jnp.sqrt(s) + hspg_lib.NORM_EPS))
             for s, z in zip(sq, zero)]
    # Reductions before loops: lets XLA update the donated buffers in place.
    coefs, x, g, m = jax.lax.optimization_barrier((coefs, x, g, m))

    grouped = {mb.index: (k, mb) for k, f in enumerate(fams) for mb in f.members}

    def expanded(vectors, i):
      k, mb = grouped[i]
      return groups_lib.expand(vectors[k], mb)

    def direction(i):  # d = g + c * x (g for ungrouped leaves)
      d = f32(g[i])
      return d + expanded(coefs, i) * f32(x[i]) if i in grouped else d

    # 2. The buffer loop, m' = mu * (keep * m + d): it does not depend on the
    #    half-space test, so the test can read m' (two inputs) instead of m, g
    #    and x (three; XLA CPU reduces several inputs far slower than one).
    new_m = list(m)
    if has_m:
      for i in range(len(x)):
        old = f32(m[i]) if not restart else jnp.where(keep, f32(m[i]), 0.0)
        new_m[i] = (mu * (old + direction(i))).astype(m[i].dtype)
      # Materialise m' before the reductions and the parameter loop read it
      # (else XLA recomputes it there from the old buffer, which it must copy).
      new_m, x = jax.lax.optimization_barrier((new_m, x))

    # 3. The stage's reductions (lax.switch: the first stage needs none unless
    #    it is a Prox-SG stage). Each branch returns, per family,
    #    R = <m', x>, G = <g, x> and T = ||x - lr * buf||^2 (prox only).
    need_r = has_m
    need_g = not has_m or nesterov or mu_const is None or float(mu_const) <= 0
    no_vec = lambda: [jnp.zeros_like(s) for s in sq]  # noqa: E731

    def buffer(i):  # buf = m' / mu, or d when there is no buffer (mu == 0)
      if not has_m:
        return direction(i)
      positive = mu > 0
      return jnp.where(positive, f32(new_m[i]) / jnp.where(positive, mu, 1.0), direction(i))

    def first_stage():
      if not prox_first:
        return no_vec(), no_vec(), no_vec()
      # lr is a traced scalar: XLA materialises its broadcast, a cost confined
      # to the Prox-SG first stage.
      trial = [fam_sum(f, lambda i: jnp.square(f32(x[i]) - lr * buffer(i))) for f in fams]
      return no_vec(), no_vec(), trial

    def half_space_step():
      r = [fam_sum(f, lambda i: f32(new_m[i]) * f32(x[i])) for f in fams] if need_r else no_vec()
      gx = [fam_sum(f, lambda i: f32(g[i]) * f32(x[i])) for f in fams] if need_g else no_vec()
      return r, gx, no_vec()

    r, gx, trial = jax.lax.switch(half_space.astype(jnp.int32), [first_stage, half_space_step])
    r, gx, trial, x, g, new_m = jax.lax.optimization_barrier((r, gx, trial, x, g, new_m))

    # 4. Per-group scalars: <x_hat_g, x_g> = ||x_g||^2 - lr * <v_g, x_g>.
    kills, scales = [], []
    for f, s, z, c, r_f, g_f, t_f, e in zip(fams, sq, zero, coefs, r, gx, trial, eps):
      d_x = g_f + c * s  # <d, x>
      if not has_m:
        v_x = d_x
      elif nesterov:  # v = mu * buf + d = m' + d
        v_x = r_f + d_x
      elif mu_const is not None and float(mu_const) > 0:
        v_x = r_f / mu  # v = buf = m' / mu
      else:
        positive = mu > 0
        v_x = jnp.where(positive, r_f / jnp.where(positive, mu, 1.0), d_x)
      kills.append(half_space & hspg_lib.half_space_kill(z, s, s - lr * v_x, e, upper))
      if prox_first:
        factor = prox_lib.block_soft_threshold_factor(t_f, lr * lam)
        scales.append(jnp.where(prox_stage, factor, 1.0))

    # 5. The parameter loop.
    new_u = list(g)
    for i in range(len(x)):
      if not has_m:
        step = lr * direction(i)
      elif nesterov:
        step = lr * (f32(new_m[i]) + direction(i))
      elif mu_const is not None and float(mu_const) > 0:
        step = (lr / mu) * f32(new_m[i])
      else:
        step = lr * buffer(i)
      xi = f32(x[i])
      u = -step
      if i in grouped:
        if prox_first:
          factor = expanded(scales, i)
          u = factor * u + (factor - 1.0) * xi  # 1: exactly -step; else target factor * x_hat
        u = jnp.where(expanded(kills, i), -xi, u)
      new_u[i] = u.astype(x[i].dtype)

    new_state = HSPGState(
        count=optax.safe_int32_increment(count),
        momentum=jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.momentum),
                                              new_m) if has_m else None,
        zeroed=tuple(kills))
    return jax.tree_util.tree_unflatten(treedef, new_u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _exact_zeros(fams, x, sq, zeroed, fam_sum) -> list:
  """``||x_g||^2 == 0``, confirmed with ``sum |x|`` where squares could underflow.

  Groups this optimizer zeroed last step (``zeroed``) are known to be zero; the
  ``sum |x|`` pass runs (in a ``lax.cond``) only if another group has a zero
  norm, which is rare.
  """
  zero = [s == 0 for s in sq]
  risky = [k for k, f in enumerate(fams)
           if any(_exact_zero_needed(x[mb.index].dtype) for mb in f.members)]
  if not risky:
    return zero
  unknown = jnp.stack([jnp.any(zero[k] & ~zeroed[k]) for k in risky]).any()

  def check():
    return [fam_sum(fams[k], lambda i: jnp.abs(groups_lib.promote(x[i]))) == 0 for k in risky]

  def trust():
    return [jnp.ones(fams[k].num_groups, bool) for k in risky]

  confirmed = jax.lax.cond(unknown, check, trust)
  for k, ok in zip(risky, confirmed):
    zero[k] = zero[k] & (zeroed[k] | ok)
  return zero
