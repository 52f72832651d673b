"""DHSPG (target group sparsity) against a NumPy restatement of OTOv2's reference step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from tests import np_reference as ref
from tests import test_parallel as par
from tests.test_hspg import FAMILIES, SPEC, assert_same_run, make_problem, run_jax


def np_partition(X, D, families, target, tol, magnitude="mean"):
  """The reference's ``partition_groups`` (``group_divisible=1``), literally;
  ``magnitude="rms"`` divides the group norms by ``sqrt(n)`` instead of ``n``.

  ``X``, ``D``: family name -> ``(G, n)`` matrices. Returns name -> bool mask.
  """
  cos, avg, spans, start = [], [], {}, 0
  for name, _ in families:
    x, d = X[name], D[name]
    nx, nd = np.linalg.norm(x, axis=1), np.linalg.norm(d, axis=1)
    cos.append(np.sum(x * d, axis=1) / np.maximum(nx * nd, 1e-8))  # cos(-x, -d)
    avg.append(nx / (x.shape[1] if magnitude == "mean" else np.sqrt(x.shape[1])))
    spans[name] = (start, start + x.shape[0])
    start += x.shape[0]
  total = start
  k = int(total * min(target + tol, 0.999))
  cos, avg = np.concatenate(cos), np.concatenate(avg)
  normalize = lambda v: v / max(np.linalg.norm(v), 1e-12)  # noqa: E731
  scores = 0.5 * normalize(cos) + 0.5 * normalize(1.0 / (avg + 1e-6))
  top = np.argsort(-scores, kind="stable")[:k]
  masks = {}
  for name, _ in families:
    lo, hi = spans[name]
    g = hi - lo
    penalize = np.intersect1d(top, np.arange(lo, hi)) - lo
    not_penalize = np.setdiff1d(np.arange(g), penalize)
    mask = np.zeros(g, bool)
    if g > 1:
      refined = max(len(not_penalize), 1)
      not_penalize = np.argsort(scores[lo:hi], kind="stable")[:refined]
      mask[np.setdiff1d(np.arange(g), not_penalize)] = True
    masks[name] = mask
  return masks


def np_dhspg_run(x0, families, grad_fn, steps, lr, target, *, direction="sgd", momentum=None,
                 lam=None, amplify=None, hat=None, tol=0.05, pstep=0, eps=0.0, prune=None,
                 magnitude="mean"):
  """DHSPG from the equations; returns (iterates after each step, final partition).

  ``prune``: HESSO's guarantee (``pruning_steps``): within ``prune`` steps of the
  partition, the missing number of zero groups, taken among the non-zero
  penalised groups by smallest ``||x_g|| / n_g`` (ties: lower global index),
  have their trial point scaled by ``(T - t - 1) / (T - t)``.
  """
  defaults = {"sgd": (1e-3, 2.0, 10.0), "adam": (1e-2, 20.0, 1e3)}[direction]
  lam = defaults[0] if lam is None else lam
  amplify = defaults[1] if amplify is None else amplify
  hat = defaults[2] if hat is None else hat
  x = {k: np.array(v, np.float64) for k, v in x0.items()}
  buf = m = v = None
  masks = None
  total = sum(flat.shape[0] for flat in (ref.flat(x, mem) for _, mem in families))
  history = []
  for t in range(steps):
    g = {k: np.asarray(val, np.float64) for k, val in grad_fn(x, t).items()}
    if direction == "adam":
      b1 = 0.9 if momentum is None else momentum
      m = {k: (1 - b1) * g[k] + (b1 * m[k] if m else 0) for k in g}
      v = {k: (1 - 0.999) * g[k] ** 2 + (0.999 * v[k] if v else 0) for k in g}
      d = {k: (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v[k] / (1 - 0.999 ** (t + 1))) + 1e-8)
           for k in g}
    elif momentum is not None:
      buf = g if buf is None else {k: momentum * buf[k] + g[k] for k in g}
      d = buf
    else:
      d = g
    X = {name: ref.flat(x, mem) for name, mem in families}
    D = {name: ref.flat(d, mem) for name, mem in families}
    if t == pstep:
      masks = np_partition(X, D, families, target, tol, magnitude)
    n_zero = sum(int(np.sum(np.linalg.norm(X[name], axis=1) == 0)) for name, _ in families)
    reached = n_zero / total >= target
    x_hat = {k: x[k] - lr * d[k] for k in x}
    ratio = {name: np.ones(X[name].shape[0]) for name, _ in families}
    if prune is not None and masks is not None and not reached and 0 <= t - pstep < prune:
      need = int(np.ceil(target * total)) - n_zero
      size = {"mean": lambda n: n, "rms": np.sqrt}[magnitude]
      cands = [(np.linalg.norm(X[name][i]) / size(X[name].shape[1]), pos, name, i)
               for pos, (name, i) in enumerate((name, i) for name, _ in families
                                               for i in range(X[name].shape[0]))
               if masks[name][i] and np.linalg.norm(X[name][i]) > 0]
      span = prune - (t - pstep)
      for _, _, name, i in sorted(cands)[:need]:
        ratio[name][i] = (span - 1) / span
    for name, members in families:
      xs, ds = X[name], D[name]
      hat_x = ref.flat(x_hat, members)
      norm = np.linalg.norm(xs, axis=1)
      if masks is not None and masks[name].any() and not reached:
        sel = masks[name]
        inner = np.sum(xs * ds, axis=1)
        lambdas = np.full(len(norm), lam)
        adj = sel & (inner < 0)
        lb = -inner[adj] / norm[adj]
        ub = -(np.sum(ds * ds, axis=1)[adj] * norm[adj] / inner[adj])
        lam_adj = np.clip(amplify * lb, lam, lam * hat)
        over = lam_adj >= ub
        lam_adj[over] = (lb[over] + ub[over]) / 2
        lambdas[adj] = lam_adj
        mixed = np.zeros_like(xs)
        nz = norm > 0
        mixed[nz] = xs[nz] / (norm[nz] + 1e-8)[:, None]
        hat_x[sel] -= lr * lambdas[sel][:, None] * mixed[sel]
        hat_x *= ratio[name][:, None]
        proj = np.sum(hat_x * xs, axis=1) < eps * norm ** 2
        hat_x[sel & proj] = 0.0
      hat_x[norm == 0] = 0.0  # fixed_zero_groups
      ref.unflat(x_hat, members, hat_x)
    x = x_hat
    history.append({k: val.copy() for k, val in x.items()})
  return history, masks


def zero_count(x):
  return sum(int(np.sum(np.linalg.norm(ref.flat(x, mem), axis=1) == 0)) for _, mem in FAMILIES)


# Settings under which the target is reached inside the 25 steps, over several
# steps of the adaptive-lambda stage (with defaults and epsilon 0.9, at once).
CASES = {
    "sgd": dict(direction="sgd", lr=0.2, lam=0.3, eps=0.7),
    "sgd_momentum": dict(direction="sgd", lr=0.2, momentum=0.5, lam=1.0, eps=0.5),
    "adam": dict(direction="adam", lr=0.2, lam=1.0, eps=0.5),
    "adam_defaults": dict(direction="adam", lr=0.2, eps=0.9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_restatement(case):
  opts = dict(CASES[case])
  steps, pstep, target = 25, 4, 0.3
  x0, np_grad, jax_grad = make_problem(seed=30, steps=steps)
  lr, direction = opts.pop("lr"), opts.pop("direction")
  np_hist, np_masks = np_dhspg_run(x0, FAMILIES, np_grad, steps, lr, target,
                                   direction=direction, pstep=pstep, **opts)
  lam, eps = opts.pop("lam", None), opts.pop("eps")
  tx = hspg_jax.dhspg(lr, target, SPEC, direction=direction, reg_strength=lam, epsilon=eps,
                      partition_step=pstep, **opts)
  jax_hist = run_jax(tx, x0, jax_grad, steps)
  # The run exercises every stage: no zero group before the partition, then the
  # target is reached inside the run.
  counts = [zero_count(x) for x in np_hist]
  assert counts[pstep - 1] == 0 and max(counts) >= np.ceil(target * 18), counts
  assert_same_run(jax_hist, np_hist, atol=5e-5)
  params = {k: jnp.asarray(val) for k, val in x0.items()}
  state, update = tx.init(params), jax.jit(tx.update)
  for t in range(pstep + 1):
    u, state = update(jax_grad(params, t), state, params)
    params = optax.apply_updates(params, u)
  for (name, _), mask in zip(FAMILIES, state.to_zero):
    np.testing.assert_array_equal(mask, np_masks[name], err_msg=name)


PRUNE_CASES = {
    # epsilon 0 and the default lambda: the reference alone zeroes nothing here.
    "sgd_shrink_only": dict(direction="sgd", lr=0.05, eps=0.0),
    "sgd_momentum": dict(direction="sgd", lr=0.1, momentum=0.5, lam=0.3, eps=0.5),
    "adam": dict(direction="adam", lr=0.05, eps=0.9),
    "rms": dict(direction="sgd", lr=0.05, eps=0.0, magnitude="rms"),
}


@pytest.mark.parametrize("case", list(PRUNE_CASES))
def test_pruning_steps_matches_numpy_restatement_and_hits_target(case):
  opts = dict(PRUNE_CASES[case])
  # Target 0.25: G_p holds 5 groups = ceil(0.25 * 18) (at 0.3 the family fix-up
  # would leave G_p one group short of the 6 needed).
  steps, pstep, prune, target = 20, 4, 10, 0.25
  x0, np_grad, jax_grad = make_problem(seed=35, steps=steps)
  lr, direction = opts.pop("lr"), opts.pop("direction")
  np_hist, masks = np_dhspg_run(x0, FAMILIES, np_grad, steps, lr, target, direction=direction,
                                pstep=pstep, prune=prune, **opts)
  if opts.get("magnitude") == "rms":
    # The reference's ||x_g|| / n_g puts the family of largest groups ("c1", 38
    # scalars a group) first; ||x_g|| / sqrt(n_g) picks from the other families.
    _, mean_masks = np_dhspg_run(x0, FAMILIES, np_grad, pstep + 1, lr, target, pstep=pstep)
    assert mean_masks["c1"].sum() == 5 and not masks["c1"].any()
  plain, _ = np_dhspg_run(x0, FAMILIES, np_grad, steps, lr, target, direction=direction,
                          pstep=pstep, **opts)
  lam, eps = opts.pop("lam", None), opts.pop("eps")
  tx = hspg_jax.dhspg(lr, target, SPEC, direction=direction, reg_strength=lam, epsilon=eps,
                      partition_step=pstep, pruning_steps=prune, **opts)
  jax_hist = run_jax(tx, x0, jax_grad, steps)
  assert_same_run(jax_hist, np_hist, atol=5e-5)
  needed = int(np.ceil(target * 18))
  counts = [zero_count(x) for x in jax_hist]
  # Hit by the deadline (the step partition_step + T - 1), never undone afterwards.
  assert all(c >= needed for c in counts[pstep + prune - 1:]), counts
  assert counts == sorted(counts), counts
  if case == "sgd_shrink_only":
    # Only the shrink zeroes groups: exactly the target, exactly at the deadline,
    # while the reference step alone zeroes none.
    assert counts[pstep + prune - 2] < needed == counts[pstep + prune - 1] == counts[-1]
    assert zero_count(plain[-1]) == 0


def test_pruning_steps_hits_target_where_the_reference_stalls():
  # Least squares with the lr decayed tenfold after the partition: the capped
  # lambda stalls short of the target, the HESSO shrink reaches it exactly.
  steps, pstep, prune, groups = 600, 20, 300, {"W": 0, "b": None}
  lr = optax.piecewise_constant_schedule(0.05, {100: 0.1})

  def final_zeros(**kwargs):
    params, loss = least_squares(seed=3)
    tx = hspg_jax.dhspg(lr, 0.6, groups, partition_step=pstep, epsilon=0.0, **kwargs)

    def body(carry, key):
      params, state = carry
      u, state = tx.update(jax.grad(loss)(params, key), state, params)
      return (optax.apply_updates(params, u), state), None

    (params, _), _ = jax.jit(lambda p, s: jax.lax.scan(
        body, (p, s), jax.random.split(jax.random.PRNGKey(2), steps)))(params, tx.init(params))
    return int(np.sum(np.linalg.norm(params["W"], axis=1) == 0))

  needed = int(np.ceil(0.6 * 32))
  assert final_zeros() < needed
  assert final_zeros(pruning_steps=prune) == needed


def test_partition_spares_single_group_and_whole_families():
  # Family "a" (3 tiny groups) scores best and would be wholly chosen; family
  # "one" has a single group: the reference keeps both from being emptied.
  rng = np.random.default_rng(0)
  x0 = {"a": 1e-3 * rng.normal(size=(3, 2)), "one": 1e-3 * rng.normal(size=(1, 4)),
        "b": rng.normal(size=(8, 2)), "bias": rng.normal(size=(2,))}
  x0 = {k: v.astype(np.float32) for k, v in x0.items()}
  spec = {"a": 0, "one": 0, "b": 0, "bias": None}
  families = [("a", [("a", 0)]), ("one", [("one", 0)]), ("b", [("b", 0)])]
  grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in x0.items()}
  _, masks = np_dhspg_run(x0, families, lambda x, t: grads, 1, 0.1, 0.8, pstep=0)
  tx = hspg_jax.dhspg(0.1, 0.8, spec)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  _, state = jax.jit(tx.update)({k: jnp.asarray(v) for k, v in grads.items()},
                                tx.init(params), params)
  names = hspg_jax.resolve_groups(params, spec).family_names
  got = dict(zip(names, [np.asarray(m) for m in state.to_zero]))
  assert got["a"].sum() == 2 and not got["one"].any()
  for name in got:
    np.testing.assert_array_equal(got[name], masks[name], err_msg=name)


def least_squares(seed=0, num_groups=32, width=4, batch=64):
  """Stochastic least squares; 12 rows of the truth are 0, 12 weak, 8 strong."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  norms = jnp.concatenate([jnp.zeros(12), jnp.logspace(-3, -1.5, 12), jnp.linspace(0.5, 2, 8)])
  dirs = jax.random.normal(k1, (num_groups, width))
  truth = (dirs / jnp.linalg.norm(dirs, axis=1, keepdims=True)
           * norms[jax.random.permutation(k3, num_groups)][:, None])

  def loss(p, key):
    ka, kb = jax.random.split(key)
    X = jax.random.normal(ka, (batch, num_groups))
    Y = X @ truth + 0.1 * jax.random.normal(kb, (batch, width))
    return 0.5 * jnp.mean(jnp.sum((X @ p["W"] + p["b"] - Y) ** 2, -1))

  params = {"W": 0.1 * jax.random.normal(k2, (num_groups, width)), "b": jnp.zeros(width)}
  return params, loss


