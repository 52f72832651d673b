"""HSPG gives the same numbers on one device, under pmap, sharded jit and shard_map.

Uses the two fake CPU devices set up in conftest.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import hspg_jax

STEPS = 40
GROUPS = {"W": 0, "b": None}

pytestmark = pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")


def problem():
  rng = np.random.default_rng(0)
  n, d, k = 64, 10, 3
  W_true = rng.normal(size=(d, k)).astype(np.float32)
  W_true[::2] *= 0.01
  X = rng.normal(size=(STEPS, n, d)).astype(np.float32)
  Y = X @ W_true + 0.1 * rng.normal(size=(STEPS, n, k)).astype(np.float32)
  params = {"W": jnp.asarray(rng.normal(size=(d, k)), jnp.float32), "b": jnp.zeros(k)}
  return params, X, Y


def local_loss(params, x, y):
  return 0.5 * jnp.mean(jnp.sum((x @ params["W"] + params["b"] - y) ** 2, axis=-1))


def make_tx(fused=True):
  return hspg_jax.hspg(0.05, 0.3, GROUPS, half_space_start=10, epsilon=0.5, momentum=0.9,
                       fused=fused)


def run_single(tx, params, X, Y):
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(local_loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for t in range(STEPS):
    params, state = step(params, state, X[t], Y[t])
  return params


def run_pmap(tx, params, X, Y):
  state = tx.init(params)
  replicate = lambda tree: jax.tree.map(lambda a: jnp.stack([a, a]), tree)  # noqa: E731

  def step(params, state, x, y):
    grads = jax.lax.pmean(jax.grad(local_loss)(params, x, y), "data")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  pstep = jax.pmap(step, axis_name="data")
  params, state = replicate(params), replicate(state)
  for t in range(STEPS):
    params, state = pstep(params, state, X[t].reshape(2, -1, X.shape[-1]),
                          Y[t].reshape(2, -1, Y.shape[-1]))
  # Replicas must agree exactly with each other.
  for leaf in jax.tree.leaves(params):
    np.testing.assert_array_equal(leaf[0], leaf[1])
  return jax.tree.map(lambda a: a[0], params)


def run_sharded_jit(tx, params, X, Y):
  mesh = jax.make_mesh((2,), ("data",))
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(params, replicated)
  state = jax.device_put(tx.init(params), replicated)

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(local_loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for t in range(STEPS):
    params, state = step(params, state, jax.device_put(X[t], batch), jax.device_put(Y[t], batch))
  assert params["W"].sharding.is_fully_replicated
  return params


def run_shard_map(tx, params, X, Y):
  mesh = jax.make_mesh((2,), ("data",))

  def step(params, state, x, y):
    # Differentiate the mean of the per-shard losses: with check_vma the grads of
    # replicated params come out already reduced over the data axis.
    loss = lambda p: jax.lax.pmean(local_loss(p, x, y), "data")  # noqa: E731
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                               out_specs=(P(), P())))
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(params, replicated)
  state = jax.device_put(tx.init(params), replicated)
  for t in range(STEPS):
    params, state = step(params, state, jax.device_put(X[t], batch), jax.device_put(Y[t], batch))
  return params


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
@pytest.mark.parametrize("runner", [run_pmap, run_sharded_jit, run_shard_map])
def test_data_parallel_matches_single_device(runner, fused):
  params, X, Y = problem()
  single = run_single(make_tx(fused), params, X, Y)
  parallel = runner(make_tx(fused), params, X, Y)
  zeros_single = np.linalg.norm(np.asarray(single["W"]), axis=1) == 0
  zeros_parallel = np.linalg.norm(np.asarray(parallel["W"]), axis=1) == 0
  assert zeros_single.sum() >= 2, "the run should zero some groups"
  np.testing.assert_array_equal(zeros_parallel, zeros_single)
  for k in single:
    np.testing.assert_allclose(parallel[k], single[k], atol=1e-5, rtol=1e-5)
