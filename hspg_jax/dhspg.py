"""DHSPG: HSPG that reaches a requested group sparsity (OTOv2) as an Optax transform.

Solves the constrained form ``min f(x)  s.t.  Card{g : x_g = 0} = K`` of the
group-sparsity problem without tuning a regularisation strength, after
``DHSPG`` in Chen et al., "OTOv2: Automatic, Generic, User-Friendly" (ICLR 2023)
and its reference code (``only_train_once/optimizer/dhspg.py``). With ``d`` the
base direction (SGD with optional momentum, or the bias-corrected Adam step
``m_hat / (sqrt(v_hat) + 1e-8)``), G groups and target sparsity ``s``:

* steps ``< partition_step`` (warm-up): ``x <- x - lr * d``;
* at step ``partition_step`` the groups are partitioned once. Over ALL groups
  of all families together, with ``n_g`` the number of scalars in group ``g``,

      score_g = 0.5 * c_g / ||c||_2 + 0.5 * r_g / ||r||_2,
      c_g = cos(-x_g, -d_g),   r_g = 1 / (||x_g|| / n_g + 1e-6),  (n_g -> sqrt(n_g)
                                                                 with magnitude="rms")

  and the ``K = floor(G * min(s + tolerance, 0.999))`` best-scoring groups form
  the set ``G_p`` to be zeroed. As in the reference (its ``group_divisible=1``),
  a family with a single group gets no group in ``G_p``, and a family that
  would lie entirely in ``G_p`` keeps its lowest-scoring group out of it;
* while the group sparsity (over all groups) is below ``s``, groups in ``G_p``
  take the step

      x_hat_g = x_g - lr * d_g - lr * lambda_g * x_g / (||x_g|| + 1e-8)

  with ``lambda_g = lambda`` where ``<x_g, d_g> >= 0``, and otherwise
  ``lb = -<x_g, d_g> / ||x_g||``, ``ub = -||d_g||^2 ||x_g|| / <x_g, d_g>``,
  ``lambda_g = clip(amplify * lb, lambda, lambda * hat_coeff)``, replaced by
  ``(lb + ub) / 2`` when ``lambda_g >= ub``; then the half-space projection
  ``x_hat_g = 0`` where ``<x_hat_g, x_g> < epsilon * ||x_g||^2``. Groups
  outside ``G_p`` take the base step ``x - lr * d``;
* once the target is reached: base steps for every group.

With ``pruning_steps = T`` (not in OTOv2; the guarantee of its successor
HESSO, ``only_train_once/optimizer/hesso.py``), the target is reached by step
``partition_step + T - 1`` whatever lambda does. At step ``partition_step + t``,
``0 <= t < T``, while the target is not reached, the ``need`` = (zero groups
still missing) non-zero groups of ``G_p`` with the smallest magnitude (the
score's: ``||x_g|| / n_g``, or ``||x_g|| / sqrt(n_g)`` with ``magnitude="rms"``)
also have their trial point scaled by HESSO's factor

      x_hat_g <- r_t * x_hat_g,   r_t = (T - t - 1) / (T - t),

before the half-space test. The factors telescope (``r_t0 * ... * r_t1 =
(T - t1 - 1) / (T - t0)``), so a group chosen at every step shrinks linearly to
exactly zero at ``t = T - 1``, and at most ``need`` groups are forced: the
target is hit, not overshot, unless the half-space test itself zeroes more.

Groups that are exactly zero stay zero at every step (the reference's default
``fixed_zero_groups=True``), and ungrouped leaves always take the base step.
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
# Names, not the module: ``hspg_jax.hspg`` is also the name of the hspg() function.
from hspg_jax.hspg import _require_params
from hspg_jax.hspg import family_epsilons
from hspg_jax.hspg import half_space_kill

__all__ = ["DHSPGState", "dhspg"]

# Per base direction: (lambda, amplify, hat_coeff), the reference's DEFAULT_OPT_PARAMS.
DEFAULTS = {"sgd": (1e-3, 2.0, 10.0), "adam": (1e-2, 20.0, 1e3)}
ADAM_B2 = 0.999
SAFE_GUARD = 1e-8  # the reference's guard in x_g / (||x_g|| + 1e-8) and Adam's epsilon
COUNT_GUARD = 1e-6  # relative round-off guard when a fraction of G is turned into a count
SIGNATURE = ("Signature: dhspg(learning_rate, target_group_sparsity, groups, *, direction, "
             "momentum, reg_strength, amplify, hat_coeff, tolerance, partition_step, epsilon, "
             "pruning_steps, magnitude).")


class DHSPGState(NamedTuple):
  """State of :func:`dhspg`."""

  count: jax.Array  # int32 step counter
  to_zero: tuple  # per family, (G,) bool: the partition G_p (all False before it is made)
  base_state: Any  # the base direction's state (optax.trace or optax.scale_by_adam)


def _check_open_unit(name, value):
  _hparams.check_range(name, value, 0.0, 1.0, hint=SIGNATURE)
  if not callable(value) and not isinstance(value, jax.core.Tracer) and float(value) <= 0.0:
    raise ValueError(f"{name} must be in (0, 1), got {float(value)}")


def _magnitudes(structure, sq, magnitude):
  """Per family, ``||x_g|| / n_g`` (``"mean"``, the reference) or ``/ sqrt(n_g)`` (``"rms"``)."""
  power = 1.0 if magnitude == "mean" else 0.5
  return [jnp.sqrt(s) / float(fam.group_size) ** power for s, fam in zip(sq, structure.families)]


def _rank(values):
  """0 for the smallest entry, 1 for the next, ...; ties go to the lower index.

  A rank rather than ``lax.top_k``: the count compared with it may be traced
  (``inject_hyperparams``).
  """
  return jnp.argsort(jnp.argsort(values, stable=True), stable=True)


def _partition(structure, sq, xd, dd, num_selected, magnitude):
  """The groups to be zeroed, per family: the ``num_selected`` best global scores."""
  norms = [jnp.sqrt(s) for s in sq]
  # torch.nn.functional.cosine_similarity: <a, b> / max(||a|| ||b||, 1e-8).
  cos = jnp.concatenate([p / jnp.maximum(n * jnp.sqrt(q), SAFE_GUARD)
                         for p, n, q in zip(xd, norms, dd)])
  inv = 1.0 / (jnp.concatenate(_magnitudes(structure, sq, magnitude)) + 1e-6)
  # torch.nn.functional.normalize: v / max(||v||, 1e-12).
  unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v), 1e-12)  # noqa: E731
  scores = 0.5 * unit(cos) + 0.5 * unit(inv)
  chosen = _rank(-scores) < num_selected
  out, start = [], 0
  for fam in structure.families:
    g = fam.num_groups
    sel, sc = chosen[start:start + g], scores[start:start + g]
    start += g
    if g <= 1:
      out.append(jnp.zeros((g,), bool))
      continue
    # Keep a whole family (layer) from being zeroed: its worst group stays out.
    worst = jnp.arange(g) == jnp.argmin(sc)
    out.append(sel & ~(jnp.all(sel) & worst))
  return tuple(out)


def _shrink_ratios(structure, sq, penalized, need, t, pruning_steps, magnitude):
  """HESSO's factor per group, per family: ``r_t`` on the ``need`` penalised groups
  with the smallest magnitude while ``0 <= t < T``, else 1."""
  mag = jnp.concatenate(_magnitudes(structure, sq, magnitude))
  cand = jnp.concatenate(penalized)
  on = (t >= 0) & (t < pruning_steps)
  chosen = cand & (_rank(jnp.where(cand, mag, jnp.inf)) < need) & on
  span = jnp.maximum(pruning_steps - t, 1).astype(jnp.float32)
  r = jnp.where(chosen, (span - 1.0) / span, 1.0)
  out, start = [], 0
  for fam in structure.families:
    out.append(r[start:start + fam.num_groups])
    start += fam.num_groups
  return out


def _lambdas(sq, xd, dd, lam, amplify, hat_coeff, penalize):
  """Per-group lambda_g of one family (the reference's adaptive lambda)."""
  adjust = penalize & (xd < 0)
  norm = jnp.sqrt(sq)
  safe_norm = jnp.where(adjust, norm, 1.0)
  safe_xd = jnp.where(adjust, xd, -1.0)
  lower = -safe_xd / safe_norm
  upper = -dd * safe_norm / safe_xd
  amplified = jnp.clip(amplify * lower, lam, lam * hat_coeff)
  amplified = jnp.where(amplified >= upper, 0.5 * (lower + upper), amplified)
  return jnp.where(adjust, amplified, lam)


def dhspg(
    learning_rate,
    target_group_sparsity,
    groups,
    *,
    direction: str = "sgd",
    momentum: float | None = None,
    reg_strength=None,
    amplify=None,
    hat_coeff=None,
    tolerance=0.05,
    partition_step: int = 0,
    epsilon: float | Mapping[str, float] = 0.95,
    pruning_steps: int | None = None,
    magnitude: str = "mean",
) -> optax.GradientTransformationExtraArgs:
  """OTOv2's DHSPG: HSPG steered to a target group sparsity, no lambda tuning.

  See the module docstring for the equations. The partition is made once, at
  step ``partition_step``, from that step's parameters and base direction; it
  is stored in the state (:class:`DHSPGState`, ``to_zero``) as one boolean
  vector per group family. The projection goes last, so the returned update is
  ``target - params`` and ``optax.apply_updates`` lands exactly on zero.

  Differences from the reference code, on purpose: the sparsity test is exact
  (``#zero groups >= target * G``; the reference adds 1e-6 per group type to
  ``G`` in float32, so it can need one more zero group when ``target * G`` is
  an integer); the Adam direction is ``optax.scale_by_adam`` (the reference
  starts its moment buffers at ``g`` and ``g^2`` rather than 0 yet still
  divides by the bias corrections, so its first Adam steps are about
  ``10 / sqrt(1000) = 0.32`` times as long, the gap fading like ``b1^t``);
  there is no weight decay (chain ``optax.add_decayed_weights`` before it for
  the reference's L2 variant).

  Args:
    learning_rate: lr >= 0, float or optax schedule.
    target_group_sparsity: the fraction of groups to zero, in (0, 1).
    groups: group spec pytree, :class:`~hspg_jax.GroupRules` or
      :class:`~hspg_jax.GroupStructure`.
    direction: the base direction, ``"sgd"`` or ``"adam"``.
    momentum: SGD: heavy-ball momentum in [0, 1) (default none); Adam: ``b1``
      (default 0.9; ``b2`` is 0.999).
    reg_strength: lambda >= 0, float or schedule (default 1e-3 for SGD, 1e-2
      for Adam).
    amplify: the factor on ``lambda_lb``, >= 0 (default 2 for SGD, 20 for Adam).
    hat_coeff: the cap ``lambda_g <= lambda * hat_coeff``, >= 1 (default 10
      for SGD, 1e3 for Adam).
    tolerance: extra fraction of groups put in the set to be zeroed, in [0, 1).
    partition_step: the step at which groups are partitioned; earlier steps
      are plain base steps (warm-up).
    epsilon: half-space control in [0, 1): float or schedule, or ``{family
      regex: float or schedule}``; default 0.95. The reference class defaults
      to 0, but every one of its tutorials passes 0.95: a penalised group is then
      projected as soon as a step shrinks it along itself by 5% of its norm,
      which is what lets the target be reached in a short run. With 0 the
      adaptive lambda alone must push a group across the origin, and it is
      kept below the value at which the step stops being a descent direction
      for ``f`` (``lambda_ub``), so groups that ``f`` needs stall short of zero.
    pruning_steps: ``None`` (default, the reference: no guarantee) or ``T >= 1``:
      the target is reached by step ``partition_step + T - 1`` (HESSO's
      progressive shrink of the groups still missing; module docstring). The
      guarantee needs ``G_p`` to hold enough groups: with the family fix-up it
      can hold fewer than ``target * G`` when many families are tiny.
    magnitude: the size measure in the partition's score and in the choice of
      the groups to shrink: ``"mean"`` (default, the reference) ``||x_g|| / n_g``,
      or ``"rms"`` ``||x_g|| / sqrt(n_g)``. With ``"mean"`` groups with many
      scalars look small (for i.i.d. entries ``||x_g|| / n_g ~ rms / sqrt(n_g)``),
      so families of large groups, such as a ResNet stage's residual channels,
      fill ``G_p`` first; ``"rms"`` compares groups of different sizes fairly.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params``; works
    under ``optax.inject_hyperparams``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, hspg_jax
    >>> params = {"w": jnp.ones((8, 3)), "b": jnp.zeros(3)}
    >>> groups = {"w": 0, "b": None}            # 8 groups: the rows of w
    >>> tx = hspg_jax.dhspg(0.1, 0.5, groups, direction="adam", partition_step=5,
    ...                     epsilon=0.95)
    >>> state = tx.init(params)
    >>> c = jnp.arange(1.0, 9.0)[:, None] * jnp.ones((8, 3)) / 8  # row i wants norm ~ i
    >>> loss = lambda p: jnp.sum((p["w"] - c) ** 2) + jnp.sum(p["b"] ** 2)
    >>> for _ in range(100):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(float(hspg_jax.group_sparsity(params, groups)), state.to_zero[0].tolist())
    0.5 [True, True, True, True, False, False, False, False]
  """
  if direction not in DEFAULTS:
    raise ValueError(f"direction must be 'sgd' or 'adam', got {direction!r}")
  if magnitude not in ("mean", "rms"):
    raise ValueError(f"magnitude must be 'mean' or 'rms', got {magnitude!r}. {SIGNATURE}")
  default_lam, default_amp, default_hat = DEFAULTS[direction]
  reg_strength = default_lam if reg_strength is None else reg_strength
  amplify = default_amp if amplify is None else amplify
  hat_coeff = default_hat if hat_coeff is None else hat_coeff
  _hparams.check_range("learning_rate", learning_rate, 0.0, hint=SIGNATURE)
  _check_open_unit("target_group_sparsity", target_group_sparsity)
  groups_lib.check_spec(groups, "dhspg: groups", hint=SIGNATURE)
  _hparams.check_range("reg_strength", reg_strength, 0.0)
  _hparams.check_range("amplify", amplify, 0.0)
  _hparams.check_range("hat_coeff", hat_coeff, 1.0)
  _hparams.check_range("tolerance", tolerance, 0.0, 1.0)
  _hparams.check_step("partition_step", partition_step, hint=SIGNATURE)
  if momentum is not None:
    _hparams.check_range("momentum", momentum, 0.0, 1.0)
  if not isinstance(epsilon, Mapping):
    _hparams.check_range("epsilon", epsilon, 0.0, 1.0)
  if pruning_steps is not None:
    _hparams.check_step("pruning_steps", pruning_steps, hint=SIGNATURE)
    if not isinstance(pruning_steps, jax.core.Tracer) and int(pruning_steps) < 1:
      raise ValueError(f"pruning_steps must be >= 1 or None, got {int(pruning_steps)}")

  if direction == "adam":
    base = optax.scale_by_adam(b1=0.9 if momentum is None else momentum, b2=ADAM_B2,
                               eps=SAFE_GUARD)
  elif momentum is None:
    base = optax.identity()
  else:
    base = optax.trace(decay=momentum)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    structure = groups_lib.resolve(params, groups)
    family_epsilons(epsilon, structure, None)  # validate the mapping
    return DHSPGState(count=jnp.zeros([], jnp.int32),
                      to_zero=tuple(jnp.zeros((f.num_groups,), bool)
                                    for f in structure.families),
                      base_state=base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    _require_params(params, "dhspg")
    structure = groups_lib.resolve(params, groups)
    x = jax.tree_util.tree_leaves(params)
    d_tree, base_state = base.update(updates, state.base_state, params, **extra_args)
    d, treedef = jax.tree_util.tree_flatten(d_tree)
    groups_lib.check_same_leaves(x, d)

    count = state.count
    lr = _hparams.value_at(learning_rate, count)
    lam = _hparams.clip(_hparams.value_at(reg_strength, count), 0.0, np.inf)
    amp = _hparams.clip(_hparams.value_at(amplify, count), 0.0, np.inf)
    hat = _hparams.clip(_hparams.value_at(hat_coeff, count), 1.0, np.inf)
    target = _hparams.clip(_hparams.value_at(target_group_sparsity, count), 0.0, 1.0)
    eps = family_epsilons(epsilon, structure, count)

    sq = groups_lib.family_sq_norms(structure, x)
    xd = groups_lib.family_sums(structure, [x, d], jnp.multiply)
    dd = groups_lib.family_sums(structure, [d], jnp.square)
    zero = [s == 0 for s in sq]
    num_groups = structure.num_groups
    n_zero = sum((jnp.sum(z, dtype=jnp.int32) for z in zero), jnp.int32(0))
    needed = jnp.ceil(num_groups * target * (1.0 - COUNT_GUARD))
    reached = n_zero.astype(jnp.float32) >= needed
    tol = _hparams.clip(_hparams.value_at(tolerance, count), 0.0, 1.0)
    share = jnp.minimum(target + tol, 0.999)
    num_selected = jnp.floor(num_groups * share * (1.0 + COUNT_GUARD)).astype(jnp.int32)

    to_zero = jax.lax.cond(count == partition_step,
                           lambda: _partition(structure, sq, xd, dd, num_selected, magnitude),
                           lambda: tuple(state.to_zero))
    active = (count >= partition_step) & ~reached

    penalized = [sel & active & ~z for sel, z in zip(to_zero, zero)]
    # HESSO's factor r_g; 1 (exactly the reference step) without a deadline.
    ratios = ([jnp.ones_like(s) for s in sq] if pruning_steps is None else
              _shrink_ratios(structure, sq, penalized, needed - n_zero,
                             count - partition_step, pruning_steps, magnitude))

    coefs, kills = [], []
    for s, p, q, z, penalize, e, r in zip(sq, xd, dd, zero, penalized, eps, ratios):
      lam_g = _lambdas(s, p, q, lam, amp, hat, penalize)
      # x_hat_g = r_g * (x_g - lr * d_g - coef_g * x_g)
      coef = jnp.where(penalize, lr * lam_g / (jnp.sqrt(s) + SAFE_GUARD), 0.0)
      dot = r * (s - lr * p - coef * s)  # <x_hat_g, x_g>
      kills.append(z | (penalize & (half_space_kill(z, s, dot, e, None) | (r == 0))))
      coefs.append(coef)

    def step(m, coef, r, kill):
      xi, di = groups_lib.promote(x[m.index]), groups_lib.promote(d[m.index])
      u = -(r * lr) * di - (r * coef + (1.0 - r)) * xi  # r * (x - lr d - coef x) - x
      return jnp.where(kill, -xi, u).astype(d[m.index].dtype)

    new_u = [(-lr * di).astype(di.dtype) for di in d]  # ungrouped leaves: base steps
    for fam, coef, r, kill in zip(structure.families, coefs, ratios, kills):
      for m in fam.members:
        new_u[m.index] = step(m, groups_lib.expand(coef, m), groups_lib.expand(r, m),
                              groups_lib.expand(kill, m))
    new_state = DHSPGState(count=optax.safe_int32_increment(count), to_zero=to_zero,
                           base_state=base_state)
    return jax.tree_util.tree_unflatten(treedef, new_u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