@pytest.mark.parametrize("direction,lr", [("sgd", 0.1), ("adam", 0.01)])
@pytest.mark.parametrize("target", [0.5, 0.7])
def test_reaches_target_with_default_lambdas(direction, lr, target):
  steps, groups = 1500, {"W": 0, "b": None}
  params, loss = least_squares()
  # epsilon 0.95 and a warm-up as in the reference's tutorials; lambdas default.
  tx = hspg_jax.dhspg(lr, target, groups, direction=direction, partition_step=20,
                      epsilon=0.95)

  def body(carry, key):
    params, state = carry
    u, state = tx.update(jax.grad(loss)(params, key), state, params)
    params = optax.apply_updates(params, u)
    return (params, state), jnp.linalg.norm(params["W"], axis=1) == 0

  run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s),
                                          jax.random.split(jax.random.PRNGKey(1), steps)))
  (params, state), zero = run(params, tx.init(params))
  zero, chosen = np.asarray(zero), np.asarray(state.to_zero[0])
  k = int(32 * min(target + 0.05, 0.999))
  assert chosen.sum() == k
  assert target <= zero[-1].mean() <= k / 32, zero[-1].mean()
  assert not np.any(zero[:-1] & ~zero[1:]), "a zero group came back"
  assert not np.any(zero[-1] & ~chosen), "a group outside the partition was zeroed"
  assert np.all(np.isfinite(params["W"]))


