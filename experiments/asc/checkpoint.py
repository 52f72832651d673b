"""Orbax checkpoints of a run: the last few, and the best on the evaluate split.

A checkpoint holds everything that decides the next step: params, BatchNorm
statistics, optimizer state, step and RNG (the :class:`~experiments.asc.step.TrainState`)
and, as JSON, where the data stream stands (epoch and batch within it), the
best accuracy so far and the non-finite streak. Orbax writes each checkpoint
into a temporary folder and renames it when complete, so a run killed while
saving keeps its previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]


class Checkpoints:
  """``checkpoints/last`` (the last ``keep``) and ``checkpoints/best`` (one).

  Args:
    directory: the run's ``checkpoints`` folder.
    keep: how many of the latest checkpoints to keep.
  """

  def __init__(self, directory: Path, keep: int = 2):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.last = ocp.CheckpointManager(self.directory / "last", options=options)
    best_options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                enable_async_checkpointing=False)
    self.best = ocp.CheckpointManager(self.directory / "best", options=best_options)

  @staticmethod
  def _save(manager, step: int, state, meta: dict):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()

  def save(self, step: int, state, meta: dict, *, best: bool = False):
    """Saves ``state`` with ``meta`` as step ``step`` (and as the best one)."""
    self._save(self.last, step, state, meta)
    if best:
      self._save(self.best, step, state, meta)

  def restore(self, abstract_state, which: str = "last", step: int | None = None):
    """``(state, meta)`` of the latest (or given) checkpoint, or None if there is none."""
    manager = getattr(self, which)
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def close(self):
    self.last.close()
    self.best.close()
