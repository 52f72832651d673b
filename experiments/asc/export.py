"""The exported slim model: loadable without the dense model or the training run.

``pruned/`` holds ``model.json`` (the registered model name, its constructor
arguments, the input shape, the class names, the feature parameters and the
shape of every state leaf after pruning), ``norm.npz`` (the training split's
normalisation statistics) and ``weights.npz`` (every weight and BatchNorm
statistic by its state path: a small artifact that numpy alone reads, written
by one process without any multi-host coordination). :func:`load` builds the
dense architecture abstractly (no weights are initialised), cuts every leaf to
the saved shape, loads the weights and fixes the layers' size attributes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from hspg_jax import groups as groups_lib
import hspg_jax.flax

__all__ = ["save", "load", "forward", "ExportedModel"]


def _leaf_paths(state) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {groups_lib.path_str(p): tuple(np.shape(x)) for p, x in leaves}


def save(directory, model: nnx.Module, *, info: dict, norm=None) -> Path:
  """Writes ``model`` (the pruned model, eval mode) and ``info`` into ``directory``.

  ``info`` must hold ``model`` (registered name), ``n_classes``, ``kwargs``
  (constructor keywords), ``input_shape``, ``classes``; anything else is kept.
  """
  directory = Path(directory).absolute()
  tmp = directory.with_name(directory.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  # Only weights and statistics: RNG streams (dropout keys) are not needed for inference.
  keep = nnx.state(model, (nnx.Param, nnx.BatchStat)).to_pure_dict()
  meta = dict(info, shapes=_leaf_paths(keep))
  (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
  if norm is not None:
    np.savez(tmp / "norm.npz", mean=norm.mean, std=norm.std, count=norm.count)
  flat = {groups_lib.path_str(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(keep)[0]}
  np.savez(tmp / "weights.npz", **flat)
  shutil.rmtree(directory, ignore_errors=True)
  tmp.replace(directory)
  return directory


def forward(model: nnx.Module):
  """``f(features) -> logits`` (numpy) of ``model`` as it is (eval mode), jitted once."""
  gd, state = nnx.split(model)
  jitted = jax.jit(lambda s, x: nnx.merge(gd, s)(x))
  return lambda x: np.asarray(jitted(state, jnp.asarray(x, jnp.float32)))


class ExportedModel:
  """A loaded export: ``model`` (eval mode), ``info`` (model.json) and ``norm``."""

  def __init__(self, model, info, norm):
    self.model, self.info, self.norm = model, info, norm
    self._forward = forward(model)

  def predict(self, features: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits for un-normalised features ``(n, mel, frames, channels)``."""
    if self.norm is not None:
      features = (features - self.norm["mean"]) / self.norm["std"]
    out = [self._forward(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, self.info["n_classes"]), np.float32)


def _concrete(x):
  """A placeholder value for a non-weight leaf (RNG stream state) of the abstract model."""
  if not isinstance(x, jax.ShapeDtypeStruct):
    return x
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.split(jax.random.key(0), x.shape) if x.shape else jax.random.key(0)
  return jnp.zeros(x.shape, x.dtype)


def load(directory) -> ExportedModel:
  """Loads an export written by :func:`save`."""
  directory = Path(directory).absolute()
  meta_path = directory / "model.json"
  if not meta_path.is_file():
    raise FileNotFoundError(f"{directory}: no model.json; not an exported model "
                            "(run `hspg-asc prune RUN` first)")
  info = json.loads(meta_path.read_text())
  abstract = nnx.eval_shape(lambda: models.get_model(
      info["model"], info["n_classes"], rngs=nnx.Rngs(0), **info["kwargs"]))
  abstract.eval()
  gd, params_stats, rest = nnx.split(abstract, (nnx.Param, nnx.BatchStat), ...)
  shapes = info["shapes"]
  with np.load(directory / "weights.npz") as z:
    saved = {k: z[k] for k in z.files}

  def take(p, x):
    key = groups_lib.path_str(p)
    if key not in saved or tuple(saved[key].shape) != tuple(shapes[key]):
      raise ValueError(f"{directory}/weights.npz: {key!r} is missing or not of shape "
                       f"{tuple(shapes[key])}; the export is damaged")
    return jnp.asarray(saved[key], x.dtype)

  weights = jax.tree_util.tree_map_with_path(take, params_stats.to_pure_dict())
  nnx.replace_by_pure_dict(params_stats, weights)
  rest = jax.tree.map(_concrete, rest)
  model = hspg_jax.flax.with_state(gd, params_stats, rest)
  norm = None
  if (directory / "norm.npz").is_file():
    with np.load(directory / "norm.npz") as z:
      norm = {"mean": z["mean"], "std": z["std"]}
  return ExportedModel(model, info, norm)
