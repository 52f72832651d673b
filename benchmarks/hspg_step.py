"""Optimizer step time: HSPG vs optax.sgd(momentum=0.9), measured side by side.

Times one jitted optimizer step (``tx.update`` + ``optax.apply_updates``, the
parameter and state buffers donated) on

* a CP-ResNet-sized tree: the conv kernels (HWIO) and BatchNorm scale/bias of
  a width-128, rho-5 CP-ResNet, about 3.6M parameters in about 80 leaves, each
  conv coupled with its BatchNorm into one family (one group per channel);
* a small tree (a few thousand parameters) where per-step overhead dominates;

and, for context, one whole training step (forward, backward, optimizer) of a
real CP-ResNet (``models``) in train mode, with the groups found by
``hspg_jax.flax.analyze_channels``.

Optimizers: ``optax.sgd(momentum=0.9)`` (the baseline), the fused ``hspg()``
without and with momentum 0.9, and the equivalent chain of composable pieces
(``hspg(..., fused=False)``) with momentum. HSPG runs in its half-space stage.
All optimizers are timed in the same rounds, in an order that rotates from
round to round; each round gives a ratio to the baseline's time in that round,
and the table shows the median ratio with its interquartile range, so machine
noise hits both sides of a ratio alike.

Beside the times, XLA's own counts for the compiled step: ``passes`` is the
cost analysis' "bytes accessed" over the parameter bytes (one pass = reading
or writing one parameter-sized array), ``kernels`` the number of fused
kernels, ``temp`` the temporary buffer size, ``copies`` the copy kernels of
arrays of more than 256 elements.

    python -m benchmarks.hspg_step --help
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hspg_jax
from hspg_jax import GroupAxis


def cp_resnet_like_shapes(width=128):
  """(name, kernel shape) of the convs of a rho-5 CP-ResNet (each followed by a BN)."""
  w1, w2, w3 = width, 2 * width, 4 * width
  convs = [("stem", (5, 5, 2, w1))]
  k1 = [3, 3, 3, 3]
  k2 = [1, 3, 3, 1]
  for i in range(4):
    convs.append((f"s1b{i}c1", (k1[i], k1[i], w1, w1)))
    convs.append((f"s1b{i}c2", (k2[i], k2[i], w1, w1)))
  for stage, (cin, cout) in enumerate([(w1, w2), (w2, w3)], start=2):
    for i in range(4):
      convs.append((f"s{stage}b{i}c1", (1, 1, cin if i == 0 else cout, cout)))
      convs.append((f"s{stage}b{i}c2", (1, 1, cout, cout)))
    convs.append((f"s{stage}short", (1, 1, cin, cout)))
  return convs


def make_tree(convs, seed=0):
  rng = np.random.default_rng(seed)
  params, spec = {}, {}
  for name, shape in convs:
    params[name] = {
        "kernel": jnp.asarray(rng.normal(0, 0.05, shape), jnp.float32),
        "bn_scale": jnp.ones(shape[-1], jnp.float32),
        "bn_bias": jnp.zeros(shape[-1], jnp.float32),
    }
    spec[name] = {"kernel": GroupAxis(-1, name), "bn_scale": GroupAxis(0, name),
                  "bn_bias": GroupAxis(0, name)}
  return params, spec


BASELINE = "sgd_momentum"


def optimizers(spec, lr=1e-3, lam=1e-3):
  return {
      BASELINE: optax.sgd(lr, momentum=0.9),
      "hspg": hspg_jax.hspg(lr, lam, spec, half_space_start=0, epsilon=0.0),
      "hspg_momentum": hspg_jax.hspg(lr, lam, spec, half_space_start=0, epsilon=0.0,
                                     momentum=0.9),
      "hspg_momentum_chain": hspg_jax.hspg(lr, lam, spec, half_space_start=0, epsilon=0.0,
                                           momentum=0.9, fused=False),
  }


def make_step(tx):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return jax.jit(step, donate_argnums=(0, 1))


def xla_counts(step, params, state, grads):
  """XLA's view of the compiled step: passes, kernels, temp bytes, large copies."""
  compiled = step.lower(params, state, grads).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  text = compiled.as_text()
  entry = text[text.index("\nENTRY"):]
  kernels = len(re.findall(r"= \S+ fusion\(", entry))
  copies = 0
  for m in re.finditer(r"= \w+\[([\d,]*)\]\S* copy\(", entry):
    copies += int(np.prod([int(d) for d in m.group(1).split(",") if d] or [1])) > 256
  nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
  return {"passes": cost.get("bytes accessed", float("nan")) / nbytes, "kernels": kernels,
          "temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20, "copies": copies}


def compare(params, spec, rounds, iters):
  """Per optimizer: median ms, ratio to the baseline (median, p25, p75), XLA counts."""
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  runs = {}
  for name, tx in optimizers(spec).items():
    step = make_step(tx)
    p = jax.tree.map(jnp.copy, params)
    s = tx.init(p)
    counts = xla_counts(step, p, s, grads)
    for _ in range(2):  # compile + warm up
      p, s = step(p, s, grads)
    jax.block_until_ready(p)
    runs[name] = {"step": step, "p": p, "s": s, "times": [], "counts": counts}
  names = list(runs)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      run = runs[name]
      start = time.perf_counter()
      for _ in range(iters):
        run["p"], run["s"] = run["step"](run["p"], run["s"], grads)
      jax.block_until_ready(run["p"])
      run["times"].append((time.perf_counter() - start) / iters)
  out = {}
  for name, run in runs.items():
    ratios = np.asarray(run["times"]) / np.asarray(runs[BASELINE]["times"])
    out[name] = dict(run["counts"], ms=1e3 * statistics.median(run["times"]),
                     ratio=float(np.median(ratios)), p25=float(np.percentile(ratios, 25)),
                     p75=float(np.percentile(ratios, 75)))
  return out


def compare_train_step(shape, rounds, iters, rho=5):
  """Whole train step of a width-128 CP-ResNet: HSPG vs SGD, same model and batch."""
  from flax import nnx

  import hspg_jax.flax
  import models

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    optimizer.update(model, nnx.grad(loss_fn)(model))

  runs, n = {}, 0
  for name in (BASELINE, "hspg_momentum"):
    model = models.get_model("cp_resnet", 10, rho=rho, rngs=nnx.Rngs(0))
    spec = hspg_jax.flax.analyze_channels(model, (1,) + tuple(shape[1:])).spec
    model.train()
    optimizer = nnx.Optimizer(model, optimizers(spec)[name], wrt=nnx.Param)
    step(model, optimizer)  # compile + warm up
    runs[name] = (model, optimizer, [])
    n = hspg_jax.flax.count_params(model)
  for _ in range(rounds):
    for model, optimizer, times in runs.values():
      start = time.perf_counter()
      for _ in range(iters):
        step(model, optimizer)
      jax.block_until_ready(nnx.state(model))
      times.append((time.perf_counter() - start) / iters)
  ratios = np.asarray(runs["hspg_momentum"][2]) / np.asarray(runs[BASELINE][2])
  return n, {name: statistics.median(run[2]) for name, run in runs.items()}, ratios


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=31, help="alternating timing rounds")
  p.add_argument("--iters", type=int, default=10, help="steps per optimizer per round")
  p.add_argument("--width", type=int, default=128, help="CP-ResNet base width")
  p.add_argument("--train-shape", type=int, nargs=4, default=[4, 256, 64, 2],
                 metavar=("B", "MEL", "FRAMES", "CH"),
                 help="input of the whole-train-step comparison (default 4 256 64 2)")
  p.add_argument("--train-rounds", type=int, default=5,
                 help="timing rounds for the train step (0 skips it)")
  args = p.parse_args(argv)
  print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), {args.rounds} rounds x {args.iters} steps")
  trees = {
      f"cp_resnet_like(width={args.width})": make_tree(cp_resnet_like_shapes(args.width)),
      "small(width=8)": make_tree(cp_resnet_like_shapes(8)),
  }
  print(f"{'tree':<34} {'optimizer':<20} {'ms':>7} {'ratio':>6} {'p25-p75':>11} "
        f"{'passes':>6} {'kernels':>7} {'temp MiB':>8} {'copies':>6}")
  for tree_name, (params, spec) in trees.items():
    n = sum(x.size for x in jax.tree.leaves(params))
    groups = hspg_jax.resolve_groups(params, spec).num_groups
    labels = [tree_name, f"  {n:,d} params, {len(jax.tree.leaves(params))} leaves",
              f"  {groups} groups"]
    for k, (name, r) in enumerate(compare(params, spec, args.rounds, args.iters).items()):
      label = labels[k] if k < len(labels) else ""
      print(f"{label:<34} {name:<20} {r['ms']:>7.3f} {r['ratio']:>6.2f} "
            f"{r['p25']:>5.2f}-{r['p75']:<5.2f} {r['passes']:>6.2f} {r['kernels']:>7d} "
            f"{r['temp_mb']:>8.2f} {r['copies']:>6d}")
  if args.train_rounds > 0:
    n, t, ratios = compare_train_step(tuple(args.train_shape), args.train_rounds, iters=2)
    print(f"train step {tuple(args.train_shape)}, CP-ResNet {n:,d} params: "
          f"{BASELINE} {1e3 * t[BASELINE]:.1f} ms, hspg_momentum "
          f"{1e3 * t['hspg_momentum']:.1f} ms, ratio {np.median(ratios):.2f} "
          f"({np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})")


if __name__ == "__main__":
  main()
