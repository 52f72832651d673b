"""Group reductions in low precision: float32 accumulation, exact zero groups, both range ends.

The truth is float64 NumPy on the same values; a group is zero only when every
entry is exactly zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from hspg_jax import GroupAxis

FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])


def one_step(tx, params, grads, steps=1):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(steps):
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  return params


def zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


# Tiny and huge entries per dtype: squares of the tiny ones underflow and
# squares of the huge ones overflow in the leaf dtype (and, for float32 and
# bfloat16, tiny squares underflow in float32 too).
ENDS = {
    "float16": (1e-4, 300.0),
    "bfloat16": (1e-30, 1e30),
    "float32": (1e-30, 1e30),
}


@FUSED
@pytest.mark.parametrize("dtype", list(ENDS))
def test_tiny_and_huge_groups_are_not_zero(dtype, fused):
  # Issue repro (float16 1e-4 row) and its analogues: with lambda = 0 and zero
  # gradients nothing may move, and no group is zero.
  tiny, huge = ENDS[dtype]
  w = jnp.asarray([[tiny, tiny], [1.0, 1.0], [huge, huge], [0.0, 0.0]], dtype)
  params = {"w": w}
  for start in (0, 5):
    tx = hspg_jax.hspg(0.1, 0.0, {"w": 0}, half_space_start=start, momentum=0.9, fused=fused)
    out = one_step(tx, params, zeros_like(params), steps=2)
    np.testing.assert_array_equal(np.asarray(out["w"], np.float64), np.asarray(w, np.float64))
    assert out["w"].dtype == w.dtype
  masks = hspg_jax.zero_group_masks(params, {"w": 0})["w"]
  np.testing.assert_array_equal(masks, [False, False, False, True])
  assert float(hspg_jax.group_sparsity(params, {"w": 0})) == 0.25


@pytest.mark.parametrize("dtype", list(ENDS))
def test_group_norms_accurate_at_both_ends(dtype):
  tiny, huge = ENDS[dtype]
  w = jnp.asarray([[tiny, tiny, 0.0], [huge, -huge, huge], [0.0, 0.0, 0.0],
                   [tiny, 0.0, 0.0]], dtype)
  exact = np.linalg.norm(np.asarray(w, np.float64), axis=1)
  norms = hspg_jax.group_norms({"w": w}, {"w": 0})["w"]
  assert norms.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(norms, np.float64), exact, rtol=1e-6)
  np.testing.assert_allclose(float(hspg_jax.omega({"w": w}, {"w": 0})), exact.sum(), rtol=1e-6)


@FUSED
def test_float16_regulariser_does_not_vanish_for_large_entries(fused):
  # ||(300, 400)|| = 500; 300**2 overflows float16. One subgradient step with
  # lr * lambda = 50 scales the row by 1 - 50 / 500.
  params = {"w": jnp.asarray([[300.0, 400.0], [3.0, 4.0]], jnp.float16)}
  tx = hspg_jax.hspg(1.0, 50.0, {"w": 0}, half_space_start=10, fused=fused)
  out = one_step(tx, params, zeros_like(params))
  np.testing.assert_allclose(np.asarray(out["w"][0], np.float64), [270.0, 360.0], rtol=1e-3)


def test_composable_pieces_and_prox_in_float16():
  params = {"w": jnp.asarray([[300.0, 400.0], [1e-4, 1e-4]], jnp.float16)}
  g = zeros_like(params)
  sub = hspg_jax.add_group_lasso_subgradient({"w": 0}, 50.0)
  u, _ = sub.update(g, sub.init(params), params)
  np.testing.assert_allclose(np.asarray(u["w"][0], np.float64), [30.0, 40.0], rtol=1e-3)
  assert np.all(np.asarray(u["w"][1], np.float64) > 0)  # the tiny row's norm is not 0
  proj = hspg_jax.half_space_projection({"w": 0})
  u, _ = proj.update(g, proj.init(params), params)
  np.testing.assert_array_equal(np.asarray(u["w"], np.float64), 0.0)  # nothing projected
  out = hspg_jax.group_soft_threshold(params, {"w": 0}, 250.0)
  np.testing.assert_allclose(np.asarray(out["w"][0], np.float64), [150.0, 200.0], rtol=1e-3)
  tx = hspg_jax.prox_sg(1.0, 250.0, {"w": 0})
  out = one_step(tx, params, g)
  np.testing.assert_allclose(np.asarray(out["w"][0], np.float64), [150.0, 200.0], rtol=1e-3)


@FUSED
def test_mixed_precision_family_matches_float64(fused):
  # One family over a float32 kernel, a float16 bias and a bfloat16 scale, with
  # a tiny group, a huge-for-float16 group and an ordinary one.
  kernel = np.array([[1e-30, 2.0, 0.5], [1e-30, 1.0, -0.5]], np.float32)  # (in=2, out=3)
  bias = np.array([0.0, 300.0, 0.25], np.float16)
  scale = np.array([0.0, 1.0, 1.0], np.float32)
  params = {"k": jnp.asarray(kernel), "b": jnp.asarray(bias),
            "s": jnp.asarray(scale, jnp.bfloat16)}
  spec = {"k": GroupAxis(1, "c"), "b": GroupAxis(0, "c"), "s": GroupAxis(0, "c")}
  lr, lam = 0.5, 2.0
  tx = hspg_jax.hspg(lr, lam, spec, half_space_start=10, fused=fused)
  out = one_step(tx, params, zeros_like(params))
  mat = np.concatenate([kernel.astype(np.float64), bias[None].astype(np.float64),
                        np.asarray(params["s"], np.float64)[None]], axis=0)  # (rows, groups)
  norms = np.linalg.norm(mat, axis=0)
  factor = 1 - lr * lam / (norms + 1e-6)
  expected = mat * factor
  np.testing.assert_allclose(np.asarray(out["k"], np.float64)[:, 1:], expected[:2, 1:], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out["b"], np.float64), expected[2], rtol=2e-3)
  np.testing.assert_allclose(np.asarray(out["s"], np.float64), expected[3], rtol=1e-2)
  # The tiny group: its norm is far below the 1e-6 guard, so the step is
  # x * (1 - lr * lam / 1e-6) and the group stays nonzero in the first stage.
  np.testing.assert_allclose(np.asarray(out["k"][:, 0], np.float64),
                             kernel[:, 0] * (1 - lr * lam / (norms[0] + 1e-6)), rtol=1e-5)
  norms_jax = hspg_jax.group_norms(params, spec)["c"]
  np.testing.assert_allclose(np.asarray(norms_jax, np.float64), norms, rtol=1e-2)
  assert not bool(hspg_jax.zero_group_masks(params, spec)["c"].any())


@FUSED
def test_single_tiny_entry_keeps_a_group_alive(fused):
  params = {"w": jnp.asarray([[0.0, 0.0, 1e-35], [0.0, 0.0, 0.0]], jnp.float32)}
  tx = hspg_jax.hspg(0.1, 0.0, {"w": 0}, half_space_start=0, fused=fused)
  out = one_step(tx, params, zeros_like(params), steps=3)
  assert float(out["w"][0, 2]) == pytest.approx(1e-35, rel=1e-6)
  assert int(hspg_jax.num_zero_groups(out, {"w": 0})) == 1


@FUSED
def test_half_space_step_on_groups_whose_squares_underflow(fused):
  # float32 squares of 1e-30 underflow. Rows: ordinary, tiny with zero gradient,
  # projected, zero with a gradient, tiny moving towards -x, tiny moving away.
  w = np.asarray([[1.0, 1.0], [1e-30, 0.0], [0.5, 0.5], [0.0, 0.0], [1e-30, 1e-30],
                  [1e-30, 1e-30]], np.float32)
  grads = np.asarray([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0], [1.0, 1.0], [1.0, 1.0],
                      [-1.0, -1.0]], np.float32)
  tx = hspg_jax.hspg(1.0, 0.0, {"w": 0}, half_space_start=0, fused=fused)
  out = one_step(tx, {"w": jnp.asarray(w)}, {"w": jnp.asarray(grads)})["w"]
  expected = np.asarray([[1.0, 1.0], [1e-30, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0],
                         [1.0, 1.0]], np.float32)
  np.testing.assert_array_equal(out, expected)
