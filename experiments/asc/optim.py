"""Optimizers by config: every optimizer of hspg_jax by name, or the plain direction.

Every optimizer is wrapped in ``optax.apply_if_finite``: a batch whose gradient
is not finite leaves parameters and optimizer state untouched (the training
loop keeps the old BatchNorm statistics too, and stops the run after
``optimizer.max_nonfinite`` such batches in a row).
"""

from __future__ import annotations

import optax

import hspg_jax

__all__ = ["build", "learning_rate_schedule", "stage", "NEVER_GIVE_UP", "STAGES"]

# apply_if_finite applies the update anyway after this many skipped steps; the
# loop stops the run long before (optimizer.max_nonfinite), so it never does.
NEVER_GIVE_UP = 2**30


def learning_rate_schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
  """The lr per step.

  ``hold_then_linear`` is the seed's protocol: ``learning_rate`` held through the
  warm-up epochs, then decayed linearly to ``final_learning_rate`` at the end.
  """
  o = cfg.optimizer
  total = max(1, cfg.train.epochs * steps_per_epoch)
  hold = o.warmup_epochs * steps_per_epoch
  if o.schedule == "constant":
    return optax.constant_schedule(o.learning_rate)
  if o.schedule == "cosine":
    return optax.cosine_decay_schedule(o.learning_rate, total,
                                       alpha=o.final_learning_rate / o.learning_rate)
  decay = optax.linear_schedule(o.learning_rate, o.final_learning_rate, max(1, total - hold))
  return optax.join_schedules([optax.constant_schedule(o.learning_rate), decay], [hold])


def _direction(cfg, lr):
  o = cfg.optimizer
  if o.direction == "adam":
    return optax.adam(lr)
  return optax.sgd(lr, momentum=o.momentum or None)


def build(cfg, groups, steps_per_epoch: int) -> optax.GradientTransformation:
  """The run's optimizer over ``groups`` (the model's group spec), by ``optimizer.name``.

  The first stage of the two-stage methods lasts ``optimizer.warmup_epochs``:

  * ``hspg`` + ``sgd``: :func:`hspg_jax.hspg` (the paper's optimizer);
  * ``hspg`` + ``adam``: ``add_group_lasso_subgradient -> adam -> half_space_projection``
    (Adam's moments are not restarted at the switch, as in the authors' Adam
    variant; ``restart_momentum`` applies to the SGD direction);
  * ``proxsg`` / ``proxsg_l1``: :func:`hspg_jax.prox_sg` / :func:`hspg_jax.prox_sg_l1`;
  * ``admm``: :func:`hspg_jax.admm` with ``optimizer.rho``;
  * ``obproxsg``: :func:`hspg_jax.obprox_sg`, Prox-SG through the first stage,
    orthant steps afterwards;
  * ``dhspg``: :func:`hspg_jax.dhspg` with ``optimizer.target_group_sparsity``,
    partitioning the groups after the first stage and reaching the target within
    ``optimizer.pruning_epochs`` after it (0: the reference, no guarantee), with
    ``optimizer.magnitude`` in its score (``reg_strength`` 0 and ``epsilon`` 0
    select dhspg's defaults: lambda per direction, epsilon 0.95);
  * ``hierarchical``: :func:`hspg_jax.hierarchical_hspg` (``reg_strength`` on
    groups, ``l1_strength`` on elements);
  * ``base``: the plain direction (dense baseline; lambda is ignored).
  """
  o = cfg.optimizer
  lr = learning_rate_schedule(cfg, steps_per_epoch)
  start = o.warmup_epochs * steps_per_epoch
  momentum = o.momentum or None
  if o.name == "hspg" and o.direction == "sgd":
    tx = hspg_jax.hspg(lr, o.reg_strength, groups, half_space_start=start,
                       epsilon=o.epsilon, momentum=momentum,
                       restart_momentum=o.restart_momentum)
  elif o.name == "hspg":
    tx = optax.chain(
        hspg_jax.add_group_lasso_subgradient(groups, o.reg_strength),
        _direction(cfg, lr),
        hspg_jax.half_space_projection(groups, o.epsilon, start_step=start),
    )
  elif o.name == "proxsg":
    tx = hspg_jax.prox_sg(lr, o.reg_strength, groups, momentum=momentum)
  elif o.name == "proxsg_l1":
    tx = hspg_jax.prox_sg_l1(lr, o.reg_strength, groups, momentum=momentum)
  elif o.name == "admm":
    tx = hspg_jax.admm(lr, o.reg_strength, groups, rho=o.rho, momentum=momentum)
  elif o.name == "obproxsg":
    tx = hspg_jax.obprox_sg(lr, o.reg_strength, groups, prox_steps=start, momentum=momentum)
  elif o.name == "dhspg":
    tx = hspg_jax.dhspg(lr, o.target_group_sparsity, groups, direction=o.direction,
                        momentum=momentum if o.direction == "sgd" else None,
                        reg_strength=o.reg_strength or None, partition_step=start,
                        pruning_steps=o.pruning_epochs * steps_per_epoch or None,
                        magnitude=o.magnitude,
                        **({"epsilon": o.epsilon} if o.epsilon else {}))
  elif o.name == "hierarchical":
    tx = hspg_jax.hierarchical_hspg(lr, o.reg_strength, o.l1_strength, groups,
                                    half_space_start=start, epsilon=o.epsilon,
                                    momentum=momentum)
  else:
    tx = _direction(cfg, lr)
  if o.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay), tx)
  return optax.apply_if_finite(tx, NEVER_GIVE_UP)


# Stage names per optimizer before / from the end of the first stage (metrics.jsonl).
STAGES = {"hspg": ("warmup", "half_space"), "hierarchical": ("warmup", "half_space"),
          "dhspg": ("warmup", "target"), "obproxsg": ("prox", "orthant")}


def stage(cfg, epoch: int) -> str:
  """The stage of 0-based ``epoch``: ``dense`` for the baseline, ``prox`` for one-stage methods."""
  name = cfg.optimizer.name
  if name in STAGES:
    return STAGES[name][epoch >= cfg.optimizer.warmup_epochs]
  return "dense" if name == "base" else "prox"
