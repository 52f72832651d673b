"""Shared checks for the comparison's baseline transforms (l1 Prox-SG, ADMM, OBProx-SG).

The problems come from tests/test_hspg.py (a separable noisy quadratic over a
pytree with grouped conv-like and dense leaves, biases in families, and an
ungrouped leaf ``free``) and tests/test_parallel.py (least squares).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests import test_parallel
from tests.test_hspg import SPEC, make_problem, run_jax

GROUPED = [k for k, v in SPEC.items() if v is not None]
UNGROUPED = [k for k, v in SPEC.items() if v is None]


def np_heavy_ball(buf, d, momentum):
  """optax.trace's buffer ``buf = mu * buf + d`` (``buf = d`` first); None: no momentum."""
  if momentum is None:
    return None, d
  buf = d if buf is None else {k: momentum * buf[k] + d[k] for k in d}
  return buf, buf


def np_soft(v, t):
  return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def assert_same_elementwise_run(jax_hist, np_hist, atol=2e-5):
  """Same iterates, and exactly the same zero coordinates, step by step."""
  for t, (a, b) in enumerate(zip(jax_hist, np_hist)):
    for k in a:
      np.testing.assert_array_equal(a[k] == 0, b[k] == 0, err_msg=f"zeros of {k} at step {t}")
      np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=1e-4, err_msg=f"{k} at step {t}")


def check_eager_equals_jit(tx, seed=3, steps=12):
  x0, _, problem = make_problem(seed=seed, steps=steps)
  eager = run_jax(tx, x0, problem, steps, jit=False)
  jitted = run_jax(tx, x0, problem, steps, jit=True)
  assert_same_elementwise_run(eager, jitted, atol=1e-6)


def check_vmap(tx, steps=8):
  """vmap over two independent problems equals two single runs."""
  problems = [make_problem(seed=s, steps=steps) for s in (20, 21)]
  singles = [run_jax(tx, x0, p, steps)[-1] for x0, _, p in problems]
  stacked = jax.tree.map(lambda *a: jnp.stack(a),
                         *[{k: jnp.asarray(v) for k, v in x0.items()} for x0, _, _ in problems])
  state = jax.vmap(tx.init)(stacked)
  step = jax.jit(jax.vmap(tx.update))
  for t in range(steps):
    grads = jax.tree.map(lambda *a: jnp.stack(a),
                         *[p({k: stacked[k][i] for k in stacked}, t)
                           for i, (_, _, p) in enumerate(problems)])
    u, state = step(grads, state, stacked)
    stacked = optax.apply_updates(stacked, u)
  for i, single in enumerate(singles):
    for k in single:
      np.testing.assert_array_equal(np.asarray(stacked[k][i]) == 0, single[k] == 0)
      np.testing.assert_allclose(stacked[k][i], single[k], atol=1e-6)


def check_data_parallel(make_tx, min_zeros=1):
  """pmap and sharded jit on the 2 fake devices give the single-device numbers.

  ``make_tx(groups)`` builds the transform for test_parallel's ``{"W", "b"}``.
  """
  tx = make_tx(test_parallel.GROUPS)
  params, X, Y = test_parallel.problem()
  single = test_parallel.run_single(tx, params, X, Y)
  assert int(np.sum(np.asarray(single["W"]) == 0)) >= min_zeros, "the run should zero something"
  for runner in (test_parallel.run_pmap, test_parallel.run_sharded_jit):
    parallel = runner(tx, params, X, Y)
    for k in single:
      np.testing.assert_array_equal(np.asarray(parallel[k]) == 0, np.asarray(single[k]) == 0)
      np.testing.assert_allclose(parallel[k], single[k], atol=1e-5, rtol=1e-5)


def check_inject_hyperparams(factory, kwargs, changes, steps=10):
  """``optax.inject_hyperparams(factory)`` equals the plain transform, and values
  changed in its state act like a plain transform built with them."""
  x0, _, problem = make_problem(seed=4, steps=steps)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  assert_same_elementwise_run(run_jax(injected, x0, problem, steps),
                              run_jax(factory(**kwargs), x0, problem, steps), atol=1e-6)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  state = injected.init(params)
  for name, value in changes.items():
    state.hyperparams[name] = jnp.asarray(value)
  changed = factory(**{**kwargs, **changes})
  u, _ = jax.jit(injected.update)(problem(params, 0), state, params)
  v, _ = changed.update(problem(params, 0), changed.init(params), params)
  plain = factory(**kwargs)
  w, _ = plain.update(problem(params, 0), plain.init(params), params)
  assert any(not np.allclose(v[k], w[k]) for k in v), "the change should matter"
  for k in u:
    np.testing.assert_allclose(u[k], v[k], rtol=1e-5, atol=1e-7)
