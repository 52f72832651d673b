"""The stage switch: momentum restarts as in the reference HSPG; restart_at for other directions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax

FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])


def run(tx, params, grads, steps):
  state = tx.init(params)
  for _ in range(steps):
    u, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, u)
  return params


@FUSED
@pytest.mark.parametrize("restart, expected", [(True, 0.8), (False, 0.71)])
def test_issue_repro_momentum_at_the_switch(fused, restart, expected):
  # The reference keeps one buffer per stage: step 0 (first stage) buf = 1,
  # x = 0.9; step 1 (half-space stage) starts a new buf = 1, x = 0.8. Carrying
  # the buffer over gives buf = 0.9 + 1 and x = 0.9 - 0.19 = 0.71.
  params = {"w": jnp.ones((2, 3)), "head": jnp.ones(3)}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = hspg_jax.hspg(0.1, 0.0, {"w": 0, "head": None}, half_space_start=1, momentum=0.9,
                     restart_momentum=restart, fused=fused)
  out = run(tx, params, grads, 2)
  np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
  np.testing.assert_allclose(out["head"], expected, rtol=1e-6)


@FUSED
def test_restart_happens_once_at_half_space_start(fused):
  # Constant gradient 1: the buffer is 1, 1.9, 2.71 (first stage), then 1, 1.9, ...
  params = {"w": jnp.full((1, 4), 10.0)}
  grads = {"w": jnp.ones((1, 4))}
  tx = hspg_jax.hspg(0.1, 0.0, {"w": 0}, half_space_start=3, momentum=0.9, fused=fused)
  bufs = [1.0, 1.9, 2.71, 1.0, 1.9, 2.71]
  expected = 10.0 - 0.1 * np.cumsum(bufs)
  state = tx.init(params)
  for t in range(len(bufs)):
    u, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, u)
    np.testing.assert_allclose(params["w"], expected[t], rtol=1e-6, err_msg=f"step {t}")


def test_restart_at_gives_adam_a_fresh_start():
  # At the restart step the wrapped Adam must behave exactly like a new Adam.
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  grads = [{"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)} for _ in range(5)]
  wrapped = hspg_jax.restart_at(optax.scale_by_adam(), step=3)
  plain = optax.scale_by_adam()
  state, plain_state = wrapped.init(params), plain.init(params)
  for t, g in enumerate(grads):
    u, state = wrapped.update(g, state, params)
    v, plain_state = plain.update(g, plain_state, params)
    if t == 3:
      fresh = optax.scale_by_adam()
      expected, _ = fresh.update(g, fresh.init(params), params)
      np.testing.assert_allclose(u["w"], expected["w"], rtol=1e-6)
      assert not np.allclose(u["w"], v["w"], rtol=1e-3)  # the restart changed something
    elif t < 3:
      np.testing.assert_allclose(u["w"], v["w"], rtol=1e-6)


def test_restart_at_in_the_composable_adam_chain_keeps_lr_schedule_counting():
  params = {"w": jnp.ones((2, 2))}
  grads = {"w": jnp.ones((2, 2))}
  sched = lambda c: 0.1 * (c + 1)  # noqa: E731  # lr 0.1, 0.2, 0.3, ...
  tx = optax.chain(
      hspg_jax.add_group_lasso_subgradient({"w": 0}, 0.0),
      hspg_jax.restart_at(optax.scale_by_adam(), 2),
      optax.scale_by_learning_rate(sched),
      hspg_jax.half_space_projection({"w": 0}, start_step=2),
  )
  state = tx.init(params)
  steps = []
  for _ in range(4):
    u, state = tx.update(grads, state, params)
    steps.append(float(u["w"][0, 0]))
  # A constant gradient gives Adam's normalised step 1 (up to eps) every step,
  # fresh or not; the schedule must not restart with it.
  np.testing.assert_allclose(steps, [-0.1, -0.2, -0.3, -0.4], rtol=1e-4)


def test_restart_at_rejects_a_negative_step():
  with pytest.raises(ValueError, match="step must be >= 0"):
    hspg_jax.restart_at(optax.trace(0.9), -1)
