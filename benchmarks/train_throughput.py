"""Training throughput of the ``hspg-asc`` step, and what the pruned model gains at inference.

Three measurements, each a ratio taken side by side in one process (rounds
alternate between the two contenders, medians reported):

1. HSPG vs its plain base direction (``optax.sgd(momentum=0.9)``) in the whole
   data-parallel train step of the main job's model (goal: >= 0.95x examples/s);
2. ``pmap`` vs sharded ``jit`` forms of that step on the same devices;
3. inference of a run's exported pruned model vs its dense model (``--run``).

Run with two fake CPU devices so that both parallel forms split the batch::

  python -m benchmarks.train_throughput --run runs/main
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import hspg_jax.flax  # noqa: E402
import models  # noqa: E402
from experiments.asc import config as config_lib  # noqa: E402
from experiments.asc import optim  # noqa: E402
from experiments.asc import step as step_lib  # noqa: E402
from experiments.asc import train as train_lib  # noqa: E402


def _stepper(cfg, name: str, parallel: str, input_shape, n_classes: int):
  c = config_lib.from_dict(cfg.to_dict())
  c.optimizer.name = name
  model = models.get_model(c.model.name, n_classes, rngs=nnx.Rngs(0),
                           **train_lib.model_kwargs(c))
  graph = hspg_jax.flax.analyze_channels(model, (1, *input_shape))
  # Steps per epoch 1 and warm-up 0: HSPG is in its half-space stage (the costlier one).
  c.optimizer.warmup_epochs = 0
  tx = optim.build(c, graph.spec, steps_per_epoch=1)
  return step_lib.Stepper(model, tx, parallel)


def _time_steps(stepper, batch, steps: int) -> float:
  state = stepper.init_state(0)
  state, m = stepper.train_step(state, batch)  # compile
  jax.block_until_ready(m["loss"])
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = stepper.train_step(state, batch)
  jax.block_until_ready((state.params, m["loss"]))
  return (time.perf_counter() - t0) / steps


def side_by_side(make_a, make_b, batch, rounds: int, steps: int):
  a, b = make_a(), make_b()
  ta, tb = [], []
  for _ in range(rounds):
    ta.append(_time_steps(a, batch, steps))
    tb.append(_time_steps(b, batch, steps))
  return float(np.median(ta)), float(np.median(tb)), ta, tb


def inference(run_dir: Path, batch_size: int, rounds: int):
  from experiments.asc import export, runs  # pylint: disable=g-import-not-at-top

  exported = export.load(run_dir / "pruned")
  run, state, _ = runs.load_run(run_dir, progress=False)
  dense = train_lib.live_model(run, run.stepper.host(state.params),
                               run.stepper.host(state.batch_stats))
  small = exported.model
  x = jnp.asarray(np.random.default_rng(0).normal(
      size=(batch_size, *exported.info["input_shape"])).astype(np.float32))

  def timer(model):
    f = export.forward(model)  # returns numpy: each call waits for its result
    f(x)  # compile

    def once():
      t0 = time.perf_counter()
      f(x)
      return time.perf_counter() - t0
    return once

  td, ts = timer(dense), timer(small)
  dense_t, small_t = [], []
  for _ in range(rounds):
    dense_t.append(td())
    small_t.append(ts())
  shape = (1, *exported.info["input_shape"])
  rep = hspg_jax.flax.prune_report(dense, small, shape)
  return rep, float(np.median(dense_t)), float(np.median(small_t))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--batch-size", type=int, default=32, help="global batch (default 32)")
  ap.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
  ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
  ap.add_argument("--frames", type=int, default=130,
                  help="input frames (default 130: the main job's 3-s clips)")
  ap.add_argument("--run", type=Path, help="a finished run folder with pruned/ (for part 3)")
  args = ap.parse_args(argv)
  for flag in ("batch_size", "steps", "rounds", "frames"):
    if getattr(args, flag) < 1:
      ap.error(f"--{flag.replace('_', '-')}: must be >= 1")
  if args.run is not None and not (args.run / "pruned" / "model.json").is_file():
    ap.error(f"--run {args.run}: no pruned/model.json (train it, or run `hspg-asc prune`)")
  cfg = config_lib.default_config()
  input_shape, n_classes = (cfg.data.n_mels, args.frames, 2), 6
  rng = np.random.default_rng(0)
  batch = {"features": rng.normal(size=(args.batch_size, *input_shape)).astype(np.float32),
           "label": rng.integers(0, n_classes, args.batch_size).astype(np.int32),
           "weight": np.ones(args.batch_size, np.float32)}
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s); "
        f"model {cfg.model.name} width {cfg.model.width_mult}, input {input_shape}, "
        f"global batch {args.batch_size}")
  out = {}
  for parallel in ("sharded", "pmap"):
    b, h, tb, th = side_by_side(
        lambda p=parallel: _stepper(cfg, "base", p, input_shape, n_classes),
        lambda p=parallel: _stepper(cfg, "hspg", p, input_shape, n_classes),
        batch, args.rounds, args.steps)
    out[f"hspg_vs_base_{parallel}"] = b / h
    print(f"[{parallel}] step ms: sgd(momentum) {1e3 * b:.1f}, hspg {1e3 * h:.1f}; "
          f"examples/s hspg / sgd = {b / h:.3f} (rounds: sgd {[round(1e3 * t) for t in tb]}, "
          f"hspg {[round(1e3 * t) for t in th]})")
  s, p, ts_, tp = side_by_side(
      lambda: _stepper(cfg, "hspg", "sharded", input_shape, n_classes),
      lambda: _stepper(cfg, "hspg", "pmap", input_shape, n_classes),
      batch, args.rounds, args.steps)
  out["pmap_vs_sharded"] = s / p
  print(f"HSPG step ms: sharded jit {1e3 * s:.1f}, pmap {1e3 * p:.1f}; "
        f"examples/s pmap / sharded = {s / p:.3f}")
  if args.run is not None:
    rep, td, tsm = inference(args.run, args.batch_size, max(args.rounds * 4, 10))
    out["inference_speedup"] = td / tsm
    out["mac_ratio"] = rep.mac_ratio
    print(f"inference of {args.run} (batch {args.batch_size}): dense {1e3 * td:.1f} ms, "
          f"pruned {1e3 * tsm:.1f} ms, speedup {td / tsm:.2f}x; params {rep.params_before:,} -> "
          f"{rep.params_after:,} ({rep.param_ratio:.2f}x), MACs ratio {rep.mac_ratio:.2f}")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
