"""Zero-invariant groups from dataflow (hspg_jax.flax.analyze_channels).

Expected families and group counts are written out by hand from each model's
layout. Models are built with ``nnx.eval_shape`` (the analysis reads shapes
only), so nothing here compiles.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import hspg_jax
import hspg_jax.flax as hf
import models


def abstract(make):
  return nnx.eval_shape(lambda: make(nnx.Rngs(0)))


def conv(cin, cout, k=3, rngs=None, **kw):
  return nnx.Conv(cin, cout, (k, k), use_bias=kw.pop("use_bias", False), rngs=rngs, **kw)


def gap(x):
  return jnp.mean(x, axis=(1, 2))


def families(graph):
  """{family name: (groups, sorted member 'path[axis]')} from the resolved spec."""
  return {f.name: (f.num_groups, sorted(f"{m.path}[{m.axis}]" for m in f.members))
          for f in graph.structure.families}


def ungrouped(graph):
  return dict(graph.ungrouped)


X = (2, 16, 12, 2)


# --- toy conv-BN net ---------------------------------------------------------------

class ConvBNNet(nnx.Module):
  def __init__(self, rngs):
    self.conv1, self.bn1 = conv(2, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.conv2, self.bn2 = conv(8, 6, rngs=rngs), nnx.BatchNorm(6, rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = nnx.relu(self.bn2(self.conv2(x)))
    return self.head(gap(x))


def test_conv_bn_net():
  graph = hf.analyze_channels(abstract(ConvBNNet), X)
  assert families(graph) == {
      "conv1": (8, ["bn1/bias[0]", "bn1/scale[0]", "conv1/kernel[3]"]),
      "conv2": (6, ["bn2/bias[0]", "bn2/scale[0]", "conv2/kernel[3]"]),
  }
  # group size = filter (3*3*in) + BN scale + BN bias
  assert [f.group_size for f in graph.structure.families] == [9 * 2 + 2, 9 * 8 + 2]
  # The classifier's outputs are never grouped; the BN statistics are cut too.
  assert ungrouped(graph) == {"head": "reaches the model output"}
  fam = {f.name: f for f in graph.families}
  assert ("bn1/mean", 0) in fam["conv1"].members and ("bn1/var", 0) in fam["conv1"].members
  assert fam["conv1"].dependents == (("conv2/kernel", 2, 0, 8, 0),)
  assert fam["conv2"].dependents == (("head/kernel", 0, 0, 6, 0),)
  assert "conv1" in graph.table() and "head: reaches the model output" in graph.table()


def test_spec_is_a_params_pytree_usable_by_the_core():
  model = abstract(ConvBNNet)
  spec = hf.zero_invariant_groups(model, X)
  params = nnx.state(model, nnx.Param)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      spec, is_leaf=lambda x: x is None or isinstance(x, hspg_jax.GroupAxis))
  assert hspg_jax.resolve_groups(params, spec).num_groups == 14
  # Spec leaves sit in the params' Variable boxes, as the params' arrays do.
  assert spec["head"]["kernel"].get_value() is None
  assert spec["conv1"]["kernel"].get_value() == hspg_jax.GroupAxis(3, "conv1")


class BiasNet(nnx.Module):
  """conv with bias -> ReLU (no BN); dense with bias; BN without bias."""

  def __init__(self, rngs):
    self.conv1 = conv(2, 5, rngs=rngs, use_bias=True)
    self.conv2, self.bn2 = conv(5, 4, rngs=rngs), nnx.BatchNorm(4, use_bias=False, rngs=rngs)
    self.hidden = nnx.Linear(4, 7, rngs=rngs)
    self.head = nnx.Linear(7, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.bn2(self.conv2(x)))
    return self.head(nnx.gelu(self.hidden(gap(x))))


def test_biases_join_their_channel_group():
  graph = hf.analyze_channels(abstract(BiasNet), X)
  assert families(graph) == {
      "conv1": (5, ["conv1/bias[0]", "conv1/kernel[3]"]),
      "conv2": (4, ["bn2/scale[0]", "conv2/kernel[3]"]),  # scale alone zeroes the BN output
      "hidden": (7, ["hidden/bias[0]", "hidden/kernel[1]"]),  # gelu(0) == 0
  }


# --- residual net --------------------------------------------------------------------

class Block(nnx.Module):
  def __init__(self, cin, mid, cout, rngs):
    self.conv1, self.bn1 = conv(cin, mid, rngs=rngs), nnx.BatchNorm(mid, rngs=rngs)
    self.conv2, self.bn2 = conv(mid, cout, 1, rngs=rngs), nnx.BatchNorm(cout, rngs=rngs)
    if cin != cout:
      self.proj, self.proj_bn = conv(cin, cout, 1, rngs=rngs), nnx.BatchNorm(cout, rngs=rngs)
    else:
      self.proj = self.proj_bn = None

  def __call__(self, x):
    y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
    s = x if self.proj is None else self.proj_bn(self.proj(x))
    return nnx.relu(y + s)


class ResNet(nnx.Module):
  def __init__(self, rngs):
    self.stem, self.stem_bn = conv(2, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.a = Block(8, 4, 8, rngs)
    self.b = Block(8, 4, 8, rngs)
    self.c = Block(8, 6, 12, rngs)
    self.head = conv(12, 3, 1, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem(x)))
    x = self.b(nnx.max_pool(self.a(x), (2, 2), strides=(2, 2)))
    return gap(self.head(self.c(x)))


def test_residual_adds_share_one_family():
  graph = hf.analyze_channels(abstract(ResNet), X)
  trio = lambda p: [f"{p}_bn/bias[0]", f"{p}_bn/scale[0]", f"{p}/kernel[3]"]  # noqa: E731
  inner = lambda b, i: [  # noqa: E731
      f"{b}/bn{i}/bias[0]", f"{b}/bn{i}/scale[0]", f"{b}/conv{i}/kernel[3]"]
  assert families(graph) == {
      # stem -> a (identity) -> b (identity): one family through the stage
      "stem+2": (8, sorted(trio("stem") + inner("a", 2) + inner("b", 2))),
      "a/conv1": (4, inner("a", 1)),
      "b/conv1": (4, inner("b", 1)),
      "c/conv1": (6, inner("c", 1)),
      "c/conv2+1": (12, sorted(inner("c", 2) + ["c/proj_bn/bias[0]", "c/proj_bn/scale[0]",
                                                 "c/proj/kernel[3]"])),
  }
  fam = {f.name: f for f in graph.families}
  assert fam["stem+2"].producers == ("stem", "a/conv2", "b/conv2")
  assert sorted(d[0] for d in fam["stem+2"].dependents) == [
      "a/conv1/kernel", "b/conv1/kernel", "c/conv1/kernel", "c/proj/kernel"]
  assert ungrouped(graph) == {"head": "reaches the model output"}


class RematResNet(nnx.Module):
  """The residual block runs under nnx.remat and a jax.jit: sub-jaxprs are followed."""

  def __init__(self, rngs):
    self.stem = conv(2, 8, rngs=rngs, use_bias=True)
    self.a = Block(8, 4, 8, rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = jax.jit(nnx.relu)(self.stem(x))
    x = nnx.remat(lambda block, x: block(x))(self.a, x)
    return self.head(gap(x))


def test_calls_are_followed():
  graph = hf.analyze_channels(abstract(RematResNet), X)
  assert {k: v[0] for k, v in families(graph).items()} == {"stem+1": 8, "a/conv1": 4}
  assert "stem/bias[0]" in families(graph)["stem+1"][1]


# --- the zoo -------------------------------------------------------------------------

def zoo(name, **kw):
  return abstract(lambda rngs: models.get_model(name, 10, rngs=rngs, **kw))


def test_cp_resnet_families():
  graph = hf.analyze_channels(zoo("cp_resnet", rho=5, width_mult=1 / 16), (1, 48, 40, 2))
  c1, c2, c3 = 8, 16, 32  # 128/256/512 at 1/16
  fams = families(graph)
  # 1 stem+stage-1 family, 12 inner (conv1) families, 1 family each for stages 2 and 3.
  assert len(fams) == 15
  assert graph.structure.num_groups == c1 + 4 * c1 + 4 * c2 + 4 * c3 + c2 + c3 == 280
  assert fams["stem_conv+4"][0] == c1 and len(fams["stem_conv+4"][1]) == 3 * 5
  assert fams["stage2/block1/conv2+4"][0] == c2  # projection + 4 conv2 (+ their BNs)
  assert "stage2/block1/shortcut_conv/kernel[3]" in fams["stage2/block1/conv2+4"][1]
  assert fams["stage3/block1/conv2+4"][0] == c3
  for s, c in (("stage1", c1), ("stage2", c2), ("stage3", c3)):
    for b in range(1, 5):
      assert fams[f"{s}/block{b}/conv1"][0] == c
  assert ungrouped(graph) == {"head_conv": "reaches the model output"}


def test_vgg_families():
  graph = hf.analyze_channels(zoo("vgg", width_mult=1 / 16), (1, 48, 40, 2))
  c1, c2, c3, c4, h = 4, 8, 16, 32, 16
  expected = {"stem/conv": c1, "block1/conv": c1, "block2a/conv": c2, "block2b/conv": c2,
              "block3a/conv": c3, "block3b/conv": c3, "block4a/conv": c4, "block4b/conv": c4,
              "hidden": h}
  assert {k: v[0] for k, v in families(graph).items()} == expected
  assert families(graph)["hidden"][1] == ["hidden/bias[0]", "hidden/kernel[1]"]
  assert ungrouped(graph) == {"classifier": "reaches the model output"}


@pytest.mark.parametrize("name", ["densenet", "densenet_dn1"])
def test_densenet_concatenations_map_back_to_producers(name):
  g = 4
  graph = hf.analyze_channels(zoo(name, width_mult=1 / 8), (1, 48, 40, 2))
  fams = families(graph)
  t1 = (2 * g + 4 * g) // 2
  t2 = (t1 + 4 * g) // 2
  expected = {"stem_conv": 2 * g, "transition1/conv": t1, "transition2/conv": t2}
  expected.update({f"block{b}/layer{i}/conv": g for b in (1, 2, 3) for i in (1, 2, 3, 4)})
  assert {k: v[0] for k, v in fams.items()} == expected
  fam = {f.name: f for f in graph.families}
  # Block 1 layer 3 sees concat(stem, layer1, layer2): each producer at its offset.
  assert ("block1/layer3/conv/kernel", 2, 0, 2 * g, 0) in fam["stem_conv"].dependents
  assert ("block1/layer3/conv/kernel", 2, 2 * g, g, 0) in fam["block1/layer1/conv"].dependents
  assert ("block1/layer3/conv/kernel", 2, 3 * g, g, 0) in fam["block1/layer2/conv"].dependents
  # The transition sees all of block 1: stem + 4 layers.
  assert ("transition1/conv/kernel", 2, 5 * g, g, 0) in fam["block1/layer4/conv"].dependents
  assert ungrouped(graph) == {"head_conv": "reaches the model output"}


# --- what must not be grouped ---------------------------------------------------------

class Tail(nnx.Module):
  """conv1 -> <op under test> -> conv2 -> ReLU -> GAP -> head."""

  def __init__(self, rngs, op, bn_kw=None):
    self.conv1 = conv(2, 6, rngs=rngs)
    self.bn1 = nnx.BatchNorm(6, rngs=rngs, **(bn_kw or {}))
    self.conv2 = conv(6, 5, rngs=rngs, use_bias=True)
    self.head = nnx.Linear(5, 3, rngs=rngs)
    self.op = op

  def __call__(self, x):
    x = self.op(self.bn1(self.conv1(x)))
    return self.head(gap(nnx.relu(self.conv2(x))))


@pytest.mark.parametrize("op,bn_kw", [
    (nnx.sigmoid, None),                        # sigmoid(0) = 1/2
    (lambda x: nnx.relu(x) + 1.0, None),        # a constant added after
    (nnx.relu, {"use_scale": False}),           # BN bias alone: (0 - mean)/std + bias != 0
    (nnx.relu, {"use_bias": False, "use_scale": False}),
], ids=["sigmoid", "plus-constant", "bn-without-scale", "bn-without-affine"])
def test_non_zero_invariant_channels_are_not_grouped(op, bn_kw):
  graph = hf.analyze_channels(abstract(lambda r: Tail(r, op, bn_kw)), X)
  assert set(families(graph)) == {"conv2"}
  assert "not zero-invariant at the input of 'conv2/kernel'" in ungrouped(graph)["conv1"]


def test_relu_keeps_the_group():
  graph = hf.analyze_channels(abstract(lambda r: Tail(r, nnx.relu)), X)
  assert set(families(graph)) == {"conv1", "conv2"}


class PreActDense(nnx.Module):
  """Classic DenseNet layer: BN-ReLU-conv on a concatenation."""

  def __init__(self, rngs):
    self.c0, self.c1 = conv(2, 4, rngs=rngs), conv(4, 3, rngs=rngs)
    self.bn = nnx.BatchNorm(7, rngs=rngs)
    self.c2 = conv(7, 5, rngs=rngs)
    self.bn2 = nnx.BatchNorm(5, rngs=rngs)
    self.head = nnx.Linear(5, 2, rngs=rngs)

  def __call__(self, x):
    a = self.c0(x)
    x = jnp.concatenate([a, self.c1(a)], axis=-1)
    x = nnx.relu(self.bn2(self.c2(nnx.relu(self.bn(x)))))
    return self.head(gap(x))


def test_bn_spanning_several_producers_leaves_them_ungrouped():
  graph = hf.analyze_channels(abstract(PreActDense), X)
  assert set(families(graph)) == {"c2"}
  assert "covers only part of the channels" in ungrouped(graph)["c0"]
  assert "covers only part of the channels" in ungrouped(graph)["c1"]


class SharedConv(nnx.Module):
  """One conv applied twice: to the input and to its own output."""

  def __init__(self, rngs):
    self.conv = conv(4, 4, rngs=rngs)
    self.mid = conv(4, 6, rngs=rngs)
    self.head = nnx.Linear(6, 2, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(nnx.relu(self.conv(x))))
    return self.head(gap(nnx.relu(self.mid(x))))


def test_a_layer_reused_on_the_input_is_not_cut():
  graph = hf.analyze_channels(abstract(SharedConv), (1, 8, 8, 4))
  # Cutting conv's input channels would break its first call, on the model input.
  assert set(families(graph)) == {"mid"}
  assert "never removed" in ungrouped(graph)["conv"]


class SqueezeExcite(nnx.Module):
  def __init__(self, rngs):
    self.conv, self.bn = conv(2, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.fc1, self.fc2 = nnx.Linear(8, 2, rngs=rngs), nnx.Linear(2, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    s = nnx.sigmoid(self.fc2(nnx.relu(self.fc1(gap(x)))))
    return self.head(gap(x * s[:, None, None, :]))


def test_channels_multiplied_together_share_a_family():
  graph = hf.analyze_channels(abstract(SqueezeExcite), X)
  assert families(graph) == {
      "conv+1": (8, ["bn/bias[0]", "bn/scale[0]", "conv/kernel[3]", "fc2/bias[0]",
                     "fc2/kernel[1]"]),
      "fc1": (2, ["fc1/bias[0]", "fc1/kernel[1]"]),
  }


# --- unsupported ops: documented fallback, or an error in strict mode -------------------

class Flatten(nnx.Module):
  def __init__(self, rngs):
    self.conv1, self.bn1 = conv(2, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
    self.conv2, self.bn2 = conv(4, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs)
    self.head = nnx.Linear(3 * 16 * 12, 2, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    return self.head(x.reshape(x.shape[0], -1))


def test_flatten_into_dense_is_followed():
  graph = hf.analyze_channels(abstract(Flatten), X)
  assert families(graph) == {
      "conv1": (4, ["bn1/bias[0]", "bn1/scale[0]", "conv1/kernel[3]"]),
      "conv2": (3, ["bn2/bias[0]", "bn2/scale[0]", "conv2/kernel[3]"]),
  }
  fam = {f.name: f for f in graph.families}
  # NHWC flattened: conv2 channel c is dense input p * 3 + c for every position p.
  assert fam["conv2"].dependents == ()
  assert fam["conv2"].flat_dependents == (("head/kernel", 0, 0, 3, 0, 16 * 12, 3, 1),)


class Depthwise(nnx.Module):
  def __init__(self, rngs):
    self.conv, self.bn = conv(2, 6, rngs=rngs), nnx.BatchNorm(6, rngs=rngs)
    self.dw = conv(6, 6, rngs=rngs, feature_group_count=6)
    self.head = nnx.Linear(6, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(gap(nnx.relu(self.dw(nnx.relu(self.bn(self.conv(x)))))))


class SortChannels(nnx.Module):
  def __init__(self, rngs):
    self.conv, self.bn = conv(2, 6, rngs=rngs), nnx.BatchNorm(6, rngs=rngs)
    self.head = nnx.Linear(6, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(gap(jnp.sort(nnx.relu(self.bn(self.conv(x))), axis=-1)))


class LayerNormChannels(nnx.Module):
  def __init__(self, rngs):
    self.conv, self.ln = conv(2, 6, rngs=rngs), nnx.LayerNorm(6, rngs=rngs)
    self.conv2 = conv(6, 4, rngs=rngs)
    self.head = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(gap(nnx.relu(self.conv2(nnx.relu(self.ln(self.conv(x)))))))


def test_depthwise_filters_join_the_producer_family():
  graph = hf.analyze_channels(abstract(Depthwise), X)
  assert families(graph) == {
      "conv": (6, ["bn/bias[0]", "bn/scale[0]", "conv/kernel[3]", "dw/kernel[3]"]),
  }
  assert {f.name: f.dependents for f in graph.families} == {
      "conv": (("head/kernel", 0, 0, 6, 0),)}


@pytest.mark.parametrize("make,match,warns", [
    (SortChannels, "unsupported op 'sort'", True),
    (LayerNormChannels, "reduces over the channel axis", False),
    (Flatten, None, False),
], ids=["sort", "layernorm", "flatten"])
def test_unsupported_ops(make, match, warns):
  model = abstract(make)
  if match is None:  # followed: strict mode has nothing to object to
    assert families(hf.analyze_channels(model, X, strict=True)) == families(
        hf.analyze_channels(model, X))
    return
  with pytest.warns(UserWarning, match="conservative fallback") if warns else _nothing():
    graph = hf.analyze_channels(model, X)
  assert match in ungrouped(graph)["conv"]
  assert "conv" not in families(graph)
  with pytest.raises(ValueError, match=r"strict=True.*\[conv\]"):
    hf.analyze_channels(model, X, strict=True)


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
