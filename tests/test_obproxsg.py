"""OBProx-SG (orthant_projection, obprox_sg) against a NumPy restatement of its equations."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from tests import baselines_util as util
from tests.test_hspg import SPEC, make_problem, run_jax


def np_obprox_sg(x0, grad_fn, steps, lr, lam, n_p, n_o=None, momentum=None):
  """OBProx-SG as in the reference's step(): Prox-SG steps while
  ``t % (N_P + N_O) < N_P`` (``N_O = inf``: only the first N_P), else orthant steps."""
  x = {k: np.array(v, np.float64) for k, v in x0.items()}
  buf, history = None, []
  for t in range(steps):
    prox = t < n_p if n_o is None else t % (n_p + n_o) < n_p
    g = grad_fn(x, t)
    zeta = {k: np.sign(x[k]) for k in util.GROUPED}
    d = dict(g)
    if not prox:
      for k in util.GROUPED:
        d[k] = np.where(zeta[k] != 0, g[k] + lam * zeta[k], 0.0)
    buf, d = util.np_heavy_ball(buf, d, momentum)
    trial = {k: x[k] - lr * d[k] for k in x}
    for k in util.GROUPED:
      if prox:
        trial[k] = util.np_soft(trial[k], lr * lam)
      else:
        trial[k] = np.where(trial[k] * zeta[k] > 0, trial[k], 0.0)
    x = trial
    history.append({k: v.copy() for k, v in x.items()})
  return history


SCHEDULES = {"plus": dict(n_p=6, n_o=None), "alternate": dict(n_p=4, n_o=3),
             "orthant_only": dict(n_p=0, n_o=None)}


@pytest.mark.parametrize("momentum", [None, 0.5])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_matches_numpy_restatement(schedule, momentum):
  steps, lr, lam = 24, 0.1, 0.5
  n_p, n_o = SCHEDULES[schedule]["n_p"], SCHEDULES[schedule]["n_o"]
  x0, np_grad, problem = make_problem(seed=40 + list(SCHEDULES).index(schedule), steps=steps)
  expected = np_obprox_sg(x0, np_grad, steps, lr, lam, n_p, n_o, momentum)
  tx = hspg_jax.obprox_sg(lr, lam, SPEC, prox_steps=n_p, orthant_steps=n_o, momentum=momentum)
  got = run_jax(tx, x0, problem, steps)
  util.assert_same_elementwise_run(got, expected)
  assert sum(int(np.sum(got[-1][k] == 0)) for k in util.GROUPED) >= 20


def test_orthant_steps_keep_zeros_and_signs():
  steps, n_p = 30, 5
  x0, _, problem = make_problem(seed=45, steps=steps, noise=1.0)
  hist = run_jax(hspg_jax.obprox_sg(0.2, 0.3, SPEC, prox_steps=n_p), x0, problem, steps)
  flips = 0
  for before, after in zip(hist[n_p - 1:], hist[n_p:]):
    for k in util.GROUPED:
      assert np.all(after[k][before[k] == 0] == 0), "a zero came back to life"
      assert np.all(np.sign(after[k]) * np.sign(before[k]) >= 0), "a sign flipped"
      flips += int(np.sum((after[k] == 0) & (before[k] != 0)))
    for k in util.UNGROUPED:
      flips += int(np.sum(np.sign(after[k]) * np.sign(before[k]) < 0))
  assert flips > 5, "the orthant steps should zero coordinates and move free leaves"


def test_orthant_projection_is_the_face_projection():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  x[0, :3] = 0.0
  u = rng.normal(size=(4, 6)).astype(np.float32)
  b = rng.normal(size=(6,)).astype(np.float32)
  params, step = {"w": jnp.asarray(x), "b": jnp.asarray(b)}, {"w": jnp.asarray(u),
                                                              "b": jnp.asarray(u[0])}
  tx = hspg_jax.orthant_projection({"w": 1, "b": None}, start_step=1)
  state = tx.init(params)
  first, state = tx.update(step, state, params)  # before start_step: unchanged
  for k in first:
    np.testing.assert_array_equal(first[k], step[k])
  second, _ = tx.update(step, state, params)
  new = optax.apply_updates(params, second)
  trial = x.astype(np.float64) + u
  kept = trial * np.sign(x) > 0
  assert 3 < kept.sum() < kept.size - 3
  np.testing.assert_array_equal(np.asarray(new["w"]) == 0, ~kept)
  np.testing.assert_allclose(new["w"], np.where(kept, trial, 0.0), atol=1e-6)
  np.testing.assert_allclose(new["b"], b + u[0])


def test_eager_equals_jit():
  util.check_eager_equals_jit(hspg_jax.obprox_sg(0.1, 0.5, SPEC, prox_steps=3, orthant_steps=2,
                                                 momentum=0.5))


def test_vmap():
  util.check_vmap(hspg_jax.obprox_sg(0.1, 0.5, SPEC, prox_steps=3, orthant_steps=2))


def test_pmap_and_sharded_jit():
  util.check_data_parallel(lambda groups: hspg_jax.obprox_sg(0.05, 0.3, groups, prox_steps=10,
                                                             momentum=0.9))


def test_inject_hyperparams():
  util.check_inject_hyperparams(
      hspg_jax.obprox_sg, dict(learning_rate=0.1, reg_strength=0.5, groups=SPEC, prox_steps=3,
                               orthant_steps=2),
      dict(learning_rate=0.05, reg_strength=2.0))


@pytest.mark.parametrize("kwargs, name", [
    (dict(learning_rate=-0.1, prox_steps=1), "learning_rate"),
    (dict(reg_strength=-0.1, prox_steps=1), "reg_strength"),
    (dict(prox_steps=-1), "prox_steps"),
    (dict(prox_steps=2, orthant_steps=-3), "orthant_steps"),
    (dict(prox_steps=0, orthant_steps=0), "prox_steps \\+ orthant_steps"),
])
def test_bad_input(kwargs, name):
  kwargs = {"learning_rate": 0.1, "reg_strength": 0.1, **kwargs}
  with pytest.raises(ValueError, match=name):
    hspg_jax.obprox_sg(groups=SPEC, **kwargs)


def test_bad_orthant_projection_input():
  with pytest.raises(ValueError, match="start_step"):
    hspg_jax.orthant_projection(SPEC, start_step=-2)
  with pytest.raises(TypeError, match="prox_steps"):
    hspg_jax.obprox_sg(0.1, 0.1, SPEC, prox_steps=2.5)
