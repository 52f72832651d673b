"""Optimizers by config: HSPG (SGD or Adam direction), Prox-SG, or the plain direction.

Every optimizer is wrapped in ``optax.apply_if_finite``: a batch whose gradient
is not finite leaves parameters and optimizer state untouched (the training
loop keeps the old BatchNorm statistics too, and stops the run after
``optimizer.max_nonfinite`` such batches in a row).
"""

from __future__ import annotations

import optax

import hspg_jax

__all__ = ["build", "learning_rate_schedule", "NEVER_GIVE_UP"]

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
  """The run's optimizer over ``groups`` (the model's group spec).

  * ``hspg`` + ``sgd``: :func:`hspg_jax.hspg` (the paper's optimizer);
  * ``hspg`` + ``adam``: ``add_group_lasso_subgradient -> adam -> half_space_projection``
    (Adam's moments are not restarted at the switch, as in the authors' Adam
    variant; ``restart_momentum`` applies to the SGD direction);
  * ``proxsg``: :func:`hspg_jax.prox_sg`;
  * ``base``: the plain direction (dense baseline; lambda is ignored).
  """
  o = cfg.optimizer
  lr = learning_rate_schedule(cfg, steps_per_epoch)
  start = o.warmup_epochs * steps_per_epoch
  if o.name == "hspg" and o.direction == "sgd":
    tx = hspg_jax.hspg(lr, o.reg_strength, groups, half_space_start=start,
                       epsilon=o.epsilon, momentum=o.momentum or None,
                       restart_momentum=o.restart_momentum)
  elif o.name == "hspg":
    tx = optax.chain(
        hspg_jax.add_group_lasso_subgradient(groups, o.reg_strength),
        _direction(cfg, lr),
        hspg_jax.half_space_projection(groups, o.epsilon, start_step=start),
    )
  elif o.name == "proxsg":
    tx = hspg_jax.prox_sg(lr, o.reg_strength, groups, momentum=o.momentum or None)
  else:
    tx = _direction(cfg, lr)
  if o.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay), tx)
  return optax.apply_if_finite(tx, NEVER_GIVE_UP)
