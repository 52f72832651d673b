"""The convex study: group-lasso multinomial logistic regression on digits.

Setting (from the hspg_jax core issue, matching the PyTorch reference run):
scikit-learn's bundled digits (1797 x 64, X / 16, 10 classes), W is 64 x 10
with one group per input feature (a row of W), b unregularised;
``F(W, b) = mean cross-entropy + lambda * sum_r ||W_r||_2`` with lambda = 0.01;
batch 64 (last batch partial), lr 0.1 divided by 10 at epochs 150 and 225,
300 epochs, HSPG's half-space stage from epoch 50; W ~ 0.01 N(0, 1), b = 0.

Compared: HSPG with epsilon 0, 0.5, 0.9, group Prox-SG on the same schedule,
and the optimum F* from full-batch float64 FISTA (NumPy, independent of JAX).
One more row goes beyond the reference: HSPG with the same first stage but the
half-space stage run at lr 1.0 instead of 0.1 (still /10 at epochs 150 and
225) and epsilon 0.5, at the same number of mini-batch gradient evaluations.

Why the reference HSPG stops at 27-28 of the optimum's 36 zero groups: the
reference schedule under-optimizes this ill-conditioned problem, it is not the
last iterates' noise. At epoch 300 ``||W - W*|| = 2.96`` (``||W*|| = 11.2``) and
F hardly moves after epoch 225 (+1.296% -> +1.284%); iterate averaging does not
help. The groups it misses are exactly the optimum-zero groups with the smallest
KKT slack ``lambda - ||grad_g f(x*)||`` (6e-5 to 2e-3, against lambda = 0.01):
the pull towards zero is ``lr * slack`` per step, so at lr 0.1 and below they
end with norms 0.1-0.7, far outside the half-space test's reach
(``||x_g|| < lr * <d_g, x_g/||x_g||> / (1 - epsilon)``, about 1e-6 at lr 1e-3).
A 10x larger half-space lr brings them to zero.

Every method runs for each of ``--seeds`` (default 0 1 2); the table shows mean
+/- std over them and the mini-batch gradient evaluations each method used.
Run ``hspg-convex --help`` (or ``python -m experiments.convex``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hspg_jax
from experiments import argchecks

GROUPS = {"W": 0, "b": None}
# Figures measured with the PyTorch reference on this exact setting (from the issue).
REFERENCE = {
    "optimum_F": 0.863239, "optimum_zero_groups": 36, "optimum_accuracy": 0.9460,
    "hspg_F": 0.87423, "hspg_zero_groups": "27-28", "proxsg_F": 0.87423,
    "proxsg_zero_groups": 18,
}


def load_digits():
  """Digits features scaled to [0, 1] and integer labels."""
  from sklearn.datasets import load_digits as sk_load  # bundled with scikit-learn, no download

  data = sk_load()
  return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)


# --- the optimum, by FISTA in float64 ---------------------------------------------------


def _np_loss_grad(W, b, X, y):
  logits = X @ W + b
  logits -= logits.max(axis=1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(axis=1, keepdims=True)
  n = X.shape[0]
  loss = -np.mean(np.log(p[np.arange(n), y]))
  p[np.arange(n), y] -= 1.0
  p /= n
  return loss, X.T @ p, p.sum(axis=0)


def objective(W, b, X, y, lam):
  """F(W, b) in float64."""
  W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
  loss, _, _ = _np_loss_grad(W, b, X.astype(np.float64), y)
  return loss + lam * np.sum(np.linalg.norm(W, axis=1))


def _prox_step(W, b, X, y, lam, step):
  """One proximal-gradient step from (W, b)."""
  _, gW, gb = _np_loss_grad(W, b, X, y)
  V = W - step * gW
  norms = np.linalg.norm(V, axis=1, keepdims=True)
  return V * np.maximum(0.0, 1.0 - step * lam / np.where(norms > 0, norms, 1.0)), b - step * gb


def fista(X, y, lam, num_classes=10, max_iter=50_000, tol=1e-9):
  """Full-batch FISTA with gradient-based adaptive restart, in float64.

  Stops when the gradient mapping ``||(x - prox_step(x)) / step||_inf``, which
  is zero exactly at the optimum, falls below ``tol``. Returns ``(W, b, iterations)``.
  """
  X = X.astype(np.float64)
  n, d = X.shape
  Xb = np.hstack([X, np.ones((n, 1))])
  # The softmax cross-entropy Hessian is bounded by 0.5 * Xb^T Xb / n.
  step = 1.0 / (0.5 * np.linalg.norm(Xb, 2) ** 2 / n)
  W, b = np.zeros((d, num_classes)), np.zeros(num_classes)
  zW, zb, t = W, b, 1.0
  for it in range(1, max_iter + 1):
    W_new, b_new = _prox_step(zW, zb, X, y, lam, step)
    # Restart when the momentum points uphill (O'Donoghue & Candes, 2015).
    if np.sum((zW - W_new) * (W_new - W)) + np.sum((zb - b_new) * (b_new - b)) > 0:
      t = 1.0
    t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
    zW = W_new + (t - 1) / t_new * (W_new - W)
    zb = b_new + (t - 1) / t_new * (b_new - b)
    W, b, t = W_new, b_new, t_new
    if it % 50 == 0:
      PW, Pb = _prox_step(W, b, X, y, lam, step)
      if max(np.abs(W - PW).max(), np.abs(b - Pb).max()) / step < tol:
        break
  return W, b, it


# --- stochastic methods in JAX ----------------------------------------------------------


def batch_plan(n, batch_size, epochs, seed):
  """Per-epoch shuffles padded to whole batches: indices and a validity mask."""
  rng = np.random.default_rng(seed)
  num_batches = -(-n // batch_size)
  idx = np.zeros((epochs, num_batches * batch_size), np.int32)
  mask = np.zeros_like(idx, dtype=np.float32)
  for e in range(epochs):
    idx[e, :n] = rng.permutation(n)
    mask[e, :n] = 1.0
  shape = (epochs, num_batches, batch_size)
  return idx.reshape(shape), mask.reshape(shape)


METHODS = ("hspg", "proxsg")


def lr_schedule(cfg, steps_per_epoch, half_space_lr=None):
  """``cfg.lr``, divided by 10 at each epoch of ``cfg.lr_drops``.

  With ``half_space_lr`` the base value is ``half_space_lr`` instead of
  ``cfg.lr`` from ``cfg.half_space_epoch`` on (still divided by 10 for every
  drop passed, whichever comes first).
  """
  drops = [e * steps_per_epoch for e in cfg.lr_drops]
  if half_space_lr is None:
    return optax.piecewise_constant_schedule(cfg.lr, {d: 0.1 for d in drops})
  start = cfg.half_space_epoch * steps_per_epoch
  drops = jnp.asarray(drops, jnp.int32)

  def schedule(count):
    base = jnp.where(count >= start, half_space_lr, cfg.lr)
    return base * 0.1 ** jnp.sum(count >= drops)

  return schedule


def make_optimizer(method, epsilon, steps_per_epoch, cfg, half_space_lr=None):
  """The method's transform; ``half_space_lr`` (HSPG only) sets the half-space stage's lr."""
  if method == "hspg":
    return hspg_jax.hspg(lr_schedule(cfg, steps_per_epoch, half_space_lr), cfg.lam, GROUPS,
                         epsilon=epsilon, half_space_start=cfg.half_space_epoch * steps_per_epoch)
  if method == "proxsg" and half_space_lr is None:
    return hspg_jax.prox_sg(lr_schedule(cfg, steps_per_epoch), cfg.lam, GROUPS)
  if method == "proxsg":
    raise ValueError("half_space_lr applies to method 'hspg' only (Prox-SG has no "
                     "half-space stage)")
  raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def train(method, epsilon, X, y, cfg, seed=None, half_space_lr=None):
  """Trains one method; returns final params, per-epoch history and seconds.

  ``seed`` (default: the first of ``cfg.seeds``) draws the initial W and the
  shuffles; ``half_space_lr`` is :func:`make_optimizer`'s. The history holds,
  per epoch, the full-batch F, the zero groups and ``grad_evals``: mini-batch
  gradient evaluations so far, counted where they happen (a full-batch gradient
  would count n / batch size of them).
  """
  seed = cfg.seeds[0] if seed is None else seed
  n, d = X.shape
  idx, mask = batch_plan(n, cfg.batch_size, cfg.epochs, seed)
  tx = make_optimizer(method, epsilon, idx.shape[1], cfg, half_space_lr)
  rng = np.random.default_rng(seed)
  params = {"W": jnp.asarray(0.01 * rng.normal(size=(d, 10)), jnp.float32),
            "b": jnp.zeros(10, jnp.float32)}
  Xj, yj = jnp.asarray(X), jnp.asarray(y)

  def batch_loss(p, bi, bm):
    logits = Xj[bi] @ p["W"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, yj[bi])
    return jnp.sum(ce * bm) / jnp.sum(bm)

  def full_objective(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(Xj @ p["W"] + p["b"], yj)
    return jnp.mean(ce) + cfg.lam * hspg_jax.omega(p, GROUPS)

  @jax.jit
  def run_epoch(params, state, evals, e_idx, e_mask):
    def step(carry, batch):
      p, s, evals = carry
      u, s = tx.update(jax.grad(batch_loss)(p, *batch), s, p)
      return (optax.apply_updates(p, u), s, evals + 1), None

    (params, state, evals), _ = jax.lax.scan(step, (params, state, evals), (e_idx, e_mask))
    return (params, state, evals, full_objective(params),
            hspg_jax.num_zero_groups(params, GROUPS))

  state = tx.init(params)
  evals = jnp.zeros([], jnp.int32)
  run_epoch.lower(params, state, evals, idx[0], mask[0]).compile()  # keep compile out of the timing
  history = {"F": [], "zero_groups": [], "grad_evals": []}
  start = time.perf_counter()
  for e in range(cfg.epochs):
    params, state, evals, F, zeros = run_epoch(params, state, evals, idx[e], mask[e])
    history["F"].append(F)
    history["zero_groups"].append(zeros)
    history["grad_evals"].append(evals)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  history = {k: [float(v) for v in vals] for k, vals in history.items()}
  return params, history, seconds


def accuracy(W, b, X, y):
  return float(np.mean(np.argmax(np.asarray(X) @ np.asarray(W) + np.asarray(b), axis=1) == y))


def zero_groups(W):
  return int(np.sum(np.linalg.norm(np.asarray(W), axis=1) == 0))


def _runs(cfg):
  """(row name, method, epsilon, half-space lr) for every trained row of the table."""
  runs = [(f"HSPG eps={eps}", "hspg", eps, None) for eps in cfg.epsilons]
  runs += [(f"HSPG eps={cfg.half_space_epsilon}, half-space lr {lr}", "hspg",
            cfg.half_space_epsilon, lr) for lr in cfg.half_space_lrs]
  runs.append(("Prox-SG", "proxsg", None, None))
  return runs


def _mean_std(values):
  return float(np.mean(values)), float(np.std(values))


def run_study(cfg, log=print):
  """The optimum, then every method for every seed of ``cfg.seeds``.

  Returns the table rows (one per method: mean and standard deviation over the
  seeds, and the per-seed values) and the first seed's per-epoch histories.
  """
  X, y = load_digits()
  t0 = time.perf_counter()
  W_opt, b_opt, iters = fista(X, y, cfg.lam)
  F_opt = objective(W_opt, b_opt, X, y, cfg.lam)
  rows = [{"method": "optimum (FISTA, float64)", "F": F_opt, "F_std": 0.0, "gap": 0.0,
           "gap_std": 0.0, "zero_groups": zero_groups(W_opt), "zero_groups_std": 0.0,
           "accuracy": accuracy(W_opt, b_opt, X, y), "seconds": time.perf_counter() - t0,
           "wrong_zeros": 0.0, "grad_evals": None, "iterations": iters}]
  nonzero_opt = np.linalg.norm(W_opt, axis=1) > 0
  log(f"optimum: F* = {F_opt:.6f}, {rows[0]['zero_groups']}/64 zero groups ({iters} FISTA iterations)")
  histories = {}
  for name, method, eps, half_space_lr in _runs(cfg):
    per_seed = {"seed": [], "F": [], "zero_groups": [], "wrong_zeros": [], "accuracy": [],
                "seconds": [], "grad_evals": []}
    for seed in cfg.seeds:
      params, history, seconds = train(method, eps, X, y, cfg, seed, half_space_lr)
      F = objective(params["W"], params["b"], X, y, cfg.lam)
      zero = np.linalg.norm(np.asarray(params["W"]), axis=1) == 0
      for key, value in (("seed", seed), ("F", F), ("zero_groups", int(zero.sum())),
                         ("wrong_zeros", int(np.sum(zero & nonzero_opt))),
                         ("accuracy", accuracy(params["W"], params["b"], X, y)),
                         ("seconds", seconds), ("grad_evals", int(history["grad_evals"][-1]))):
        per_seed[key].append(value)
      histories.setdefault(name, history)
      log(f"{name}, seed {seed}: F = {F:.6f} ({100 * (F / F_opt - 1):+.3f}% vs F*), "
          f"{per_seed['zero_groups'][-1]}/64 zero groups, {seconds:.2f} s")
    gaps = [F / F_opt - 1.0 for F in per_seed["F"]]
    row = {"method": name}
    for key, values in (("F", per_seed["F"]), ("gap", gaps),
                        ("zero_groups", per_seed["zero_groups"])):
      row[key], row[key + "_std"] = _mean_std(values)
    row.update(wrong_zeros=float(np.mean(per_seed["wrong_zeros"])),
               accuracy=float(np.mean(per_seed["accuracy"])),
               seconds=float(np.mean(per_seed["seconds"])),
               seconds_per_epoch=float(np.mean(per_seed["seconds"])) / cfg.epochs,
               grad_evals=max(per_seed["grad_evals"]), per_seed=per_seed)
    rows.append(row)
  return rows, histories


def format_table(rows):
  """Mean +/- standard deviation over the seeds; seconds are the mean training time.

  "wrong" counts (mean over seeds) the zero groups that are nonzero at the optimum.
  """
  lines = [f"{'method':<38} {'final F':>22} {'vs F*':>18} {'zero groups':>16} {'wrong':>5} "
           f"{'train acc':>9} {'grad evals':>10} {'seconds':>7}"]
  for r in rows:
    evals = "-" if r["grad_evals"] is None else str(r["grad_evals"])
    lines.append(
        f"{r['method']:<38} {r['F']:>9.6f} +/- {r['F_std']:.6f} "
        f"{100 * r['gap']:>+7.3f} +/- {100 * r['gap_std']:.3f}% "
        f"{r['zero_groups']:>5.1f} +/- {r['zero_groups_std']:.1f}/64 {r['wrong_zeros']:>5.1f} "
        f"{100 * r['accuracy']:>8.2f}% {evals:>10} {r['seconds']:>7.2f}")
  return "\n".join(lines)


def plot_tradeoff(rows, path):
  """Zero groups against the F gap, one point (mean +/- std over seeds) per method."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  optimum, methods = rows[0], rows[1:]
  for r in methods:
    ax.errorbar(100 * r["gap"], r["zero_groups"], xerr=100 * r["gap_std"],
                yerr=r["zero_groups_std"], fmt="o", capsize=3, label=r["method"])
  ax.axhline(optimum["zero_groups"], color="k", ls="--", lw=1,
             label=f"optimum: {optimum['zero_groups']}/64")
  positive = all(r["gap"] - r["gap_std"] > 0 for r in methods)
  ax.set_xscale("log" if positive else "linear")
  ax.set_xlabel("F / F* - 1 (%)" + (", log scale" if positive else ""))
  ax.set_ylabel("zero groups (of 64)")
  ax.set_title("Group sparsity vs objective gap at equal gradient evaluations")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(histories, optimum, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for name, h in histories.items():
    epochs = np.arange(1, len(h["F"]) + 1)
    ax1.plot(epochs, np.asarray(h["F"]) - optimum["F"], label=name)
    ax2.plot(epochs, h["zero_groups"], label=name)
  ax1.set_yscale("log")
  ax1.set_xlabel("epoch")
  ax1.set_ylabel("F - F* (full batch)")
  ax1.set_title("Objective gap")
  ax2.axhline(optimum["zero_groups"], color="k", ls="--", lw=1, label="optimum")
  ax2.set_xlabel("epoch")
  ax2.set_ylabel("zero groups (of 64)")
  ax2.set_title("Group sparsity")
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def build_parser():
  p = argparse.ArgumentParser(
      prog="hspg-convex",
      description="Group-lasso logistic regression on digits: HSPG vs Prox-SG vs the optimum, "
      "over several seeds. "
      "Every option is checked before the study starts.")
  p.add_argument("--epochs", type=argchecks.positive_int,
                 help="training epochs (default 300; 30 with --quick)")
  p.add_argument("--half-space-epoch", type=argchecks.non_negative_int,
                 help="first epoch of HSPG's half-space stage (default: --epochs / 6, i.e. 50)")
  p.add_argument("--lr-drops", type=argchecks.positive_int, nargs="*",
                 help="epochs at which lr is divided by 10 (default: 1/2 and 3/4 of --epochs, "
                 "i.e. 150 225)")
  p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
  p.add_argument("--lam", type=float, default=0.01, help="group-lasso lambda (default 0.01)")
  p.add_argument("--batch-size", type=argchecks.positive_int, default=64,
                 help="mini-batch size (default 64)")
  p.add_argument("--epsilons", type=float, nargs="+", default=[0.0, 0.5, 0.9],
                 help="HSPG epsilons to compare (default 0 0.5 0.9)")
  p.add_argument("--half-space-lrs", type=argchecks.positive_float, nargs="*", default=[1.0],
                 help="one extra HSPG row per value: the first stage as the reference, the "
                 "half-space stage at this lr (then /10 at --lr-drops); default 1.0, none "
                 "when given without values")
  p.add_argument("--half-space-epsilon", type=float, default=0.5,
                 help="epsilon of the --half-space-lrs rows (default 0.5)")
  p.add_argument("--seeds", type=argchecks.non_negative_int, nargs="+", default=[0, 1, 2],
                 help="seeds for init and shuffling; the table shows mean +/- std over them "
                 "(default 0 1 2)")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/convex"),
                 help="output folder for results.json, curves.png and tradeoff.png (default "
                 "runs/convex); checked for writing before the study starts")
  p.add_argument("--quick", action="store_true",
                 help="a 30-epoch smoke run: changes the default of --epochs (and so of "
                 "--half-space-epoch and --lr-drops); options given explicitly win")
  p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
  return p


