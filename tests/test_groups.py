"""Group specs: resolution, validation errors, rules, and the metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from hspg_jax import GroupAxis, GroupRules


def params_tree():
  rng = np.random.default_rng(0)
  return {
      "block1": {
          "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
          "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
      },
      "block2": {
          "conv": {"kernel": jnp.asarray(rng.normal(size=(1, 1, 4, 5)), jnp.float32)},
          "bn": {"scale": jnp.ones(5), "bias": jnp.full(5, 0.5)},
      },
      "head": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
               "bias": jnp.zeros(3)},
  }


RULES = GroupRules([
    (r"(block\d)/conv/kernel", GroupAxis(-1, r"\1")),
    (r"(block\d)/bn/(scale|bias)", GroupAxis(0, r"\1")),
])


def explicit_spec():
  return {
      "block1": {"conv": {"kernel": GroupAxis(-1, "block1")},
                 "bn": {"scale": GroupAxis(0, "block1"), "bias": GroupAxis(0, "block1")}},
      "block2": {"conv": {"kernel": GroupAxis(3, "block2")},
                 "bn": {"scale": GroupAxis(0, "block2"), "bias": GroupAxis(0, "block2")}},
      "head": {"kernel": None, "bias": None},
  }


def test_rules_and_explicit_spec_resolve_to_the_same_groups():
  params = params_tree()
  a = hspg_jax.resolve_groups(params, RULES)
  b = hspg_jax.resolve_groups(params, explicit_spec())
  assert a == b
  assert [(f.name, f.num_groups, f.group_size) for f in a.families] == [
      ("block1", 4, 3 * 3 * 2 + 2), ("block2", 5, 4 + 2)]
  table = a.table()
  assert "block1/conv/kernel[3]" in table and "2 families, 9 groups" in table


def test_int_leaves_make_one_family_per_leaf():
  params = {"a": jnp.zeros((4, 3)), "b": jnp.zeros((2, 5)), "c": jnp.zeros(3)}
  s = hspg_jax.resolve_groups(params, {"a": 0, "b": -1, "c": None})
  assert [(f.name, f.num_groups) for f in s.families] == [("a", 4), ("b", 5)]


def test_metrics_match_numpy():
  params = params_tree()
  params["block2"]["conv"]["kernel"] = params["block2"]["conv"]["kernel"].at[..., 1].set(0.0)
  params["block2"]["bn"]["scale"] = params["block2"]["bn"]["scale"].at[1].set(0.0)
  params["block2"]["bn"]["bias"] = params["block2"]["bn"]["bias"].at[1].set(0.0)
  norms = hspg_jax.group_norms(params, RULES)
  p = jax.tree.map(np.asarray, params)
  for blk in ("block1", "block2"):
    k = p[blk]["conv"]["kernel"]
    mat = np.concatenate([k.reshape(-1, k.shape[-1]).T, p[blk]["bn"]["scale"][:, None],
                          p[blk]["bn"]["bias"][:, None]], axis=1)
    np.testing.assert_allclose(norms[blk], np.linalg.norm(mat, axis=1), rtol=1e-6)
  expected_omega = sum(float(np.sum(v)) for v in norms.values())
  np.testing.assert_allclose(hspg_jax.omega(params, RULES), expected_omega, rtol=1e-6)
  assert int(hspg_jax.num_zero_groups(params, RULES)) == 1
  np.testing.assert_allclose(hspg_jax.group_sparsity(params, RULES), 1 / 9)
  masks = hspg_jax.group_mask_tree(params, RULES)
  assert masks["block2"]["conv"]["kernel"].shape == (1, 1, 1, 5)
  assert masks["block2"]["conv"]["kernel"][..., 1].all()
  assert not masks["head"]["kernel"].any()


def test_spec_structure_mismatch_names_the_paths():
  params = params_tree()
  spec = explicit_spec()
  del spec["head"]["bias"]
  with pytest.raises(ValueError, match=r"params without a spec leaf: \['head/bias'\]"):
    hspg_jax.resolve_groups(params, spec)
  spec = explicit_spec()
  spec["head"]["extra"] = 0
  with pytest.raises(ValueError, match=r"spec paths not in params: +\['head/extra'\]"):
    hspg_jax.resolve_groups(params, spec)


def test_none_covers_a_whole_subtree():
  params = params_tree()
  spec = explicit_spec()
  spec["head"] = None
  assert hspg_jax.resolve_groups(params, spec) == hspg_jax.resolve_groups(params, explicit_spec())


def test_axis_out_of_range_names_the_path():
  params = params_tree()
  spec = explicit_spec()
  spec["block1"]["conv"]["kernel"] = GroupAxis(4, "block1")
  with pytest.raises(ValueError, match=r"block1/conv/kernel.*axis 4 out of range"):
    hspg_jax.resolve_groups(params, spec)


def test_family_count_mismatch_names_the_paths():
  params = params_tree()
  spec = explicit_spec()
  spec["block2"]["bn"]["scale"] = GroupAxis(0, "block1")  # 5 groups joining a family of 4
  with pytest.raises(ValueError, match=r"family 'block1'.*block2/bn/scale"):
    hspg_jax.resolve_groups(params, spec)


def test_bad_spec_leaf_type_names_the_path():
  params = {"w": jnp.zeros((3, 3))}
  with pytest.raises(ValueError, match=r"'w'.*int axis or GroupAxis"):
    hspg_jax.resolve_groups(params, {"w": "rows"})


def test_scalar_leaf_cannot_be_grouped():
  with pytest.raises(ValueError, match="'s'.*scalar"):
    hspg_jax.resolve_groups({"s": jnp.zeros(())}, {"s": 0})


def test_bad_rules_are_rejected_at_construction():
  with pytest.raises(ValueError, match="bad regex"):
    GroupRules([("(unclosed", 0)])
  with pytest.raises(ValueError, match="spec leaf"):
    GroupRules([("w", "rows")])


def test_optimizer_construction_errors():
  spec = {"w": 0}
  with pytest.raises(ValueError, match="learning_rate"):
    hspg_jax.hspg(-0.1, 0.1, spec)
  with pytest.raises(ValueError, match="reg_strength"):
    hspg_jax.hspg(0.1, -1.0, spec)
  with pytest.raises(ValueError, match="reg_strength.*at step 0"):
    hspg_jax.hspg(0.1, lambda c: -1.0 + 0.0 * c, spec)
  with pytest.raises(ValueError, match=r"epsilon must be in \[0.0, 1.0\)"):
    hspg_jax.hspg(0.1, 0.1, spec, epsilon=1.0)
  with pytest.raises(ValueError, match="epsilon"):
    hspg_jax.half_space_projection(spec, epsilon=-0.1)
  with pytest.raises(ValueError, match="upper_group_sparsity"):
    hspg_jax.hspg(0.1, 0.1, spec, upper_group_sparsity=1.5)
  with pytest.raises(ValueError, match="first_stage"):
    hspg_jax.hspg(0.1, 0.1, spec, first_stage="adam")
  with pytest.raises(ValueError, match="learning_rate"):
    hspg_jax.prox_sg(-1.0, 0.1, spec)


def test_epsilon_per_family_mapping_must_cover_every_family():
  params = params_tree()
  tx = hspg_jax.hspg(0.1, 0.1, RULES, epsilon={"block1": 0.5})
  with pytest.raises(ValueError, match="no key matches group family 'block2'"):
    tx.init(params)
  tx = hspg_jax.hspg(0.1, 0.1, RULES, epsilon={"block1": 0.5, ".*": 0.0})
  tx.init(params)


def test_projection_without_params_is_a_clear_error():
  params = {"w": jnp.ones((2, 2))}
  for tx in (hspg_jax.hspg(0.1, 0.1, {"w": 0}), hspg_jax.prox_sg(0.1, 0.1, {"w": 0})):
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs params"):
      tx.update(params, state)


def test_spec_errors_surface_at_init_and_under_jit():
  params = {"w": jnp.ones((2, 2))}
  tx = hspg_jax.hspg(0.1, 0.1, {"w": 2})
  with pytest.raises(ValueError, match="'w'.*axis 2 out of range"):
    tx.init(params)
  good = hspg_jax.hspg(0.1, 0.1, {"w": 0})
  state = good.init(params)
  bad = hspg_jax.hspg(0.1, 0.1, {"w": 2})
  with pytest.raises(ValueError, match="'w'.*axis 2 out of range"):
    jax.jit(bad.update)(params, state, params)


def test_group_soft_threshold_pure_function():
  x = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]]), "b": jnp.array([1.0, -1.0])}
  out = hspg_jax.group_soft_threshold(x, {"w": 0, "b": None}, 1.0)
  np.testing.assert_allclose(out["w"], [[2.4, 3.2], [0.0, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(out["b"], x["b"])
  np.testing.assert_allclose(hspg_jax.l1_soft_threshold(jnp.array([-2.0, 0.5, 3.0]), 1.0),
                             [-1.0, 0.0, 2.0])


def conv_bn(nnx):
  """An NNX conv (4 output channels, no bias) followed by a BatchNorm."""

  class ConvBN(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), use_bias=False, rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)

  return ConvBN(nnx.Rngs(0))


def test_works_on_flax_nnx_state():
  nnx = pytest.importorskip("flax.nnx")
  params = nnx.state(conv_bn(nnx), nnx.Param)
  rules = GroupRules([(r"conv/kernel", GroupAxis(-1, "c")), (r"bn/(scale|bias)", GroupAxis(0, "c"))])
  structure = hspg_jax.resolve_groups(params, rules)
  assert [(f.name, f.num_groups, f.group_size) for f in structure.families] == [("c", 4, 20)]
  tx = hspg_jax.hspg(0.1, 0.1, rules)
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert isinstance(optax.apply_updates(params, updates), nnx.State)
  # A plain-dict spec, and a spec whose leaves sit in Param boxes (as a spec
  # derived from the model is), both match by path.
  plain = {"conv": {"kernel": GroupAxis(-1, "c")},
           "bn": {"scale": GroupAxis(0, "c"), "bias": GroupAxis(0, "c")}}
  boxed = jax.tree.map(lambda _: None, params)
  boxed["conv"]["kernel"].set_value(GroupAxis(-1, "c"))
  boxed["bn"]["scale"].set_value(GroupAxis(0, "c"))
  boxed["bn"]["bias"].set_value(GroupAxis(0, "c"))
  for spec in (plain, boxed):
    assert hspg_jax.resolve_groups(params, spec) == structure


def test_nnx_optimizer_with_a_boxed_spec():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  spec = jax.tree.map(lambda _: None, nnx.state(model, nnx.Param))  # Param boxes
  spec["kernel"].set_value(GroupAxis(1, "out"))
  spec["bias"].set_value(GroupAxis(0, "out"))
  # nnx.Optimizer hands Optax pure arrays, not Param boxes.
  optimizer = nnx.Optimizer(model, hspg_jax.hspg(0.5, 5.0, spec), wrt=nnx.Param)
  x = jnp.ones((2, 3))

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2) * 0.0)(model))

  for _ in range(5):
    step(model, optimizer)
  # f is flat (zero gradient), so the group lasso drives every group to zero.
  assert float(hspg_jax.group_sparsity(nnx.state(model, nnx.Param), spec)) == 1.0
