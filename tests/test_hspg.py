"""HSPG and Prox-SG against a NumPy restatement of the paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from hspg_jax import GroupAxis
from tests import np_reference as ref

SHAPES = {
    "conv": (3, 3, 4, 6),
    "conv_bias": (6,),
    "bn_scale": (6,),
    "dense": (6, 5),
    "dense_bias": (5,),
    "rows": (7, 3),
    "free": (4,),
}
SPEC = {
    "conv": GroupAxis(-1, "c1"),
    "conv_bias": GroupAxis(0, "c1"),
    "bn_scale": GroupAxis(0, "c1"),
    "dense": GroupAxis(1, "d"),
    "dense_bias": GroupAxis(0, "d"),
    "rows": 0,
    "free": None,
}
FAMILIES = [
    ("c1", [("conv", 3), ("conv_bias", 0), ("bn_scale", 0)]),
    ("d", [("dense", 1), ("dense_bias", 0)]),
    ("rows", [("rows", 0)]),
]


def make_problem(seed, steps, noise=0.3):
  """A separable quadratic with stochastic gradient noise.

  f(x) = sum_k 0.5 * sum(W_k * (x_k - c_k)^2); about half of the groups have
  tiny targets c so that the group lasso can zero them.
  """
  rng = np.random.default_rng(seed)
  x0, weight, target = {}, {}, {}
  for name, shape in SHAPES.items():
    x0[name] = rng.normal(0, 1, shape).astype(np.float32)
    weight[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    target[name] = rng.normal(0, 1, shape).astype(np.float32)
  # Make some groups nearly zero at the optimum.
  target["conv"][..., ::2] *= 0.02
  target["conv_bias"][::2] *= 0.02
  target["bn_scale"][::2] *= 0.02
  target["dense"][:, 1::2] *= 0.02
  target["dense_bias"][1::2] *= 0.02
  target["rows"][::3] *= 0.02
  noises = [{k: (noise * rng.normal(0, 1, s)).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(steps)]

  def np_grad(x, t):
    return {k: weight[k] * (x[k] - target[k]) + noises[t][k] for k in x}

  def loss(p):
    return sum(0.5 * jnp.sum(weight[k] * (p[k] - target[k]) ** 2) for k in p)

  def jax_grad(p, noise):
    g = jax.grad(loss)(p)
    return {k: g[k] + noise[k] for k in g}

  return x0, np_grad, Problem(jax_grad, noises)


class Problem:
  """The JAX side of a test problem: gradient function and per-step noise."""

  def __init__(self, grad, noises):
    self.grad, self.noises = grad, noises

  def __call__(self, params, t):
    return self.grad(params, self.noises[t])


def run_jax(tx, x0, problem, steps, jit=True):
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = tx.init(params)

  def step(params, state, noise):
    updates, state = tx.update(problem.grad(params, noise), state, params)
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step)
  history = []
  for t in range(steps):
    params, state = step(params, state, problem.noises[t])
    history.append({k: np.asarray(v) for k, v in params.items()})
  return history


def zero_sets(x):
  out = {}
  for name, members in FAMILIES:
    out[name] = np.flatnonzero(np.linalg.norm(ref.flat(x, members), axis=1) == 0).tolist()
  return out


def assert_same_run(jax_hist, np_hist, atol=2e-5):
  for t, (a, b) in enumerate(zip(jax_hist, np_hist)):
    assert zero_sets(a) == zero_sets(b), f"zero groups differ at step {t}"
    for k in a:
      np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=1e-4, err_msg=f"{k} at step {t}")


BASE = dict(momentum=None, upper=None, prox_first=False, restart=True, nesterov=False)
CASES = {
    "plain": dict(BASE),
    "momentum": dict(BASE, momentum=0.9),
    "momentum_no_restart": dict(BASE, momentum=0.9, restart=False),
    "nesterov": dict(BASE, momentum=0.5, nesterov=True),
    "cap": dict(BASE, upper=0.35),
    "momentum_cap": dict(BASE, momentum=0.5, upper=0.25),
    "prox_first_stage": dict(BASE, prox_first=True),
    "prox_first_stage_momentum": dict(BASE, prox_first=True, momentum=0.5),
}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_restatement(case, fused):
  opts = CASES[case]
  steps, n_p, lr, lam = 60, 20, 0.1, 0.4
  eps = {"c1": 0.0, "d": 0.5, "rows": 0.2}
  x0, np_grad, jax_grad = make_problem(seed=list(CASES).index(case), steps=steps)
  np_hist = ref.hspg_run(x0, FAMILIES, np_grad, steps, lr, lam, eps, n_p,
                         momentum=opts["momentum"], upper=opts["upper"],
                         prox_first=opts["prox_first"], restart=opts["restart"],
                         nesterov=opts["nesterov"])
  tx = hspg_jax.hspg(lr, lam, SPEC, half_space_start=n_p, epsilon=eps,
                     momentum=opts["momentum"], upper_group_sparsity=opts["upper"],
                     first_stage="prox" if opts["prox_first"] else "subgradient",
                     restart_momentum=opts["restart"], nesterov=opts["nesterov"], fused=fused)
  jax_hist = run_jax(tx, x0, jax_grad, steps)
  assert_same_run(jax_hist, np_hist)
  # The run must exercise the half-space stage: groups were zeroed there.
  final_zeros = sum(len(v) for v in zero_sets(np_hist[-1]).values())
  assert final_zeros >= 3, "problem too easy to tell anything: no zero groups"
  if opts["upper"] is not None:
    # The cap must have bitten at least once: compare with the uncapped run.
    uncapped = ref.hspg_run(x0, FAMILIES, np_grad, steps, lr, lam, eps, n_p,
                            momentum=opts["momentum"], prox_first=opts["prox_first"],
                            restart=opts["restart"], nesterov=opts["nesterov"])
    assert any(zero_sets(a) != zero_sets(b) for a, b in zip(uncapped, np_hist))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
def test_learning_rate_schedule_matches_numpy(fused):
  steps, n_p, lam = 40, 10, 0.4
  sched = optax.linear_schedule(0.2, 0.02, steps)
  x0, np_grad, jax_grad = make_problem(seed=7, steps=steps)
  eps = {"c1": 0.1, "d": 0.1, "rows": 0.1}
  np_hist = ref.hspg_run(x0, FAMILIES, np_grad, steps, lambda t: float(sched(t)), lam, eps, n_p,
                         momentum=0.9)
  tx = hspg_jax.hspg(sched, lam, SPEC, half_space_start=n_p, epsilon=0.1, momentum=0.9,
                     fused=fused)
  assert_same_run(run_jax(tx, x0, jax_grad, steps), np_hist)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
def test_eager_equals_jit(fused):
  steps = 30
  x0, _, jax_grad = make_problem(seed=3, steps=steps)
  tx = hspg_jax.hspg(0.1, 0.4, SPEC, half_space_start=10, epsilon=0.3, momentum=0.9,
                     fused=fused)
  eager = run_jax(tx, x0, jax_grad, steps, jit=False)
  jitted = run_jax(tx, x0, jax_grad, steps, jit=True)
  assert_same_run(eager, jitted, atol=1e-6)


def test_prox_sg_matches_numpy_block_soft_threshold():
  steps, lr, lam = 40, 0.1, 0.4
  x0, np_grad, jax_grad = make_problem(seed=11, steps=steps)
  expected = ref.prox_sg_run(x0, FAMILIES, np_grad, steps, lr, lam)
  got = run_jax(hspg_jax.prox_sg(lr, lam, SPEC), x0, jax_grad, steps)[-1]
  assert zero_sets(got) == zero_sets(expected)
  assert sum(len(v) for v in zero_sets(got).values()) > 0
  for k in got:
    np.testing.assert_allclose(got[k], expected[k], atol=2e-5, rtol=1e-4)


def test_prox_sg_single_step_is_block_soft_threshold():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  x[1] *= 0.01  # this row will be thresholded to zero
  g = rng.normal(size=(5, 4)).astype(np.float32)
  lr, lam = 0.5, 0.3
  v = x - lr * g
  norms = np.linalg.norm(v, axis=1, keepdims=True)
  expected = v * np.maximum(0.0, 1.0 - lr * lam / norms)
  tx = hspg_jax.prox_sg(lr, lam, {"w": 0})
  params = {"w": jnp.asarray(x)}
  u, _ = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
  got = np.asarray(optax.apply_updates(params, u)["w"])
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert np.all(got[norms[:, 0] <= lr * lam] == 0.0)


def kkt_violation(x, grad, lam):
  """Max violation of the group-lasso optimality conditions (rows are groups)."""
  worst = 0.0
  for xg, gg in zip(x, grad):
    n = np.linalg.norm(xg)
    if n == 0:
      worst = max(worst, np.linalg.norm(gg) - lam)
    else:
      worst = max(worst, np.linalg.norm(gg + lam * xg / n))
  return worst


def test_prox_sg_full_batch_reaches_group_lasso_optimum():
  # min 0.5/m ||A W - B||^2 + lam sum_rows ||W_r||, checked by the KKT conditions.
  rng = np.random.default_rng(1)
  m, n, k, lam = 60, 8, 3, 0.15
  A = rng.normal(size=(m, n)).astype(np.float32)
  W_true = rng.normal(size=(n, k)).astype(np.float32)
  W_true[::2] = 0.0
  B = A @ W_true + 0.1 * rng.normal(size=(m, k)).astype(np.float32)
  loss = lambda p: 0.5 / m * jnp.sum((A @ p["W"] - B) ** 2)
  lr = 1.0 / np.linalg.eigvalsh(A.T @ A / m).max()
  tx = hspg_jax.prox_sg(float(lr), lam, {"W": 0})
  params = {"W": jnp.zeros((n, k))}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    u, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, u), state

  for _ in range(3000):
    params, state = step(params, state)
  W = np.asarray(params["W"], np.float64)
  grad = A.T.astype(np.float64) @ (A @ W - B) / m
  assert kkt_violation(W, grad, lam) < 1e-4
  assert np.sum(np.linalg.norm(W, axis=1) == 0) >= 2


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
@pytest.mark.parametrize("start", [0, 5])
def test_zero_groups_stay_zero(start, fused):
  steps = 80
  x0, _, jax_grad = make_problem(seed=5, steps=steps, noise=1.0)
  tx = hspg_jax.hspg(0.1, 0.5, SPEC, half_space_start=start, epsilon=0.5, momentum=0.9,
                     fused=fused)
  hist = run_jax(tx, x0, jax_grad, steps)
  seen = {name: set() for name, _ in FAMILIES}
  for t, x in enumerate(hist):
    now = zero_sets(x)
    for name in seen:
      assert seen[name] <= set(now[name]), f"a zero group of {name} came back at step {t}"
      seen[name] = set(now[name])
    if t >= start:  # zero means exactly zero in every member leaf
      for name, members in FAMILIES:
        block = ref.flat(x, members)[now[name]]
        assert np.all(block == 0.0)
  assert sum(len(v) for v in seen.values()) > 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
def test_first_stage_never_zeroes_a_group(fused):
  steps = 100
  x0, _, jax_grad = make_problem(seed=9, steps=steps)
  subgradient_only = hspg_jax.hspg(0.1, 2.0, SPEC, half_space_start=steps + 1, fused=fused)
  with_half_space = hspg_jax.hspg(0.1, 2.0, SPEC, half_space_start=20, fused=fused)
  first = run_jax(subgradient_only, x0, jax_grad, steps)
  assert all(sum(map(len, zero_sets(x).values())) == 0 for x in first)
  # The same lambda does zero groups once the half-space stage runs.
  second = run_jax(with_half_space, x0, jax_grad, steps)
  assert sum(map(len, zero_sets(second[-1]).values())) > 0


def test_projection_lands_exactly_on_zero_after_apply_updates():
  params = {"w": jnp.array([[0.3, -0.1, 0.7], [2.0, 1.0, -1.0]], jnp.float32)}
  tx = hspg_jax.half_space_projection({"w": 0})
  step = {"w": jnp.array([[-0.5, 0.2, -0.9], [0.1, 0.1, 0.1]], jnp.float32)}
  u, _ = tx.update(step, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, u)["w"])
  assert np.all(new[0] == 0.0) and np.all(np.signbit(new[0]) == False)  # noqa: E712
  np.testing.assert_allclose(new[1], [2.1, 1.1, -0.9], rtol=1e-6)


def test_composes_with_adam_base_direction():
  steps = 60
  x0, _, jax_grad = make_problem(seed=2, steps=steps)
  tx = optax.chain(
      hspg_jax.add_group_lasso_subgradient(SPEC, 0.5),
      optax.adam(0.05),
      hspg_jax.half_space_projection(SPEC, epsilon=0.2, start_step=20),
  )
  hist = run_jax(tx, x0, jax_grad, steps)
  zeros = [sum(map(len, zero_sets(x).values())) for x in hist]
  assert zeros[19] == 0 and zeros[-1] > 0
  assert all(a <= b for a, b in zip(zeros, zeros[1:]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
def test_inject_hyperparams_matches_plain_and_can_be_changed(fused):
  steps = 30
  x0, _, jax_grad = make_problem(seed=4, steps=steps)
  sched = optax.cosine_decay_schedule(0.1, steps)
  plain = hspg_jax.hspg(sched, 0.4, SPEC, half_space_start=10, epsilon=0.2, momentum=0.5,
                        fused=fused)
  injected = optax.inject_hyperparams(hspg_jax.hspg)(
      learning_rate=sched, reg_strength=0.4, groups=SPEC, half_space_start=10,
      epsilon=0.2, momentum=0.5, fused=fused)
  assert_same_run(run_jax(injected, x0, jax_grad, steps), run_jax(plain, x0, jax_grad, steps),
                  atol=1e-6)
  # Hyperparameters live in the state and can be changed between steps.
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = injected.init(params)
  state.hyperparams["reg_strength"] = jnp.asarray(0.0)
  u, state = jax.jit(injected.update)(jax_grad(params, 0), state, params)
  u_no_reg, _ = optax.sgd(0.1, momentum=0.5).update(
      jax_grad(params, 0), optax.sgd(0.1, momentum=0.5).init(params), params)
  for k in u:
    np.testing.assert_allclose(u[k], u_no_reg[k], rtol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
def test_apply_if_finite_skips_nan_batch(fused):
  steps = 6
  x0, _, jax_grad = make_problem(seed=6, steps=steps)
  tx = optax.apply_if_finite(hspg_jax.hspg(0.1, 0.4, SPEC, half_space_start=0, fused=fused), 3)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), jax_grad(params, 0))
  u, state = step(bad, state, params)
  after = optax.apply_updates(params, u)
  for k in params:
    np.testing.assert_array_equal(after[k], params[k])
  assert int(state.notfinite_count) == 1
  u, state = step(jax_grad(params, 1), state, params)
  after = optax.apply_updates(params, u)
  assert all(np.all(np.isfinite(v)) for v in after.values())
  assert not np.allclose(after["conv"], params["conv"])
  assert int(state.notfinite_count) == 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
def test_vmap_over_independent_problems(fused):
  steps = 10
  problems = [make_problem(seed=s, steps=steps) for s in (20, 21)]
  tx = hspg_jax.hspg(0.1, 0.6, SPEC, half_space_start=3, epsilon=0.4, momentum=0.9,
                     fused=fused)
  singles = [run_jax(tx, x0, g, steps)[-1] for x0, _, g in problems]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[{k: jnp.asarray(v) for k, v in x0.items()}
                                                  for x0, _, _ in problems])
  state = jax.vmap(tx.init)(stacked)
  for t in range(steps):
    grads = jax.tree.map(lambda *a: jnp.stack(a),
                         *[g({k: stacked[k][i] for k in stacked}, t)
                           for i, (_, _, g) in enumerate(problems)])
    u, state = jax.vmap(tx.update)(grads, state, stacked)
    stacked = optax.apply_updates(stacked, u)
  for i, single in enumerate(singles):
    assert zero_sets({k: np.asarray(v[i]) for k, v in stacked.items()}) == zero_sets(single)
    for k in single:
      np.testing.assert_allclose(stacked[k][i], single[k], atol=1e-6)