def _check(p, cfg):
  """Fills the epoch-derived defaults and refuses bad values, naming the option."""
  if cfg.epochs is None:
    cfg.epochs = 30 if cfg.quick else 300
  if cfg.half_space_epoch is None:
    cfg.half_space_epoch = cfg.epochs // 6
  if cfg.half_space_epoch > cfg.epochs:
    p.error(f"argument --half-space-epoch: must be in [0, --epochs={cfg.epochs}], got "
            f"{cfg.half_space_epoch}")
  if cfg.lr_drops is None:
    cfg.lr_drops = [cfg.epochs // 2, 3 * cfg.epochs // 4]
  for e in cfg.lr_drops:
    if e > cfg.epochs:
      p.error(f"argument --lr-drops: {e} is outside [1, --epochs={cfg.epochs}]")
  for eps in cfg.epsilons:
    if not 0 <= eps < 1:
      p.error(f"argument --epsilons: {eps} is outside [0, 1)")
  if not 0 <= cfg.half_space_epsilon < 1:
    p.error(f"argument --half-space-epsilon: {cfg.half_space_epsilon} is outside [0, 1)")
  for flag, value in (("--lr", cfg.lr), ("--lam", cfg.lam)):
    if not (np.isfinite(value) and value >= 0):
      p.error(f"argument {flag}: must be a finite number >= 0, got {value}")
  return cfg


def parse_args(argv=None):
  """The study's settings from the command line (validated; nothing is written)."""
  p = build_parser()
  return _check(p, p.parse_args(argv))


def main(argv=None):
  p = build_parser()
  cfg = _check(p, p.parse_args(argv))
  argchecks.writable_dir(p, "--out", cfg.out)  # before hours of work, not after
  try:
    rows, histories = run_study(cfg)
  except KeyboardInterrupt:
    print("hspg-convex: interrupted; nothing written", file=sys.stderr)
    return 130
  table = format_table(rows)
  print()
  print(table)
  setting = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(cfg).items()}
  result = {"setting": setting, "rows": rows, "histories": histories,
            "pytorch_reference": REFERENCE, "jax": jax.__version__,
            "backend": jax.default_backend()}
  tmp = cfg.out / "results.json.tmp"
  tmp.write_text(json.dumps(result, indent=2))
  tmp.replace(cfg.out / "results.json")
  print(f"\nwrote {cfg.out / 'results.json'}")
  if not cfg.no_plot:
    plot(histories, rows[0], cfg.out / "curves.png")
    plot_tradeoff(rows, cfg.out / "tradeoff.png")
    print(f"wrote {cfg.out / 'curves.png'} (seed {cfg.seeds[0]}) and {cfg.out / 'tradeoff.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
