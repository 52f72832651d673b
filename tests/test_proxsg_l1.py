"""l1 Prox-SG (l1_prox, prox_sg_l1) against a NumPy restatement of its equations."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from tests import baselines_util as util
from tests.test_hspg import SPEC, make_problem, run_jax


def np_prox_sg_l1(x0, grad_fn, steps, lr, lam, momentum=None):
  """``x <- soft_{lr*lam}(x - lr * d)`` on grouped leaves, ``x - lr * d`` elsewhere."""
  x = {k: np.array(v, np.float64) for k, v in x0.items()}
  buf, history = None, []
  for t in range(steps):
    lr_t = lr(t) if callable(lr) else lr
    buf, d = util.np_heavy_ball(buf, grad_fn(x, t), momentum)
    x = {k: x[k] - lr_t * d[k] for k in x}
    for k in util.GROUPED:
      x[k] = util.np_soft(x[k], lr_t * lam)
    history.append({k: v.copy() for k, v in x.items()})
  return history


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_matches_numpy_restatement(momentum):
  steps, lr, lam = 30, 0.1, 0.5
  x0, np_grad, problem = make_problem(seed=30, steps=steps)
  expected = np_prox_sg_l1(x0, np_grad, steps, lr, lam, momentum)
  got = run_jax(hspg_jax.prox_sg_l1(lr, lam, SPEC, momentum=momentum), x0, problem, steps)
  util.assert_same_elementwise_run(got, expected)
  zeros = sum(int(np.sum(got[-1][k] == 0)) for k in util.GROUPED)
  assert zeros >= 20, "the run should zero many coordinates"
  for k in util.UNGROUPED:
    assert np.all(got[-1][k] != 0)


def test_learning_rate_schedule_matches_numpy():
  steps, lam = 20, 0.5
  sched = optax.linear_schedule(0.2, 0.02, steps)
  x0, np_grad, problem = make_problem(seed=31, steps=steps)
  expected = np_prox_sg_l1(x0, np_grad, steps, lambda t: float(sched(t)), lam)
  util.assert_same_elementwise_run(run_jax(hspg_jax.prox_sg_l1(sched, lam, SPEC), x0, problem,
                                           steps), expected)


def test_l1_prox_single_step_exact_zeros():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  u = rng.normal(size=(6, 5)).astype(np.float32)
  b = rng.normal(size=(5,)).astype(np.float32)
  t = 0.6
  params, updates = {"w": jnp.asarray(x), "b": jnp.asarray(b)}, {"w": jnp.asarray(u),
                                                                 "b": jnp.zeros(5)}
  tx = hspg_jax.l1_prox({"w": 1, "b": None}, t)
  new, _ = tx.update(updates, tx.init(params), params)
  new = optax.apply_updates(params, new)
  trial = x.astype(np.float64) + u
  shrunk = np.abs(trial) <= t
  assert 3 < shrunk.sum() < shrunk.size
  # Exactly zero where |x + u| <= t: apply_updates lands on 0.0, not on round-off.
  np.testing.assert_array_equal(np.asarray(new["w"]) == 0, shrunk)
  np.testing.assert_allclose(new["w"], util.np_soft(trial, t), atol=1e-6)
  np.testing.assert_array_equal(new["b"], b)  # ungrouped: untouched


def test_bfloat16_zeros_are_exact():
  x = jnp.asarray([0.5, -0.3, 0.02, 1.0], jnp.bfloat16)
  u = jnp.asarray([-0.1, 0.1, 0.01, 0.0], jnp.bfloat16)
  tx = hspg_jax.l1_prox({"w": 0}, 0.25)
  new, _ = tx.update({"w": u}, tx.init({"w": x}), {"w": x})
  assert new["w"].dtype == jnp.bfloat16
  out = optax.apply_updates({"w": x}, new)["w"]
  np.testing.assert_array_equal(np.asarray(out, np.float32) == 0, [False, True, True, False])


def test_eager_equals_jit():
  util.check_eager_equals_jit(hspg_jax.prox_sg_l1(0.1, 0.5, SPEC, momentum=0.5))


def test_vmap():
  util.check_vmap(hspg_jax.prox_sg_l1(0.1, 0.5, SPEC, momentum=0.5))


def test_pmap_and_sharded_jit():
  util.check_data_parallel(lambda groups: hspg_jax.prox_sg_l1(0.05, 0.3, groups, momentum=0.9))


def test_inject_hyperparams():
  util.check_inject_hyperparams(
      hspg_jax.prox_sg_l1, dict(learning_rate=0.1, reg_strength=0.5, groups=SPEC),
      dict(learning_rate=0.05, reg_strength=2.0))


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-0.1, reg_strength=0.1), "learning_rate"),
    (dict(learning_rate=0.1, reg_strength=-1.0), "reg_strength"),
    (dict(learning_rate=0.1, reg_strength=0.1, momentum=1.5), "momentum"),
])
def test_bad_input(kwargs, name):
  with pytest.raises(ValueError, match=name):
    hspg_jax.prox_sg_l1(groups=SPEC, **kwargs)


def test_bad_l1_prox_input():
  with pytest.raises(ValueError, match="threshold"):
    hspg_jax.l1_prox(SPEC, -1.0)
  with pytest.raises(TypeError, match="l1_prox: groups"):
    hspg_jax.l1_prox({"w": "x"}, 1.0)
  tx = hspg_jax.l1_prox({"free": 0}, 0.1)
  with pytest.raises(ValueError, match="l1_prox needs params"):
    tx.update({"free": jnp.zeros(4)}, tx.init({"free": jnp.zeros(4)}))
