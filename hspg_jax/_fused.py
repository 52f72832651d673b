"""The HSPG step with an SGD base direction as one transform, near the memory-traffic floor.

:func:`hspg_jax.hspg` returns this by default. It computes the same iterates as
the chain ``add_group_lasso_subgradient -> momentum -> learning rate ->
half_space_projection`` but reads the parameters, gradients and momentum buffer
as few times as XLA allows. On CPU, XLA neither fuses a reduction with the
elementwise work that consumes it nor produces two outputs from one loop, and
it reduces an expression of several arrays much more slowly than one array.
So, per group family:

* ``||x_g||^2`` is computed once (one array) and shared by the subgradient and
  the half-space test;
* the trial point is never materialised: ``<x_hat_g, x_g> = ||x_g||^2 - lr *
  <v_g, x_g>``, with ``<v_g, x_g>`` from one two-array reduction;
* the new momentum buffer ``buf' = mu * buf + d`` is written first: it does
  not depend on the test, and then ``<v_g, x_g> = <buf'_g, x_g>`` reads two
  arrays instead of three (``buf``, ``g``, ``x``) and the new parameters
  follow from the new buffer alone, ``x' = x - lr * buf'``;
* ``jax.lax.optimization_barrier`` orders reductions before loops and the
  buffer write before the parameter write, so that with donated buffers XLA
  updates both in place instead of copying them, and families are processed
  one after another so that a family's arrays are still in cache.

Passes over parameter-sized arrays per step: 6 without momentum (reductions
read 1 + 2, the parameter loop 3) and 10 with momentum (1, buffer loop 4,
reduction 2, parameter loop 3); ``optax.sgd(momentum=0.9)`` makes 6. Both
stages make the same passes (the first stage computes the test and ignores it).

Exact zero groups without an extra pass: a nonzero float32 or bfloat16 group
whose entries are all below about 1e-19 has ``||x_g||^2 == 0`` in float32. A
group counts as zero for the test only when its ``<., x_g>`` reductions vanish
too, and even then the parameter loop keeps its nonzero entries (if any) out of
the projection elementwise, so only entries that are exactly zero are set to
zero on that ground.
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

f32 = groups_lib.promote  # float16/bfloat16 -> float32; wider dtypes unchanged


class HSPGState(NamedTuple):
  """State of the fused :func:`hspg_jax.hspg`."""

  count: jax.Array  # int32 step counter
  momentum: Any  # the heavy-ball buffer, like params (None without momentum)


def _squares_may_underflow(dtype) -> bool:
  """Whether a nonzero entry of ``dtype`` can square to 0 in its accumulation dtype."""
  acc = groups_lib.accumulation_dtype(dtype)
  return float(jnp.finfo(dtype).tiny) ** 2 < float(jnp.finfo(acc).tiny)


def hspg_fused(learning_rate, reg_strength, groups, *, half_space_start, epsilon, momentum,
               nesterov, upper_group_sparsity, prox_first,
               restart_momentum) -> optax.GradientTransformationExtraArgs:
  """The fused HSPG transform; arguments as :func:`hspg_jax.hspg` (already checked)."""
  has_m = momentum is not None
  restart = has_m and restart_momentum

  def init_fn(params):
    structure = groups_lib.resolve(params, groups)
    hspg_lib.family_epsilons(epsilon, structure, None)
    buf = jax.tree.map(jnp.zeros_like, params) if has_m else None
    return HSPGState(count=jnp.zeros([], jnp.int32), momentum=buf)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    hspg_lib._require_params(params, "hspg")  # pylint: disable=protected-access
    structure = groups_lib.resolve(params, groups)
    x = jax.tree_util.tree_leaves(params)
    g, treedef = jax.tree_util.tree_flatten(updates)
    groups_lib.check_same_leaves(x, g)
    m = jax.tree_util.tree_leaves(state.momentum) if has_m else [None] * len(x)

    count = state.count
    hp = _Hyper(
        lr=_hparams.value_at(learning_rate, count),
        lam=_hparams.clip(_hparams.value_at(reg_strength, count), 0.0, np.inf),
        mu=_hparams.clip(momentum, 0.0, 1.0) if has_m else None,
        half_space=count >= half_space_start,
        # False at the restart step: the half-space stage starts a fresh buffer.
        keep=(count != half_space_start) if restart else True,
        upper=hspg_lib.cap_value(upper_group_sparsity))
    step = _Step(hp, has_m=has_m, nesterov=nesterov, prox_first=prox_first)

    new_u, new_m = list(g), list(m)
    eps = hspg_lib.family_epsilons(epsilon, structure, count)
    # One family at a time: XLA then runs a family's reductions and loops back
    # to back, while its arrays are still in cache.
    for fam, e in zip(structure.families, eps):
      idx = [mb.index for mb in fam.members]
      xs, gs, ms = [x[i] for i in idx], [g[i] for i in idx], [m[i] for i in idx]
      us, nms = step.family(fam.members, xs, gs, ms, e)
      for k, i in enumerate(idx):
        new_u[i], new_m[i] = us[k], nms[k]
    grouped = {mb.index for f in structure.families for mb in f.members}
    for i in range(len(x)):  # ungrouped leaves: SGD (with momentum)
      if i not in grouped:
        new_u[i], new_m[i] = step.ungrouped(x[i], g[i], m[i])

    new_state = HSPGState(
        count=optax.safe_int32_increment(count),
        momentum=(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.momentum),
                                               new_m) if has_m else None))
    return jax.tree_util.tree_unflatten(treedef, new_u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _Hyper(NamedTuple):
  lr: Any
  lam: Any
  mu: Any
  half_space: Any
  keep: Any
  upper: Any


class _Step:
  """The per-family and per-leaf computations of one fused step."""

  def __init__(self, hp: _Hyper, *, has_m, nesterov, prox_first):
    self.hp, self.has_m, self.nesterov = hp, has_m, nesterov
    self.prox_first = prox_first
    self.prox_stage = (~hp.half_space) if prox_first else False

  def new_buffer(self, x, g, m, c):
    """buf' = mu * keep * buf + d, d = g + c * x (c None: ungrouped, d = g)."""
    hp = self.hp
    old = f32(m) if hp.keep is True else jnp.where(hp.keep, f32(m), 0.0)
    return (hp.mu * old + self.direction(x, g, c)).astype(m.dtype)

  @staticmethod
  def direction(x, g, c):
    return f32(g) if c is None else f32(g) + c * f32(x)

  def step(self, x, g, m_new, c):
    """lr * v: the step before projection (v: the search direction)."""
    hp = self.hp
    if not self.has_m:
      return hp.lr * self.direction(x, g, c)
    if self.nesterov:  # v = mu * buf' + d
      return hp.lr * (hp.mu * f32(m_new) + self.direction(x, g, c))
    return hp.lr * f32(m_new)  # v = buf'

  def ungrouped(self, x, g, m):
    """(update, new buffer) of a leaf outside every group."""
    m_new = None
    if self.has_m:
      m_new = self.new_buffer(x, g, m, None)
      m_new, x = jax.lax.optimization_barrier((m_new, x))
    return (-self.step(x, g, m_new, None)).astype(x.dtype), m_new

  def family(self, members, xs, gs, ms, eps):
    """(updates, new buffers) of one family's member leaves."""
    hp, barrier = self.hp, jax.lax.optimization_barrier

    def fam_sum(fn):
      return sum(groups_lib.member_reduce(fn(k), mb) for k, mb in enumerate(members))

    def coefficient(s):  # c = lambda / (||x_g|| + 1e-6); c * x = 0 in a zero group
      c = hp.lam / (jnp.sqrt(s) + hspg_lib.NORM_EPS)
      return jnp.where(self.prox_stage, 0.0, c) if self.prox_first else c

    # 1. ||x_g||^2 (a single-input reduction), shared by the subgradient and the
    #    half-space test.
    s = fam_sum(lambda k: jnp.square(f32(xs[k])))

    # 2. The buffer loop. buf' does not depend on the half-space test, so the
    #    test reads buf' and x (two inputs) instead of buf, g and x: XLA CPU
    #    reduces several inputs much more slowly than one.
    nms, c = [None] * len(members), None
    if self.has_m:
      # Reductions before loops: lets XLA update the donated buffers in place.
      c, xs, gs, ms = barrier((coefficient(s), xs, gs, ms))
      nms = [self.new_buffer(xs[k], gs[k], ms[k], groups_lib.expand(c, mb))
             for k, mb in enumerate(members)]
      # Materialise buf' before the reductions and the parameter loop read it
      # (else XLA recomputes it there from the old buffer, which it must copy).
      nms, xs = barrier((nms, xs))

    # 3. R = <buf', x>, G = <g, x> and, for a Prox-SG first stage, ||x_hat||^2.
    zeros = jnp.zeros_like(s)
    need_g = not self.has_m or self.nesterov
    r = fam_sum(lambda k: f32(nms[k]) * f32(xs[k])) if self.has_m else zeros
    gx = fam_sum(lambda k: f32(gs[k]) * f32(xs[k])) if need_g else zeros
    trial = zeros
    if self.prox_first:
      c_now = c if c is not None else coefficient(s)
      # lr is a traced scalar here, so XLA materialises its broadcast: a cost
      # paid only with first_stage="prox".
      trial = fam_sum(lambda k: jnp.square(f32(xs[k]) - self.step(
          xs[k], gs[k], nms[k], groups_lib.expand(c_now, members[k]))))
    s, r, gx, trial, xs, gs = barrier((s, r, gx, trial, xs, gs))
    if c is None:
      c = coefficient(s)

    # 4. Per group: <x_hat, x> = ||x||^2 - lr * <v, x>, the test and the cap.
    d_x = gx + c * s  # <d, x>
    if not self.has_m:
      v_x = d_x
    elif self.nesterov:
      v_x = hp.mu * r + d_x
    else:
      v_x = r
    # Float32 squares of a nonzero float32/bfloat16 group can all underflow. A
    # group whose reductions all vanish counts as zero here, and its nonzero
    # entries, if any, are told apart elementwise below: exactly-zero groups
    # stay zero, and no entry that is not zero is set to zero on that ground.
    zero = (s == 0) & (r == 0) & (gx == 0)
    kill = hp.half_space & hspg_lib.half_space_kill(zero, s, s - hp.lr * v_x, eps, hp.upper)
    underflow = any(_squares_may_underflow(xi.dtype) for xi in xs)
    # The per-group vectors the loops read, packed into one array that is
    # materialised once: fused into the loops, XLA would recompute them for
    # every element, and as separate arrays each would cost a small kernel.
    rows = {"c": c, "kill": kill}
    if underflow:
      rows["zero"] = zero
    if self.prox_first:
      factor = prox_lib.block_soft_threshold_factor(trial, hp.lr * hp.lam)
      rows["scale"] = jnp.where(self.prox_stage, factor, 1.0)
    packed, xs = barrier((jnp.stack([v.astype(s.dtype) for v in rows.values()]), xs))
    row = dict(zip(rows, packed))

    # 5. The parameter loop.
    us = []
    for k, mb in enumerate(members):
      xi = f32(xs[k])
      u = -self.step(xs[k], gs[k], nms[k], groups_lib.expand(row["c"], mb))
      if self.prox_first:
        f = groups_lib.expand(row["scale"], mb)
        u = f * u + (f - 1.0) * xi  # f == 1: exactly -step; else the target f * x_hat
      killed = groups_lib.expand(row["kill"], mb) != 0
      if underflow:
        killed = killed & ~((groups_lib.expand(row["zero"], mb) != 0) & (xi != 0))
      us.append(jnp.where(killed, -xi, u).astype(xs[k].dtype))
    return us, nms
