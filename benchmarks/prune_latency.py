"""Inference latency of a pruned CP-ResNet vs the dense one, with the FLOPs ratio beside it.

Zeroes a random fraction of every zero-invariant group family (as HSPG would),
prunes with ``hspg_jax.flax.prune``, checks the pruned model gives the dense
model's eval outputs, then times the jitted eval forward of all models side by
side in one process (rounds interleaved, warm-up first, median reported).

FLOPs are counted two ways: analytic multiply-accumulates of every conv / dense
(``hspg_jax.flax.count_macs``) and XLA's ``cost_analysis()['flops']`` of the
compiled forward. The goal is speedup >= 0.7 x the FLOPs ratio.

  python benchmarks/prune_latency.py                       # full size: 4 clips of (256, 431, 2)
  python benchmarks/prune_latency.py --width-mult 0.25 --frames 128 --runs 5   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hspg_jax
import hspg_jax.flax as hf
import models
from models.testing import materialize


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--model", default="cp_resnet", help="registered model name")
  p.add_argument("--rho", type=int, default=7, help="CP-ResNet receptive-field parameter")
  p.add_argument("--width-mult", type=float, default=1.0, help="width multiplier (128/256/512 x)")
  p.add_argument("--batch", type=int, default=4, help="clips per forward")
  p.add_argument("--mel", type=int, default=256, help="mel bins")
  p.add_argument("--frames", type=int, default=431, help="frames (431 = 10 s)")
  p.add_argument("--channels", type=int, default=2, help="input channels")
  p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7],
                 help="fractions of each family's groups to zero")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls per model after compiling")
  p.add_argument("--runs", type=int, default=10, help="timed rounds (median reported)")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def zero_random_groups(model, graph, frac, seed):
  """A copy of ``model`` with ``round(frac * G)`` random groups of each family zeroed."""
  model = nnx.clone(model)
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  for fam in graph.structure.families:
    k = min(fam.num_groups - 1, int(round(frac * fam.num_groups)))
    zero = np.zeros(fam.num_groups, bool)
    zero[rng.choice(fam.num_groups, k, replace=False)] = True
    for m in fam.members:
      leaves[m.index] = jnp.where(hspg_jax.groups.expand(jnp.asarray(zero), m), 0.0,
                                  leaves[m.index])
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
  return model


def compiled_forward(model, x):
  """(compiled eval forward of (state, x), state, XLA flops)."""
  model.eval()
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  compiled = fn.lower(state, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  return compiled, state, flops


def main(argv=None):
  args = parse_args(argv)
  shape = (args.batch, args.mel, args.frames, args.channels)
  kw = {"width_mult": args.width_mult, "in_channels": args.channels}
  if args.model == "cp_resnet":
    kw["rho"] = args.rho
  print(f"# {args.model} {kw}, input {shape}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform} x{jax.device_count()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} logical cores")
  t0 = time.perf_counter()
  dense = materialize(lambda r: models.get_model(args.model, 10, rngs=r, **kw), args.seed)
  x = jax.random.normal(jax.random.key(args.seed), shape)
  graph = hf.analyze_channels(dense, x)
  print(f"# {len(graph.structure.families)} group families, {graph.structure.num_groups} groups "
        f"(analysis {time.perf_counter() - t0:.1f}s)")

  variants = [("dense", 0.0, dense)]
  for frac in args.sparsity:
    masked = zero_random_groups(dense, graph, frac, args.seed + 1)
    sparsity = float(hspg_jax.group_sparsity(nnx.state(masked, nnx.Param), graph.spec))
    small = hf.prune(masked, graph)
    variants.append((f"pruned {frac:.0%}", sparsity, small, masked))

  rows = []
  runners = []
  for name, sparsity, model, *masked in variants:
    compiled, state, flops = compiled_forward(model, x)
    y = compiled(state, x).block_until_ready()
    if masked:  # pruning must not change the eval outputs
      mc, ms, _ = compiled_forward(masked[0], x)
      err = float(jnp.max(jnp.abs(mc(ms, x) - y)))
      scale = float(jnp.max(jnp.abs(y)))
      assert err <= 1e-4 * max(1.0, scale), f"{name}: pruned outputs differ by {err}"
    for _ in range(args.warmup):
      compiled(state, x).block_until_ready()
    runners.append((compiled, state))
    rows.append(dict(name=name, sparsity=sparsity, params=hf.count_params(model),
                     macs=hf.count_macs(model, x), flops=flops, times=[]))

  for _ in range(args.runs):  # interleaved rounds: drift hits every model alike
    for (compiled, state), row in zip(runners, rows):
      t = time.perf_counter()
      compiled(state, x).block_until_ready()
      row["times"].append(time.perf_counter() - t)

  base = rows[0]
  base_ms = statistics.median(base["times"]) * 1e3
  header = (f"{'model':<12} {'grp sparsity':>12} {'params':>10} {'GMACs':>8} {'MAC ratio':>9} "
            f"{'XLA ratio':>9} {'median ms':>10} {'speedup':>8} {'speedup/MAC':>11}")
  print(header)
  print("-" * len(header))
  for row in rows:
    ms = statistics.median(row["times"]) * 1e3
    mac_ratio = base["macs"] / row["macs"]
    xla_ratio = base["flops"] / row["flops"]
    speedup = base_ms / ms
    print(f"{row['name']:<12} {row['sparsity']:>12.2f} {row['params']:>10,} "
          f"{row['macs'] / 1e9:>8.2f} {mac_ratio:>9.2f} {xla_ratio:>9.2f} {ms:>10.1f} "
          f"{speedup:>8.2f} {speedup / mac_ratio:>11.2f}")
  print(f"# {args.runs} timed rounds after {args.warmup} warm-up calls; MAC ratio = dense / "
        "pruned analytic conv+dense MACs; XLA ratio = same with cost_analysis() flops; "
        "goal: speedup/MAC >= 0.7")


if __name__ == "__main__":
  main()
