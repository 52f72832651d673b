"""Hyperparameter checks and the mistakes a new user makes, each named in the user's terms."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from hspg_jax import GroupAxis, GroupRules
from tests import np_reference as ref
from tests.test_groups import conv_bn
from tests.test_hspg import FAMILIES, SPEC, assert_same_run, make_problem, run_jax

FUSED = pytest.mark.parametrize("fused", [True, False], ids=["fused", "chain"])
EPS_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


@FUSED
def test_epsilon_schedule_matches_numpy(fused):
  steps, n_p, lr, lam = 50, 10, 0.1, 0.4
  sched = optax.linear_schedule(0.0, 0.9, steps)
  x0, np_grad, jax_grad = make_problem(seed=12, steps=steps)
  eps = {name: (lambda t: float(sched(t))) for name, _ in FAMILIES}
  np_hist = ref.hspg_run(x0, FAMILIES, np_grad, steps, lr, lam, eps, n_p, momentum=0.5)
  tx = hspg_jax.hspg(lr, lam, SPEC, half_space_start=n_p, epsilon=sched, momentum=0.5,
                     fused=fused)
  assert_same_run(run_jax(tx, x0, jax_grad, steps), np_hist)
  # Per-family mapping with a schedule value.
  eps_map = {"c1": sched, ".*": 0.2}
  eps = {"c1": eps["c1"], "d": 0.2, "rows": 0.2}
  np_hist = ref.hspg_run(x0, FAMILIES, np_grad, steps, lr, lam, eps, n_p)
  tx = hspg_jax.hspg(lr, lam, SPEC, half_space_start=n_p, epsilon=eps_map, fused=fused)
  assert_same_run(run_jax(tx, x0, jax_grad, steps), np_hist)


@FUSED
def test_epsilon_out_of_range_later_is_clipped(fused):
  steps, n_p = 30, 5
  x0, _, jax_grad = make_problem(seed=13, steps=steps)
  wild = lambda c: 3.0 * c / steps  # noqa: E731  # passes the step-0 check, exceeds 1 later
  tame = lambda c: jnp.minimum(3.0 * c / steps, EPS_MAX)  # noqa: E731
  a = run_jax(hspg_jax.hspg(0.1, 0.4, SPEC, half_space_start=n_p, epsilon=wild, fused=fused),
              x0, jax_grad, steps)
  b = run_jax(hspg_jax.hspg(0.1, 0.4, SPEC, half_space_start=n_p, epsilon=tame, fused=fused),
              x0, jax_grad, steps)
  assert_same_run(a, b, atol=0.0)


@FUSED
def test_injected_epsilon_is_checked_eagerly_and_clipped_when_traced(fused):
  x0, _, jax_grad = make_problem(seed=14, steps=3)
  params = {k: jnp.asarray(v) for k, v in x0.items()}
  grads = jax_grad(params, 0)
  make = optax.inject_hyperparams(hspg_jax.hspg)
  tx = make(learning_rate=0.5, reg_strength=0.4, groups=SPEC, epsilon=0.2, fused=fused)
  state = tx.init(params)
  state.hyperparams["epsilon"] = jnp.asarray(1.5)
  with pytest.raises(ValueError, match=r"epsilon must be in \[0.0, 1.0\)"):
    tx.update(grads, state, params)  # eager: the value is concrete and checked
  u, _ = jax.jit(tx.update)(grads, state, params)  # traced: clipped below 1
  ref_tx = make(learning_rate=0.5, reg_strength=0.4, groups=SPEC, epsilon=EPS_MAX, fused=fused)
  v, _ = jax.jit(ref_tx.update)(grads, ref_tx.init(params), params)
  for k in u:
    np.testing.assert_array_equal(u[k], v[k])
  with pytest.raises(ValueError, match="epsilon"):
    hspg_jax.hspg(0.1, 0.1, SPEC, epsilon=lambda c: 2.0 + 0.0 * c)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_bool_leaf_in_a_group_is_an_error(dtype):
  params = {"w": jnp.ones((3, 2)), "steps": jnp.zeros((3,), dtype)}
  with pytest.raises(ValueError, match=r"'steps' has dtype (int32|bool).*floating-point"):
    hspg_jax.resolve_groups(params, {"w": GroupAxis(0, "f"), "steps": GroupAxis(0, "f")})
  hspg_jax.resolve_groups(params, {"w": 0, "steps": None})  # ungrouped: fine


def test_family_of_empty_members_is_an_error():
  params = {"a": jnp.zeros((4, 0)), "b": jnp.zeros((0, 4))}
  with pytest.raises(ValueError, match=r"family 'f'.*'a' \(4, 0\).*'b' \(0, 4\)"):
    hspg_jax.resolve_groups(params, {"a": GroupAxis(0, "f"), "b": GroupAxis(1, "f")})
  # An empty member beside a nonempty one is fine.
  params["c"] = jnp.ones((4, 2))
  spec = {"a": GroupAxis(0, "f"), "b": GroupAxis(1, "f"), "c": GroupAxis(0, "f")}
  assert hspg_jax.resolve_groups(params, spec).families[0].group_size == 2


def test_rules_that_match_nothing():
  params = {"block": {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}}, "head": jnp.ones((4, 2))}
  rules = GroupRules([(r"conv/kernel", GroupAxis(-1, "c"))])  # forgot the leading ".*/"
  with pytest.warns(UserWarning, match=r"rule 0 \('conv/kernel'\) matches no parameter"):
    with pytest.raises(ValueError, match=r"matched no parameter.*'block/conv/kernel', 'head'"):
      hspg_jax.hspg(0.1, 0.1, rules).init(params)
  # One good rule and one dead one: a warning naming the dead one, no error.
  rules = GroupRules([(r".*/conv/kernel", GroupAxis(-1, "c")), (r".*/bn/scale", 0)])
  with pytest.warns(UserWarning, match=re.escape("rule 1 ('.*/bn/scale')")):
    assert hspg_jax.resolve_groups(params, rules).num_groups == 4
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    hspg_jax.resolve_groups(params, GroupRules([(r".*/conv/kernel", GroupAxis(-1, "c"))]))


def test_step_arguments_are_checked():
  with pytest.raises(ValueError, match="half_space_start must be >= 0, got -5"):
    hspg_jax.hspg(0.1, 0.1, {"w": 0}, half_space_start=-5)
  with pytest.raises(TypeError, match="half_space_start must be an int step, got 2.5"):
    hspg_jax.hspg(0.1, 0.1, {"w": 0}, half_space_start=2.5)
  with pytest.raises(ValueError, match="start_step must be >= 0"):
    hspg_jax.half_space_projection({"w": 0}, start_step=-1)


def test_group_axis_arguments_swapped():
  with pytest.raises(TypeError, match=re.escape("look swapped: write GroupAxis(-1, 'conv')")):
    GroupAxis("conv", -1)
  with pytest.raises(TypeError, match="axis must be an int"):
    GroupAxis(1.0, "conv")
  with pytest.raises(TypeError, match="family must be a string"):
    GroupAxis(0, 3.5)


def test_hspg_arguments_in_the_wrong_order():
  rules = GroupRules([(r".*kernel", GroupAxis(-1))])
  with pytest.raises(TypeError, match=r"learning_rate must be a number or a schedule, got "
                     r"GroupRules.*Signature: hspg\(learning_rate, reg_strength, groups"):
    hspg_jax.hspg(rules, 0.1, 1e-3)
  with pytest.raises(TypeError, match=r"hspg: groups: a group spec leaf must be None, an int "
                     r"axis or GroupAxis, got 0.001"):
    hspg_jax.hspg(0.1, 1e-3, 1e-3)
  with pytest.raises(TypeError, match=r"leaf at 'w' must be None.*got 'rows'"):
    hspg_jax.hspg(0.1, 1e-3, {"w": "rows"})
  with pytest.raises(TypeError, match="reg_strength must be a number"):
    hspg_jax.hspg(0.1, {"w": 0}, {"w": 0})


def test_spec_on_whole_nnx_state_naming_batch_stats_suggests_param():
  nnx = pytest.importorskip("flax.nnx")
  state = nnx.state(conv_bn(nnx))  # Params and BatchStats
  rules = GroupRules([(r"conv/kernel", GroupAxis(-1, "c")), (r"bn/.*", GroupAxis(0, "c"))])
  with pytest.raises(ValueError, match=r"'bn/mean' is an nnx.BatchStat.*nnx.state\(model, "
                     r"nnx.Param\)"):
    hspg_jax.resolve_groups(state, rules)
  params = nnx.state(conv_bn(nnx), nnx.Param)
  assert hspg_jax.resolve_groups(params, rules).num_groups == 4