def test_no_zero_group_before_partition_and_zero_groups_frozen():
  steps = 12
  x0, _, jax_grad = make_problem(seed=31, steps=steps)
  x0["rows"][2] = 0.0  # a group that is zero from the start
  tx = hspg_jax.dhspg(0.2, 0.3, SPEC, reg_strength=0.3, epsilon=0.5, partition_step=8)
  hist = run_jax(tx, x0, jax_grad, steps)
  for x in hist:
    np.testing.assert_array_equal(x["rows"][2], 0.0)
    assert zero_count(x) >= 1
  assert all(zero_count(x) == 1 for x in hist[:8])


def test_inject_hyperparams_matches_plain_and_can_be_changed():
  steps = 8
  x0, _, jax_grad = make_problem(seed=32, steps=steps)
  kwargs = dict(direction="adam", reg_strength=0.05, epsilon=0.5, partition_step=3,
                pruning_steps=4)
  sched = optax.linear_schedule(0.05, 0.01, steps)
  injected = optax.inject_hyperparams(hspg_jax.dhspg)(
      learning_rate=sched, target_group_sparsity=0.25, groups=SPEC, **kwargs)
  hist = run_jax(injected, x0, jax_grad, steps)
  assert_same_run(hist, run_jax(hspg_jax.dhspg(sched, 0.25, SPEC, **kwargs), x0, jax_grad,
                                steps), atol=1e-6)
  # pruning_steps, injected too: the target (ceil(0.25 * 18) = 5) is met by step 3 + 4 - 1.
  assert zero_count(hist[6]) == 5
  # The target lives in the state and can be changed: with 0.999 the partition
  # takes all but the families' spared groups.
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = injected.init(params)
  state.hyperparams["target_group_sparsity"] = jnp.asarray(0.999)
  state.hyperparams["partition_step"] = jnp.asarray(0)
  _, state = jax.jit(injected.update)(jax_grad(params, 0), state, params)
  assert sum(int(m.sum()) for m in state.inner_state.to_zero) == 18 - 3


