"""Optimizer step time: HSPG vs optax.sgd(momentum=0.9), measured side by side.

Times one jitted optimizer step (``tx.update`` + ``optax.apply_updates``) on

* a CP-ResNet-sized tree: the conv kernels (HWIO) and BatchNorm scale/bias of
  a width-128, rho-5 CP-ResNet, about 3.6M parameters in about 40 leaves, each
  conv coupled with its BatchNorm into one family (one group per channel);
* a small tree (a few thousand parameters) where per-step overhead dominates;

and, for context, one whole training step (forward, backward, optimizer) of a
real CP-ResNet (``models``) in train mode, with the groups found by
``hspg_jax.flax.analyze_channels``.

HSPG runs in its half-space stage (the more expensive one). SGD and HSPG are
timed in alternating rounds so machine noise hits both alike; the printed
figure is the ratio of medians.

    python -m benchmarks.hspg_step --help
"""

from __future__ import annotations

import argparse
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


def time_steps(step, params, state, grads, iters):
  """Seconds per step over ``iters`` steps (params and state carried through)."""
  start = time.perf_counter()
  for _ in range(iters):
    params, state = step(params, state, grads)
  jax.block_until_ready(params)
  return (time.perf_counter() - start) / iters, params, state


def optimizers(spec, lr=1e-3, lam=1e-3):
  return {
      "sgd_momentum": optax.sgd(lr, momentum=0.9),
      "hspg_momentum": hspg_jax.hspg(lr, lam, spec, half_space_start=0, epsilon=0.0,
                                     momentum=0.9),
  }


def alternate(runs, rounds, iters, grads):
  """Times each run's step in alternating rounds; returns median seconds per step."""
  for _ in range(rounds):
    for run in runs.values():
      t, run[1], run[2] = time_steps(run[0], run[1], run[2], grads, iters)
      run[3].append(t)
  return {name: statistics.median(run[3]) for name, run in runs.items()}


def compare(params, spec, rounds, iters):
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  runs = {}
  for name, tx in optimizers(spec).items():
    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    step = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    s = tx.init(p)
    p, s = step(p, s, grads)  # compile + warm up
    jax.block_until_ready(p)
    runs[name] = [step, p, s, []]
  return alternate(runs, rounds, iters, grads)


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
  for name in ("sgd_momentum", "hspg_momentum"):
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
  return n, {name: statistics.median(run[2]) for name, run in runs.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=15, help="alternating timing rounds")
  p.add_argument("--iters", type=int, default=20, help="steps per round")
  p.add_argument("--width", type=int, default=128, help="CP-ResNet base width")
  p.add_argument("--train-shape", type=int, nargs=4, default=[4, 256, 64, 2],
                 metavar=("B", "MEL", "FRAMES", "CH"),
                 help="input of the whole-train-step comparison (default 4 256 64 2)")
  p.add_argument("--train-rounds", type=int, default=5,
                 help="timing rounds for the train step (0 skips it)")
  args = p.parse_args(argv)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s)")
  trees = {
      f"cp_resnet_like(width={args.width})": make_tree(cp_resnet_like_shapes(args.width)),
      "small(width=8)": make_tree(cp_resnet_like_shapes(8)),
  }
  print(f"{'tree':<26} {'params':>10} {'leaves':>7} {'groups':>7} {'sgd ms':>9} "
        f"{'hspg ms':>9} {'hspg/sgd':>9}")
  for name, (params, spec) in trees.items():
    n = sum(x.size for x in jax.tree.leaves(params))
    groups = hspg_jax.resolve_groups(params, spec).num_groups
    t = compare(params, spec, args.rounds, args.iters)
    print(f"{name:<26} {n:>10,d} {len(jax.tree.leaves(params)):>7d} {groups:>7d} "
          f"{1e3 * t['sgd_momentum']:>9.3f} {1e3 * t['hspg_momentum']:>9.3f} "
          f"{t['hspg_momentum'] / t['sgd_momentum']:>9.2f}")
  if args.train_rounds > 0:
    n, t = compare_train_step(tuple(args.train_shape), args.train_rounds, iters=2)
    name = f"train step {tuple(args.train_shape)}"
    print(f"{name:<26} {n:>10,d} {'':>7} {'':>7} {1e3 * t['sgd_momentum']:>9.1f} "
          f"{1e3 * t['hspg_momentum']:>9.1f} {t['hspg_momentum'] / t['sgd_momentum']:>9.2f}")


if __name__ == "__main__":
  main()
