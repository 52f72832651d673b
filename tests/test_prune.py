"""Structured pruning (hspg_jax.flax.prune): smaller model, same eval outputs.

Models get random parameters AND random BatchNorm statistics/biases, so any
channel removed without being zero-invariant would change the outputs.
Parameter and MAC counts after pruning are computed by hand from the kept
channel counts. Weights are filled from numpy (one XLA compile per distinct
random shape is slow on a small CPU box).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hspg_jax
import hspg_jax.flax as hf
import models
from models import cp_resnet
from models.testing import materialize
from tests.prune_util import assert_same_eval_outputs
from tests.prune_util import zero_groups

X = jax.random.normal(jax.random.key(1), (2, 16, 12, 2))


# --- toy conv-BN net, everything by hand ---------------------------------------------

class ConvBNNet(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(2, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, rngs=rngs)
    self.conv2 = nnx.Conv(8, 6, (3, 3), use_bias=True, rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.conv2(nnx.max_pool(x, (2, 2), strides=(2, 2))))
    return self.head(jnp.mean(x, axis=(1, 2)))


def test_toy_net_by_hand():
  model = materialize(ConvBNNet)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"conv1": [0, 2, 5], "conv2": [1]})
  small = hf.prune(model, graph)
  assert small.conv1.kernel.shape == (3, 3, 2, 5)
  assert small.bn1.mean.shape == small.bn1.var.shape == small.bn1.scale.shape == (5,)
  assert small.conv2.kernel.shape == (3, 3, 5, 5) and small.conv2.bias.shape == (5,)
  assert small.head.kernel.shape == (5, 3)
  assert (small.conv1.out_features, small.bn1.num_features, small.conv2.in_features,
          small.head.in_features) == (5, 5, 5, 5)
  # The right channels went: conv1's kept filters are 1, 3, 4, 6, 7.
  np.testing.assert_array_equal(small.conv1.kernel[...],
                                model.conv1.kernel[...][..., [1, 3, 4, 6, 7]])
  assert_same_eval_outputs(model, small, X)

  before = 9 * 2 * 8 + 2 * 8 + 9 * 8 * 6 + 6 + 6 * 3 + 3
  after = 9 * 2 * 5 + 2 * 5 + 9 * 5 * 5 + 5 + 5 * 3 + 3
  report = hf.prune_report(model, small, X)
  assert (report.params_before, report.params_after) == (before, after)
  # MACs: conv1 at 16x12 (SAME), conv2 at 8x6, head; batch 2.
  macs = lambda c1, c2: 2 * (16 * 12 * 9 * 2 * c1 + 8 * 6 * 9 * c1 * c2 + c2 * 3)  # noqa: E731
  assert (report.macs_before, report.macs_after) == (macs(8, 6), macs(5, 5))
  assert report.mac_ratio == pytest.approx(macs(8, 6) / macs(5, 5))
  assert "params" in str(report) and "MACs" in str(report)
  # The dense model is untouched.
  assert model.conv1.kernel.shape == (3, 3, 2, 8)


def test_all_zero_family_keeps_one_channel():
  model = materialize(ConvBNNet)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"conv1": range(8)})
  small = hf.prune(model, graph)
  assert small.conv1.kernel.shape == (3, 3, 2, 1)
  assert_same_eval_outputs(model, small, X)


def test_graph_from_another_model_is_rejected():
  model = materialize(ConvBNNet)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"conv1": [0]})
  small = hf.prune(model, graph)
  with pytest.raises(ValueError, match=r"bn1/bias.*\(7,\).*\(8,\)"):
    hf.prune(small, graph)


class SqueezeExcite(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.fc1, self.fc2 = nnx.Linear(8, 3, rngs=rngs), nnx.Linear(3, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    s = nnx.sigmoid(self.fc2(nnx.relu(self.fc1(jnp.mean(x, axis=(1, 2))))))
    return self.head(jnp.mean(x * s[:, None, None, :], axis=(1, 2)))


def test_gated_channels():
  model = materialize(SqueezeExcite)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"conv+1": [0, 3, 4], "fc1": [1]})
  small = hf.prune(model, graph)
  assert small.fc2.kernel.shape == (2, 5) and small.fc1.kernel.shape == (5, 2)
  assert_same_eval_outputs(model, small, X)


# --- the zoo -------------------------------------------------------------------------

def cp_resnet_params(kept, rho, n_classes=10, cin=2):
  """CP-ResNet parameters from kept channel counts, by hand."""
  s1, s2, s3 = kept["stem_conv+4"], kept["stage2/block1/conv2+4"], kept["stage3/block1/conv2+4"]
  total = 25 * cin * s1 + 2 * s1
  for stage, ((k1s, k2s), cin_, cout) in enumerate(zip(cp_resnet.kernel_sizes(rho),
                                                       (s1, s1, s2), (s1, s2, s3))):
    for b in range(4):
      mid = kept[f"stage{stage + 1}/block{b + 1}/conv1"]
      i = cin_ if b == 0 else cout
      total += k1s[b] ** 2 * i * mid + 2 * mid + k2s[b] ** 2 * mid * cout + 2 * cout
      if b == 0 and stage > 0:
        total += i * cout + 2 * cout
  return total + s3 * n_classes + 2 * n_classes


@pytest.mark.parametrize("frac", [0.5, 0.75])
def test_cp_resnet_prune(frac):
  rho = 7
  model = materialize(lambda r: models.get_model("cp_resnet", 10, rho=rho, width_mult=1 / 16,
                                                 rngs=r))
  x = jax.random.normal(jax.random.key(2), (2, 40, 32, 2))
  graph = hf.analyze_channels(model, x)
  masks = zero_groups(model, graph, frac=frac)
  kept = {name: int((~m).sum()) for name, m in masks.items()}
  full = {f.name: f.num_groups for f in graph.structure.families}
  small = hf.prune(model, graph)
  assert hf.count_params(model) == cp_resnet_params(full, rho) == 17108
  assert hf.count_params(small) == cp_resnet_params(kept, rho)
  assert small.stage2.block3.conv1.kernel.shape == (
      3 if cp_resnet.kernel_sizes(rho)[1][0][2] == 3 else 1,) * 2 + (
          kept["stage2/block1/conv2+4"], kept["stage2/block3/conv1"])
  assert_same_eval_outputs(model, small, x)


def test_vgg_prune():
  model = materialize(lambda r: models.get_model("vgg", 10, width_mult=1 / 16, rngs=r))
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 2))  # three 2x2 pools after the stem
  graph = hf.analyze_channels(model, x)
  masks = zero_groups(model, graph, frac=0.5, seed=3)
  k = {name: int((~m).sum()) for name, m in masks.items()}
  small = hf.prune(model, graph)
  chain = [2, k["stem/conv"], k["block1/conv"], k["block2a/conv"], k["block2b/conv"],
           k["block3a/conv"], k["block3b/conv"], k["block4a/conv"], k["block4b/conv"]]
  sizes = [5] + [3] * 7
  expected = sum(s * s * i * o + 2 * o for s, i, o in zip(sizes, chain[:-1], chain[1:]))
  expected += chain[-1] * k["hidden"] + k["hidden"] + k["hidden"] * 10 + 10
  assert hf.count_params(small) == expected
  assert_same_eval_outputs(model, small, x)


@pytest.mark.parametrize("name", ["densenet", "densenet_dn1"])
def test_densenet_prune(name):
  model = materialize(lambda r: models.get_model(name, 10, width_mult=1 / 8, rngs=r))
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, frac=0.5, seed=4)
  small = hf.prune(model, graph)
  assert hf.count_params(small) < hf.count_params(model)
  # A later layer reads the kept channels of every earlier producer, in order.
  k = small.block1.layer3.conv.kernel.shape[2]
  assert k == sum(small_c.kernel.shape[3] for small_c in (
      small.stem_conv, small.block1.layer1.conv, small.block1.layer2.conv))
  assert_same_eval_outputs(model, small, X)


# --- end to end: HSPG makes zero groups, pruning removes them ---------------------------

class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(2, 8, (3, 3), use_bias=False, rngs=rngs)
    self.conv2 = nnx.Conv(8, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn1, self.bn2 = nnx.BatchNorm(8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)) + x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def test_hspg_zero_groups_are_pruned():
  model = materialize(Tiny)
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 2))
  y = jnp.array([0, 1, 2, 1])
  graph = hf.analyze_channels(model, x)
  assert [f.name for f in graph.families] == ["conv1+1"]  # the residual ties both convs
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Strong regularisation, capped at half the groups so some survive.
  tx = hspg_jax.hspg(learning_rate=0.1, reg_strength=2.0, groups=graph.spec, half_space_start=5,
                     upper_group_sparsity=0.5)

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    m.eval()
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(20):
    params, state = step(params, state)
  zero = int(hspg_jax.num_zero_groups(params, graph.spec))
  assert 0 < zero < 8
  nnx.update(model, params)
  small = hf.prune(model, graph)
  assert small.conv1.kernel.shape[-1] == small.conv2.kernel.shape[-1] == 8 - zero
  assert small.head.kernel.shape == (8 - zero, 3)
  assert_same_eval_outputs(model, small, x)
