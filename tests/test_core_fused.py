"""The fused hspg() step as XLA compiles it: passes over memory, no copies, no big temporaries.

The numbers of the fused step are checked against the NumPy restatement in
test_hspg.py (both paths); here the compiled program is checked against its
design (see hspg_jax/_fused.py), on CPU, where the counts were worked out.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hspg_jax
from hspg_jax import GroupAxis

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="pass counts are those of XLA CPU")


def tree():
  rng = np.random.default_rng(0)
  params, spec = {}, {}
  for k, shape in enumerate([(3, 3, 16, 64), (1, 1, 64, 64), (3, 3, 64, 32)]):
    name = f"conv{k}"
    params[name] = {"kernel": jnp.asarray(rng.normal(size=shape), jnp.float32),
                    "scale": jnp.ones(shape[-1]), "bias": jnp.zeros(shape[-1])}
    spec[name] = {"kernel": GroupAxis(-1, name), "scale": GroupAxis(0, name),
                  "bias": GroupAxis(0, name)}
  params["head"] = jnp.asarray(rng.normal(size=(32, 10)), jnp.float32)
  spec["head"] = None
  return params, spec


def compiled_step(tx, params):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  grads = jax.tree.map(jnp.ones_like, params)
  return jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()


def counts(compiled, params):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
  text = compiled.as_text()
  entry = text[text.index("\nENTRY"):]
  big_copies = [m for m in re.finditer(r"= \w+\[([\d,]*)\]\S* copy\(", entry)
                if np.prod([int(d) for d in m.group(1).split(",") if d] or [1]) > 256]
  return (cost["bytes accessed"] / nbytes, compiled.memory_analysis().temp_size_in_bytes / nbytes,
          len(big_copies))


@pytest.mark.parametrize("momentum, floor", [(None, 6), (0.9, 10)])
def test_fused_step_reads_and_writes_at_its_design_floor(momentum, floor):
  params, spec = tree()
  tx = hspg_jax.hspg(1e-2, 1e-3, spec, half_space_start=0, momentum=momentum)
  passes, temp, copies = counts(compiled_step(tx, params), params)
  assert passes < floor + 0.5, passes  # the per-group vectors add a little
  assert temp < 0.05, temp  # no parameter-sized temporary
  assert copies == 0
  # The composable chain, for contrast, needs more passes and a full temporary.
  chain = hspg_jax.hspg(1e-2, 1e-3, spec, half_space_start=0, momentum=momentum, fused=False)
  chain_passes, chain_temp, _ = counts(compiled_step(chain, params), params)
  assert chain_passes > passes and chain_temp > temp