def test_vmap_over_independent_problems():
  steps = 10
  problems = [make_problem(seed=s, steps=steps) for s in (33, 34)]
  tx = hspg_jax.dhspg(0.2, 0.3, SPEC, reg_strength=0.3, epsilon=0.5, partition_step=3,
                      pruning_steps=5)
  stacked = jax.tree.map(lambda *a: jnp.stack(a),
                         *[{k: jnp.asarray(v) for k, v in x0.items()} for x0, _, _ in problems])
  grads = [jax.jit(p.grad) for _, _, p in problems]
  state, update = jax.vmap(tx.init)(stacked), jax.jit(jax.vmap(tx.update))
  for t in range(steps):
    g = [grad({k: v[i] for k, v in stacked.items()}, p.noises[t])
         for i, (grad, (_, _, p)) in enumerate(zip(grads, problems))]
    u, state = update(jax.tree.map(lambda *a: jnp.stack(a), *g), state, stacked)
    stacked = optax.apply_updates(stacked, u)
  for i, (x0, np_grad, _) in enumerate(problems):
    expected = np_dhspg_run(x0, FAMILIES, np_grad, steps, 0.2, 0.3, lam=0.3, eps=0.5,
                            pstep=3, prune=5)[0][-1]
    assert zero_count(expected) > 0
    assert_same_run([{k: np.asarray(v[i]) for k, v in stacked.items()}], [expected], atol=5e-5)


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")
@pytest.mark.parametrize("runner", [par.run_pmap, par.run_sharded_jit])
def test_data_parallel_matches_single_device(runner):
  params, X, Y = par.problem()
  make = lambda: hspg_jax.dhspg(0.1, 0.5, par.GROUPS, direction="adam",  # noqa: E731
                                reg_strength=1.0, partition_step=5, epsilon=0.9,
                                pruning_steps=4)
  single = par.run_single(make(), params, X, Y)
  parallel = runner(make(), params, X, Y)
  zeros = np.linalg.norm(np.asarray(single["W"]), axis=1) == 0
  assert zeros.sum() >= 5
  np.testing.assert_array_equal(np.linalg.norm(np.asarray(parallel["W"]), axis=1) == 0, zeros)
  for k in single:
    np.testing.assert_allclose(parallel[k], single[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_group_sparsity=0.0), "target_group_sparsity"),
    (dict(target_group_sparsity=1.0), "target_group_sparsity"),
    (dict(target_group_sparsity=-0.2), "target_group_sparsity"),
    (dict(direction="rmsprop"), "direction"),
    (dict(reg_strength=-1e-3), "reg_strength"),
    (dict(amplify=-2.0), "amplify"),
    (dict(hat_coeff=0.5), "hat_coeff"),
    (dict(tolerance=-0.1), "tolerance"),
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(momentum=1.5), "momentum"),
    (dict(epsilon=1.0), "epsilon"),
    (dict(partition_step=-1), "partition_step"),
    (dict(pruning_steps=0), "pruning_steps"),
    (dict(pruning_steps=2.5), "pruning_steps"),
    (dict(magnitude="l1"), "magnitude"),
])
def test_bad_input_names_the_parameter(kwargs, match):
  args = dict(learning_rate=0.1, target_group_sparsity=0.5, groups=SPEC)
  args.update(kwargs)
  with pytest.raises((ValueError, TypeError), match=match):
    hspg_jax.dhspg(**args)
