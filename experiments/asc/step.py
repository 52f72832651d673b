"""The data-parallel train step in two interchangeable forms, and the eval step.

State is a :class:`TrainState` of plain pytrees (params and BatchNorm
statistics as pure dicts, the optax state, the step and the RNG key), so it
checkpoints with orbax as it is and moves between the two forms freely:

* ``sharded``: ``jax.jit`` over a ``NamedSharding`` mesh of every device of every
  process (``jax.distributed`` multi-process included): state replicated,
  batches split along ``"data"``. BatchNorm sees the global batch.
* ``pmap``: ``jax.pmap`` over the local devices with ``axis_name="data"``:
  BatchNorm layers compute their batch statistics across devices (synchronised
  BatchNorm, ``pmean`` of the per-device moments), gradients are ``pmean``-ed.
  With equal per-device batches this is the same computation as ``sharded``.

The loss is the batch mean of softmax cross-entropy (weighted for mixup and
for the masked padding of evaluation batches). A step whose gradient is not
finite keeps the old params, BatchNorm statistics and optimizer state
(``optax.apply_if_finite`` plus a select on the statistics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["ModelDefs", "TrainState", "Stepper", "model_defs"]

AXIS = "data"


class TrainState(NamedTuple):
  params: Any        # pure dict of nnx.Param arrays
  batch_stats: Any   # pure dict of nnx.BatchStat arrays
  opt_state: Any
  step: jax.Array    # int32, optimizer steps taken (skipped ones included)
  rng: jax.Array     # uint32 key data (dropout)


@dataclasses.dataclass(frozen=True)
class ModelDefs:
  """Graph definitions of one model in each mode, and templates of its state.

  Attributes:
    train: training mode.
    train_sync: training mode with BatchNorm synchronised over ``AXIS`` (pmap).
    eval: inference mode (running statistics).
    recal: training mode with BatchNorm momentum 0: the new running statistics
      are the batch's own (used to recompute them over the training split).
    templates: ``(params, batch_stats, rest)`` ``nnx.State`` of the model;
      ``rest`` (RNG streams) is used as it is, the others only for structure.
  """

  train: Any
  train_sync: Any
  eval: Any
  recal: Any
  templates: tuple


def _split(model):
  return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def model_defs(model: nnx.Module) -> tuple[ModelDefs, Any, Any]:
  """``(defs, params, batch_stats)`` of ``model`` (params and stats as pure dicts)."""
  model = nnx.clone(model)
  model.train()
  bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
  for m in bns:
    m.use_fast_variance = False  # two-pass variance: pmap and sharded jit agree to round-off
  gd_train, params, stats, rest = _split(model)
  for m in bns:
    m.axis_name = AXIS
  gd_sync = _split(model)[0]
  saved = [m.momentum for m in bns]
  for m in bns:
    m.axis_name, m.momentum = None, 0.0
  gd_recal = _split(model)[0]
  for m, mom in zip(bns, saved):
    m.momentum = mom
  model.eval()
  gd_eval = _split(model)[0]
  defs = ModelDefs(gd_train, gd_sync, gd_eval, gd_recal, (params, stats, rest))
  return defs, params.to_pure_dict(), stats.to_pure_dict()


def _fill(template, pure):
  state = jax.tree.map(lambda x: x, template)  # fresh Variables, same structure
  nnx.replace_by_pure_dict(state, pure)
  return state


def merge(defs: ModelDefs, mode: str, params, stats) -> nnx.Module:
  """A live model in ``mode`` (``train``, ``train_sync``, ``eval``, ``recal``)."""
  p, s, rest = defs.templates
  return nnx.merge(getattr(defs, mode), _fill(p, params), _fill(s, stats),
                   jax.tree.map(lambda x: x, rest))


def _cross_entropy(logits, batch):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  if "mix" in batch:
    ce2 = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label2"])
    ce = batch["mix"] * ce + (1 - batch["mix"]) * ce2
  return ce


class Stepper:
  """Builds and runs the compiled steps for one model, optimizer and device layout.

  Args:
    model: the model (its current params and statistics are the initial state).
    tx: the optimizer.
    parallel: ``"sharded"`` or ``"pmap"``.
    devices: the devices to use (default ``jax.devices()``, all processes).
  """

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, parallel: str,
               devices=None):
    self.tx = tx
    self.parallel = parallel
    self.defs, params, stats = model_defs(model)
    self._params0, self._stats0 = params, stats
    self.devices = list(devices) if devices is not None else jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
    self._build()

  # --------------------------------------------------------------- state

  def init_state(self, seed: int) -> TrainState:
    """The initial state, on the devices (replicated)."""
    params, stats = self._params0, self._stats0
    state = TrainState(params, stats, self.tx.init(params), jnp.zeros([], jnp.int32),
                       jax.random.key_data(jax.random.key(seed)))
    return self.put(state)

  def abstract_state(self, seed: int = 0):
    """Shapes, dtypes and shardings of the state, as orbax restores it."""
    state = jax.eval_shape(lambda: TrainState(
        self._params0, self._stats0, self.tx.init(self._params0), jnp.zeros([], jnp.int32),
        jax.random.key_data(jax.random.key(seed))))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                        sharding=self.replicated), state)

  def put(self, state: TrainState) -> TrainState:
    """Places a host or device state replicated on the mesh."""
    return jax.tree.map(lambda x: _replicate(x, self.replicated), state)

  def host(self, tree):
    """A pytree of replicated arrays as numpy (this process's copy)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))
                        if isinstance(x, jax.Array) else np.asarray(x), tree)

  # --------------------------------------------------------------- steps

  def _loss(self, gd_mode, params, stats, batch, rng):
    model = merge(self.defs, gd_mode, params, stats)
    if jax.tree.leaves(self.defs.templates[2]):
      nnx.reseed(model, dropout=jax.random.wrap_key_data(rng))
    logits = model(batch["features"])
    ce = _cross_entropy(logits, batch)
    w = batch["weight"]
    loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
    new_stats = nnx.state(model, nnx.BatchStat).to_pure_dict()
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * w)
    return loss, (new_stats, correct, jnp.sum(w))

  def _update(self, state, grads, loss, new_stats, metrics):
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # optax.apply_if_finite (which experiments.asc.optim always wraps around the
    # optimizer) has already checked the gradients; reuse its verdict.
    grads_finite = getattr(opt_state, "last_finite", None)
    if grads_finite is None:
      grads_finite = _all_finite(grads)
    finite = jnp.isfinite(loss) & grads_finite
    stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_stats,
                         state.batch_stats)
    rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
    new = TrainState(params, stats, opt_state, state.step + 1, rng)
    metrics = {**metrics, "loss": jnp.where(finite, loss, 0.0), "finite": finite.astype(jnp.int32)}
    return new, metrics

  def _build(self):
    def sharded_step(state, batch):
      step_rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0))
      grad_fn = jax.value_and_grad(
          lambda p: self._loss("train", p, state.batch_stats, batch, step_rng), has_aux=True)
      (loss, (stats, correct, count)), grads = grad_fn(state.params)
      return self._update(state, grads, loss, stats, {"correct": correct, "count": count})

    def pmap_step(state, batch):
      # Per-device dropout keys; the same key for all when there is no dropout.
      step_rng = jax.random.key_data(jax.random.fold_in(
          jax.random.wrap_key_data(state.rng), jax.lax.axis_index(AXIS)))
      grad_fn = jax.value_and_grad(
          lambda p: self._loss("train_sync", p, state.batch_stats, batch, step_rng), has_aux=True)
      (loss, (stats, correct, count)), grads = grad_fn(state.params)
      # The local losses are means over equal local batches: their pmean is the
      # global mean, and pmean of the local grads is its gradient.
      grads = jax.lax.pmean(grads, AXIS)
      loss = jax.lax.pmean(loss, AXIS)
      stats = jax.lax.pmean(stats, AXIS)  # already equal (synchronised BN); keeps replicas exact
      correct, count = jax.lax.psum(correct, AXIS), jax.lax.psum(count, AXIS)
      return self._update(state, grads, loss, stats, {"correct": correct, "count": count})

    def eval_step(params, stats, batch):
      model = merge(self.defs, "eval", params, stats)
      logits = model(batch["features"])
      ce = _cross_entropy(logits, batch) * batch["weight"]
      return logits, ce

    def recal_step(params, stats, batch):
      model = merge(self.defs, "recal", params, stats)
      model(batch["features"])
      return nnx.state(model, nnx.BatchStat).to_pure_dict()

    if self.parallel == "pmap":
      self._train = jax.pmap(pmap_step, axis_name=AXIS, devices=self.local_devices,
                             donate_argnums=(0,))
    else:
      self._train = jax.jit(sharded_step, donate_argnums=(0,),
                            out_shardings=(self.replicated, self.replicated))
    self._eval = jax.jit(eval_step, out_shardings=(self.batch_sharding, self.batch_sharding))
    self._recal = jax.jit(recal_step, out_shardings=self.replicated)

  def shard_batch(self, local_batch: dict) -> dict:
    """This process's numpy batch -> a global array split over the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()}

  def train_step(self, state: TrainState, local_batch: dict):
    """One optimizer step; returns the new state and device-side metrics."""
    if self.parallel == "pmap":
      n = len(self.local_devices)
      if jax.process_count() > 1:
        raise ValueError("train.parallel=pmap runs on one process; use train.parallel=sharded "
                         "with jax.distributed")
      batch = jax.tree.map(lambda v: v.reshape(n, -1, *v.shape[1:]), local_batch)
      rstate = _to_pmap(state, self.local_devices)
      new, metrics = self._train(rstate, batch)
      return _from_pmap(new, self.replicated), _from_pmap(metrics, self.replicated)
    return self._train(state, self.shard_batch(local_batch))

  def eval_batch(self, params, stats, local_batch):
    """Logits and per-example loss of a padded batch (global arrays)."""
    return self._eval(params, stats, self.shard_batch(local_batch))

  def recal_batch(self, params, stats, local_batch):
    """The batch's own BatchNorm statistics (train-mode forward, momentum 0)."""
    return self._recal(params, stats, self.shard_batch(local_batch))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _replicate(x, sharding):
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  x = np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) and not \
      x.is_fully_addressable else np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _to_pmap(state, devices):
  """Replicated arrays -> arrays with a leading device axis, without moving data."""
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  stacked = NamedSharding(mesh, P(AXIS))

  def put(x):
    by_device = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        (len(devices), *x.shape), stacked, [by_device[d][None] for d in devices])
  return jax.tree.map(put, state)


def _from_pmap(state, replicated):
  """The inverse of :func:`_to_pmap` (every replica holds the same values)."""
  def take(x):
    shards = [s.data.reshape(x.shape[1:]) for s in x.addressable_shards]
    return jax.make_array_from_single_device_arrays(x.shape[1:], replicated, shards)
  return jax.tree.map(take, state)
