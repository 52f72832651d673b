"""Stochastic ADMM for the group lasso against a NumPy restatement and a FISTA optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from tests import baselines_util as util
from tests import np_reference as ref
from tests.test_hspg import FAMILIES, SPEC, make_problem


def np_admm(x0, grad_fn, steps, lr, lam, rho, momentum=None):
  """Scaled-form ADMM, one SGD x-step per iteration; returns (x, z, u) after each step."""
  x = {k: np.array(v, np.float64) for k, v in x0.items()}
  z = {k: v.copy() for k, v in x.items()}
  u = {k: np.zeros_like(v) for k, v in x.items()}
  buf, history = None, []
  for t in range(steps):
    g = grad_fn(x, t)
    d = {k: g[k] + (rho * (x[k] - z[k] + u[k]) if k in util.GROUPED else 0.0) for k in x}
    buf, d = util.np_heavy_ball(buf, d, momentum)
    x = {k: x[k] - lr * d[k] for k in x}
    v = {k: x[k] + u[k] for k in x}
    z = dict(x)  # ungrouped leaves: z mirrors x
    for _, members in FAMILIES:
      V = ref.flat(v, members)
      norms = np.linalg.norm(V, axis=1)
      factor = np.where(norms > lam / rho, 1 - lam / rho / np.where(norms > 0, norms, 1), 0.0)
      unflat = dict(z)
      ref.unflat(unflat, members, V * factor[:, None])
      z = unflat
    u = {k: u[k] + x[k] - z[k] for k in x}
    history.append(tuple({k: a[k].copy() for k in a} for a in (x, z, u)))
  return history


def run_admm(tx, x0, problem, steps):
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, noise):
    updates, state = tx.update(problem.grad(params, noise), state, params)
    return optax.apply_updates(params, updates), state

  history = []
  for t in range(steps):
    params, state = step(params, state, problem.noises[t])
    history.append(tuple({k: np.asarray(v) for k, v in tree.items()}
                         for tree in (params, state.z, state.u)))
  return history


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_matches_numpy_restatement(momentum):
  steps, lr, lam, rho = 30, 0.1, 1.5, 1.0
  x0, np_grad, problem = make_problem(seed=50, steps=steps)
  expected = np_admm(x0, np_grad, steps, lr, lam, rho, momentum)
  got = run_admm(hspg_jax.admm(lr, lam, SPEC, rho=rho, momentum=momentum), x0, problem, steps)
  for i in range(3):  # x, z, u
    util.assert_same_elementwise_run([h[i] for h in got], [h[i] for h in expected])
  x, z, u = got[-1]
  zero_groups = sum(int(np.sum(np.linalg.norm(ref.flat(z, m), axis=1) == 0)) for _, m in FAMILIES)
  assert zero_groups >= 5, "z should have zero groups"
  assert all(np.all(x[k] != 0) for k in x), "x is the dense primal iterate"
  for k in util.UNGROUPED:
    np.testing.assert_array_equal(z[k], x[k])
    np.testing.assert_array_equal(u[k], 0.0)


def test_z_groups_are_zero_exactly_when_the_norm_is_below_lambda_over_rho():
  steps, lr, lam, rho = 6, 0.1, 1.5, 1.0
  x0, _, problem = make_problem(seed=51, steps=steps)
  tx = hspg_jax.admm(lr, lam, SPEC, rho=rho)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  seen = 0
  for t in range(steps):
    updates, new_state = update(problem(params, t), state, params)
    params = optax.apply_updates(params, updates)
    v = {k: np.asarray(params[k], np.float64) + np.asarray(state.u[k]) for k in params}
    z = {k: np.asarray(a) for k, a in new_state.z.items()}
    for _, members in FAMILIES:
      below = np.linalg.norm(ref.flat(v, members), axis=1) <= lam / rho
      zero = np.all(ref.flat(z, members) == 0, axis=1)
      np.testing.assert_array_equal(zero, below)
      seen += int(below.sum())
    state = new_state
  assert seen > 0


def test_full_batch_admm_reaches_the_fista_optimum():
  rng = np.random.default_rng(0)
  n, rows, cols, lam = 80, 5, 3, 0.15
  A = rng.normal(size=(n, rows * cols))
  w_true = rng.normal(size=(rows, cols))
  w_true[[1, 3]] = 0.0
  y = A @ w_true.ravel() + 0.5 + 0.1 * rng.normal(size=n)
  # FISTA in float64 on 0.5/n ||A w + b - y||^2 + lam * sum_rows ||w_r||; b unregularised.
  step = n / np.linalg.norm(np.c_[A, np.ones(n)], 2) ** 2
  theta = prev = np.zeros(rows * cols + 1)
  mom = 1.0
  for _ in range(5000):
    nxt_mom = (1 + np.sqrt(1 + 4 * mom ** 2)) / 2
    yk = theta + (mom - 1) / nxt_mom * (theta - prev)
    r = A @ yk[:-1] + yk[-1] - y
    cand = yk - step * np.r_[A.T @ r, r.sum()] / n
    W = cand[:-1].reshape(rows, cols)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    cand[:-1] = (W * np.maximum(0, 1 - step * lam / np.maximum(norms, 1e-300))).ravel()
    prev, theta, mom = theta, cand, nxt_mom
  w_star, b_star = theta[:-1].reshape(rows, cols), theta[-1]
  zero_star = np.linalg.norm(w_star, axis=1) == 0
  assert zero_star.sum() >= 2

  A32, y32 = jnp.asarray(A, jnp.float32), jnp.asarray(y, jnp.float32)

  def loss(p):
    return 0.5 * jnp.mean((A32 @ p["w"].ravel() + p["b"][0] - y32) ** 2)

  tx = hspg_jax.admm(0.2, lam, {"w": 0, "b": None}, rho=1.0)
  params = {"w": jnp.zeros((rows, cols)), "b": jnp.zeros(1)}

  def body(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=3000))(
      (params, tx.init(params)))
  z = hspg_jax.admm_consensus(state)
  np.testing.assert_array_equal(np.linalg.norm(np.asarray(z["w"]), axis=1) == 0, zero_star)
  np.testing.assert_allclose(z["w"], w_star, atol=2e-4)
  np.testing.assert_allclose(params["w"], w_star, atol=2e-4)  # x and z agree at the optimum
  np.testing.assert_allclose(z["b"][0], b_star, atol=2e-4)


def test_consensus_is_found_in_wrapped_states():
  x0, _, problem = make_problem(seed=52, steps=1)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  tx = optax.chain(optax.clip_by_global_norm(10.0), hspg_jax.admm(0.1, 1.5, SPEC, rho=1.0))
  _, state = tx.update(problem(params, 0), tx.init(params), params)
  z = hspg_jax.admm_consensus(state)
  z_get = optax.tree_utils.tree_get(state, "z")
  for k in z:
    np.testing.assert_array_equal(z[k], z_get[k])
  assert any(np.any(np.asarray(z[k]) == 0) for k in util.GROUPED)
  with pytest.raises(ValueError, match="exactly one ADMMState"):
    hspg_jax.admm_consensus(optax.sgd(0.1).init(params))


def test_eager_equals_jit():
  util.check_eager_equals_jit(hspg_jax.admm(0.1, 0.5, SPEC, rho=2.0, momentum=0.5))


def test_vmap():
  util.check_vmap(hspg_jax.admm(0.1, 0.5, SPEC, rho=2.0))


def test_pmap_and_sharded_jit():
  util.check_data_parallel(lambda groups: hspg_jax.admm(0.05, 0.3, groups, rho=1.0,
                                                        momentum=0.9), min_zeros=0)


def test_inject_hyperparams():
  kwargs = dict(learning_rate=0.1, reg_strength=0.5, groups=SPEC, rho=2.0)
  changes = dict(learning_rate=0.05, reg_strength=2.0)
  util.check_inject_hyperparams(hspg_jax.admm, kwargs, changes)
  # The consensus sees the changed reg_strength (and rho) too.
  x0, _, problem = make_problem(seed=53, steps=1)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  injected = optax.inject_hyperparams(hspg_jax.admm)(**kwargs)
  state = injected.init(params)
  state.hyperparams["reg_strength"] = jnp.asarray(2.0)
  state.hyperparams["rho"] = jnp.asarray(4.0)
  _, state = jax.jit(injected.update)(problem(params, 0), state, params)
  plain = hspg_jax.admm(0.1, 2.0, SPEC, rho=4.0)
  _, plain_state = plain.update(problem(params, 0), plain.init(params), params)
  z, z_plain = hspg_jax.admm_consensus(state), hspg_jax.admm_consensus(plain_state)
  for k in z:
    np.testing.assert_allclose(z[k], z_plain[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(reg_strength=-0.1), "reg_strength"),
    (dict(rho=0.0), "rho must be > 0"),
    (dict(rho=-1.0), "rho"),
    (dict(rho=lambda c: 0.0 * c), "rho must be > 0, got 0.0 at step 0"),
    (dict(momentum=1.0), "momentum"),
])
def test_bad_input(kwargs, name):
  kwargs = {"learning_rate": 0.1, "reg_strength": 0.1, "rho": 1.0, **kwargs}
  with pytest.raises(ValueError, match=name):
    hspg_jax.admm(groups=SPEC, **kwargs)
