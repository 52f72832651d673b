"""A zoo of small models the ASC models do not cover: groups found, sound, pruned exactly.

For every model whose channels are accepted, the expected families are written
out by hand, and two independent checks run on random weights with random
BatchNorm statistics and about half of every family's groups zeroed:

* soundness: randomizing everything that only sees removed channels (the
  consumers' input slices, the removed channels' BatchNorm statistics) leaves
  the eval outputs unchanged, i.e. the removed channels really are zero
  wherever they are used;
* exactness: the pruned model is smaller and gives the dense model's outputs.

The declined models check that the analysis says precisely why, and that
``prune`` itself refuses a pruning it cannot verify.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hspg_jax.flax as hf
from models.testing import materialize
from tests.prune_util import assert_close
from tests.prune_util import eval_out
from tests.prune_util import perturb_removed
from tests.prune_util import prune_lib
from tests.prune_util import zero_groups

X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))


def conv(cin, cout, k=3, rngs=None, **kw):
  return nnx.Conv(cin, cout, (k, k), use_bias=kw.pop("use_bias", False), rngs=rngs, **kw)


def gap(x):
  return jnp.mean(x, axis=(1, 2))


# --- models whose channels are accepted ------------------------------------------------

class ProjectionBlock(nnx.Module):
  def __init__(self, rngs):
    self.stem, self.stem_bn = conv(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.conv1, self.bn1 = conv(8, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
    self.conv2, self.bn2 = conv(4, 12, 1, rngs=rngs), nnx.BatchNorm(12, rngs=rngs)
    self.proj, self.proj_bn = conv(8, 12, 1, rngs=rngs, strides=2), nnx.BatchNorm(12, rngs=rngs)
    self.head = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem(x)))
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(nnx.avg_pool(y, (2, 2), strides=(2, 2))))
    return self.head(gap(nnx.relu(y + self.proj_bn(self.proj(x)))))


class OddConcat(nnx.Module):
  """Concatenations in odd orders: one producer twice, another in the middle."""

  def __init__(self, rngs):
    self.a, self.b = conv(3, 4, rngs=rngs, use_bias=True), conv(3, 5, rngs=rngs, use_bias=True)
    self.c = conv(14, 6, rngs=rngs)
    self.head = nnx.Linear(6 + 4, 3, rngs=rngs)

  def __call__(self, x):
    a, b = nnx.relu(self.a(x)), nnx.relu(self.b(x))
    y = nnx.relu(self.c(jnp.concatenate([b, a, b], axis=-1)))
    return self.head(jnp.concatenate([gap(y), gap(a)], axis=-1))


class Shared(nnx.Module):
  """One conv applied to two branches: the branches must be pruned alike."""

  def __init__(self, rngs):
    self.a, self.b = conv(3, 6, rngs=rngs, use_bias=True), conv(3, 6, rngs=rngs, use_bias=True)
    self.shared = conv(6, 5, rngs=rngs, use_bias=True)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    y = self.shared(nnx.relu(self.a(x))) + self.shared(nnx.tanh(self.b(x)))
    return self.head(gap(nnx.relu(y)))


class SqueezeExcite(nnx.Module):
  def __init__(self, rngs):
    self.conv, self.bn = conv(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.fc1, self.fc2 = nnx.Linear(8, 3, rngs=rngs), nnx.Linear(3, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    s = nnx.hard_sigmoid(self.fc2(nnx.relu(self.fc1(gap(x)))))
    return self.head(gap(x * s[:, None, None, :]))


class PoolFlatten(nnx.Module):
  """Dropout, average and max pooling, then a flatten (NHWC or NCHW) into dense layers."""

  def __init__(self, rngs, channels_first=False):
    self.conv1, self.bn1 = conv(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.conv2 = conv(4, 6, rngs=rngs, use_bias=True)
    self.fc1 = nnx.Linear(2 * 2 * 6, 8, rngs=rngs)
    self.fc2 = nnx.Linear(8, 3, rngs=rngs)
    self.channels_first = channels_first

  def __call__(self, x):
    x = nnx.avg_pool(self.drop(nnx.relu(self.bn1(self.conv1(x)))), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    if self.channels_first:
      x = jnp.transpose(x, (0, 3, 1, 2))
    return self.fc2(nnx.relu(self.fc1(x.reshape(x.shape[0], -1))))


class PerChannelNorms(nnx.Module):
  """Normalizations whose statistics are per channel: zero channels stay removable."""

  def __init__(self, rngs):
    self.c1, self.gn = conv(3, 6, rngs=rngs), nnx.GroupNorm(6, num_groups=6, rngs=rngs)
    self.c2 = conv(6, 5, rngs=rngs)
    self.ln = nnx.LayerNorm(5, reduction_axes=(1, 2), feature_axes=-1, rngs=rngs)
    self.c3, self.inorm = conv(5, 4, rngs=rngs), nnx.InstanceNorm(4, rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.gn(self.c1(x)))
    x = nnx.relu(self.ln(self.c2(x)))
    return self.head(gap(nnx.relu(self.inorm(self.c3(x)))))


class DepthwiseSeparable(nnx.Module):
  def __init__(self, rngs):
    self.conv, self.bn = conv(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.dw, self.dw_bn = conv(8, 8, rngs=rngs, feature_group_count=8), nnx.BatchNorm(8, rngs=rngs)
    self.pw, self.pw_bn = conv(8, 6, 1, rngs=rngs), nnx.BatchNorm(6, rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu6(self.bn(self.conv(x)))
    x = nnx.relu6(self.dw_bn(self.dw(x)))
    return self.head(gap(nnx.relu(self.pw_bn(self.pw(x)))))


class DepthwiseOverConcat(nnx.Module):
  """A depthwise conv over two producers' channels: its filters follow each."""

  def __init__(self, rngs):
    self.a, self.b = conv(3, 4, rngs=rngs, use_bias=True), conv(3, 3, rngs=rngs, use_bias=True)
    self.dw = conv(7, 7, rngs=rngs, feature_group_count=7)
    self.pw = conv(7, 5, 1, rngs=rngs, use_bias=True)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    x = jnp.concatenate([nnx.relu(self.a(x)), nnx.relu(self.b(x))], axis=-1)
    return self.head(gap(nnx.relu(self.pw(nnx.relu(self.dw(x))))))


class Grouped(nnx.Module):
  """A grouped conv (2 groups): its groups must stay aligned."""

  def __init__(self, rngs):
    self.c1, self.bn1 = conv(3, 8, rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.g, self.bn2 = conv(8, 6, rngs=rngs, feature_group_count=2), nnx.BatchNorm(6, rngs=rngs)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.c1(x)))
    return self.head(gap(nnx.relu(self.bn2(self.g(x)))))


class GroupedOverConcat(nnx.Module):
  """A grouped conv reading two producers: row j ties channel j of both."""

  def __init__(self, rngs):
    self.a, self.b = conv(3, 4, rngs=rngs, use_bias=True), conv(3, 4, rngs=rngs, use_bias=True)
    self.g = conv(8, 6, rngs=rngs, feature_group_count=2, use_bias=True)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = jnp.concatenate([nnx.relu(self.a(x)), nnx.relu(self.b(x))], axis=-1)
    return self.head(gap(nnx.relu(self.g(x))))


class Clipped(nnx.Module):
  """Activations that keep zero at zero, clipped ones included."""

  ACTS = (nnx.relu6, nnx.hard_swish, nnx.hard_tanh, nnx.leaky_relu, nnx.elu, nnx.silu)

  def __init__(self, rngs):
    self.convs = nnx.List([conv(3 if i == 0 else 4, 4, rngs=rngs, use_bias=True)
                           for i in range(len(self.ACTS))])
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    for c, act in zip(self.convs, self.ACTS):
      x = act(c(x))
    return self.head(gap(x))


class GeneralDense(nnx.Module):
  """LinearGeneral and Einsum layers (they keep size attributes beside their arrays)."""

  def __init__(self, rngs):
    self.lg = nnx.LinearGeneral(3, 8, rngs=rngs)
    self.es = nnx.Einsum("bi,io->bo", (8, 5), (5,), rngs=rngs)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    x = gap(x)
    return self.head(nnx.gelu(self.es(nnx.relu(self.lg(x)))))


class TransposedConv(nnx.Module):
  def __init__(self, rngs):
    self.conv = conv(3, 6, rngs=rngs, use_bias=True)
    self.up = nnx.ConvTranspose(6, 4, (3, 3), strides=(2, 2), rngs=rngs)
    self.conv2 = conv(4, 5, rngs=rngs)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.up(nnx.relu(self.conv(x))))
    return self.head(gap(nnx.relu(self.conv2(x))))


def trio(p, bn=None):
  bn = bn or f"{p}_bn"
  return [f"{bn}/bias[0]", f"{bn}/scale[0]", f"{p}/kernel[3]"]


ACCEPTED = {
    "projection": (ProjectionBlock, {
        "stem": sorted(trio("stem")),
        "conv1": trio("conv1", "bn1"),
        "conv2+1": sorted(trio("conv2", "bn2") + trio("proj")),
    }),
    "odd-concat": (OddConcat, {
        "a": ["a/bias[0]", "a/kernel[3]"], "b": ["b/bias[0]", "b/kernel[3]"],
        "c": ["c/kernel[3]"],
    }),
    "shared": (Shared, {
        "a+1": ["a/bias[0]", "a/kernel[3]", "b/bias[0]", "b/kernel[3]"],
        "shared": ["shared/bias[0]", "shared/kernel[3]"],
    }),
    "squeeze-excite": (SqueezeExcite, {
        "conv+1": sorted(trio("conv", "bn") + ["fc2/bias[0]", "fc2/kernel[1]"]),
        "fc1": ["fc1/bias[0]", "fc1/kernel[1]"],
    }),
    "pool-flatten": (PoolFlatten, {
        "conv1": trio("conv1", "bn1"), "conv2": ["conv2/bias[0]", "conv2/kernel[3]"],
        "fc1": ["fc1/bias[0]", "fc1/kernel[1]"],
    }),
    "pool-flatten-nchw": (lambda r: PoolFlatten(r, channels_first=True), {
        "conv1": trio("conv1", "bn1"), "conv2": ["conv2/bias[0]", "conv2/kernel[3]"],
        "fc1": ["fc1/bias[0]", "fc1/kernel[1]"],
    }),
    "per-channel-norms": (PerChannelNorms, {
        "c1": ["c1/kernel[3]", "gn/bias[0]", "gn/scale[0]"],
        "c2": ["c2/kernel[3]", "ln/bias[0]", "ln/scale[0]"],
        "c3": ["c3/kernel[3]", "inorm/bias[0]", "inorm/scale[0]"],
    }),
    "depthwise-separable": (DepthwiseSeparable, {
        "conv": sorted(trio("conv", "bn") + trio("dw", "dw_bn")),
        "pw": trio("pw", "pw_bn"),
    }),
    "depthwise-over-concat": (DepthwiseOverConcat, {
        "a": ["a/bias[0]", "a/kernel[3]"], "b": ["b/bias[0]", "b/kernel[3]"],
        "pw": ["pw/bias[0]", "pw/kernel[3]"],
    }),
    "grouped": (Grouped, {"c1": trio("c1", "bn1"), "g": trio("g", "bn2")}),
    "grouped-over-concat": (GroupedOverConcat, {
        "a": ["a/bias[0]", "a/kernel[3]"], "b": ["b/bias[0]", "b/kernel[3]"],
        "g": ["g/bias[0]", "g/kernel[3]"]}),
    "clipped": (Clipped, {
        f"convs/{i}": [f"convs/{i}/bias[0]", f"convs/{i}/kernel[3]"] for i in range(6)}),
    "general-dense": (GeneralDense, {
        "lg": ["lg/bias[0]", "lg/kernel[1]"], "es": ["es/bias[0]", "es/kernel[1]"]}),
    "transposed-conv": (TransposedConv, {
        "conv": ["conv/bias[0]", "conv/kernel[3]"], "up": ["up/bias[0]", "up/kernel[3]"],
        "conv2": ["conv2/kernel[3]"]}),
}


def families(graph):
  return {f.name: sorted(f"{m.path}[{m.axis}]" for m in f.members)
          for f in graph.structure.families}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_groups_are_sound_and_prune_exactly(name):
  make, expected = ACCEPTED[name]
  model = materialize(make)
  graph = hf.analyze_channels(model, X)
  assert families(graph) == {k: sorted(v) for k, v in expected.items()}
  zero_groups(model, graph, frac=0.5, seed=3)
  dense = eval_out(model, X)

  perturbed, changed = perturb_removed(model, graph)
  assert changed > 0
  assert_close(dense, eval_out(perturbed, X), rtol=1e-6)

  small = hf.prune(model, graph)
  assert hf.count_params(small) < hf.count_params(model)
  assert_close(dense, eval_out(small, X))
  assert hf.count_macs(small, X) < hf.count_macs(model, X)


def test_flattened_channels_are_strided_dense_inputs():
  model = materialize(PoolFlatten)
  graph = hf.analyze_channels(model, X)
  fam = {f.name: f for f in graph.families}
  # (N, 2, 2, 6) -> (N, 24): conv2 channel c is fc1 input 6 * p + c, p = 0..3.
  assert fam["conv2"].flat_dependents == (("fc1/kernel", 0, 0, 6, 0, 4, 6, 1),)
  zero_groups(model, graph, which={"conv2": [1, 4]})
  small = hf.prune(model, graph)
  kept = [p * 6 + c for p in range(4) for c in (0, 2, 3, 5)]
  np.testing.assert_array_equal(small.fc1.kernel[...], np.asarray(model.fc1.kernel[...])[kept])
  assert small.fc1.in_features == 16
  # Channels first: (N, 6, 2, 2) -> (N, 24): channel c is inputs 4 c .. 4 c + 3.
  nchw = materialize(lambda r: PoolFlatten(r, channels_first=True))
  fam = {f.name: f for f in hf.analyze_channels(nchw, X).families}
  assert fam["conv2"].flat_dependents == (("fc1/kernel", 0, 0, 6, 0, 1, 6, 4),)


def test_depthwise_conv_is_rebuilt_with_fewer_groups():
  model = materialize(DepthwiseSeparable)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"conv": [0, 5, 6]})
  small = hf.prune(model, graph)
  assert small.dw.kernel.shape == (3, 3, 1, 5)
  assert small.dw.feature_group_count == small.dw.in_features == small.dw.out_features == 5
  np.testing.assert_array_equal(small.dw.kernel[...], model.dw.kernel[...][..., [1, 2, 3, 4, 7]])
  assert small.pw.kernel.shape == (1, 1, 5, 6)


def test_grouped_conv_removes_only_aligned_channels():
  model = materialize(Grouped)
  graph = hf.analyze_channels(model, X)
  # c1 channel j and j + 4 share the grouped kernel's input row j; g's outputs are
  # two blocks of 3 that must lose as many channels each.
  assert graph.ties == tuple(((("c1", j), ("c1", j + 4))) for j in range(4))
  assert graph.equal_blocks == (("g", 2),)
  zero_groups(model, graph, which={"c1": [0, 4, 1, 6], "g": [0, 1, 3]})
  small = hf.prune(model, graph)
  # c1: only row 0 has both channels zero (0 and 4); 1 and 6 stay, zero.
  assert small.c1.kernel.shape == (3, 3, 3, 6) and small.g.kernel.shape[2] == 3
  # g: block 0 has 2 zero channels, block 1 one: one removed from each.
  assert small.g.kernel.shape[3] == 4 and small.g.feature_group_count == 2
  assert small.g.in_features == 6 and small.g.out_features == 4
  assert_close(eval_out(model, X), eval_out(small, X))


def test_grouped_conv_ties_channels_of_different_producers():
  model = materialize(GroupedOverConcat)
  graph = hf.analyze_channels(model, X)
  assert graph.ties == tuple(((("a", j), ("b", j))) for j in range(4))
  zero_groups(model, graph, which={"a": [0, 1], "b": [0, 2]})
  small = hf.prune(model, graph)  # only row 0 is zero in both groups
  assert small.a.kernel.shape[3] == small.b.kernel.shape[3] == small.g.kernel.shape[2] == 3
  assert_close(eval_out(model, X), eval_out(small, X))


def test_bfloat16_model():
  class Net(nnx.Module):
    def __init__(self, rngs):
      kw = dict(rngs=rngs, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
      self.conv, self.bn = conv(3, 8, **kw), nnx.BatchNorm(8, **kw)
      self.head = nnx.Linear(8, 3, **kw)

    def __call__(self, x):
      return self.head(gap(nnx.relu(self.bn(self.conv(x)))))

  model = materialize(Net)
  x = X.astype(jnp.bfloat16)
  graph = hf.analyze_channels(model, x)  # relu's bfloat16 zero is a zero
  assert [f.name for f in graph.families] == ["conv"]
  zero_groups(model, graph, which={"conv": [1, 2, 5]})
  small = hf.prune(model, graph)  # checked with a bfloat16 tolerance
  assert small.conv.kernel.shape == (3, 3, 3, 5) and small.conv.kernel.dtype == jnp.bfloat16
  assert_close(eval_out(model, x).astype(np.float32), eval_out(small, x).astype(np.float32),
               rtol=3e-2)


def test_general_dense_layers_keep_consistent_sizes():
  model = materialize(GeneralDense)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"lg": [0, 1, 2], "es": [4]})
  small = hf.prune(model, graph)
  assert small.lg.out_features == (5,) and small.lg.kernel.shape == (3, 5)
  assert small.es.kernel_shape == (5, 4) and small.es.bias_shape == (4,)


def test_one_channel_families_after_pruning():
  model = materialize(ProjectionBlock)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, frac=1.0)
  small = hf.prune(model, graph)  # every family keeps one (zero) channel
  again = hf.analyze_channels(small, X)
  assert {f.name: f.num_groups for f in again.structure.families} == {
      "stem": 1, "conv1": 1, "conv2+1": 1}
  assert dict(again.ungrouped) == {"head": "reaches the model output"}


# --- declined, with the reason -------------------------------------------------------

class Roll(nnx.Module):
  """The issue's repro: Linear(4, 8) -> relu -> roll(4) -> Linear(8, 3)."""

  def __init__(self, rngs, shift=4):
    self.a, self.b = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
    self.shift = shift

  def __call__(self, x):
    x = nnx.relu(self.a(x))
    return self.b(jnp.roll(x, self.shift, axis=-1) if self.shift else x)


class TemporalShift(nnx.Module):
  """A quarter of the channels shifted by one frame (TSM)."""

  def __init__(self, rngs):
    self.c1, self.c2 = conv(3, 8, rngs=rngs, use_bias=True), conv(8, 5, rngs=rngs)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.c1(x))
    c = x.shape[-1] // 4
    shifted = jnp.pad(x[:, :, 1:, :c], ((0, 0), (0, 0), (0, 1), (0, 0)))
    x = jnp.concatenate([shifted, x[..., c:]], axis=-1)
    return self.head(gap(nnx.relu(self.c2(x))))


class Tail(nnx.Module):
  """conv1 -> op -> conv2 -> head."""

  def __init__(self, rngs, op, mid=6, cout2=None):
    self.conv1 = conv(3, mid, rngs=rngs, use_bias=True)
    self.op = op(rngs) if getattr(op, "needs_rngs", False) else op
    self.conv2 = conv(cout2 or mid, 5, rngs=rngs, use_bias=True)
    self.head = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(gap(nnx.relu(self.conv2(self.op(self.conv1(x))))))


def _with_rngs(make):
  make.needs_rngs = True
  return make


class Features(nnx.Module):
  """A custom layer keeping its width as an attribute, as user layers often do."""

  def __init__(self, features, rngs):
    self.features = features
    self.w = nnx.Param(jnp.ones((features,)))

  def __call__(self, x):
    return x * self.w[...].reshape(1, 1, 1, self.features)


NORMALIZED = "normalized with a statistic taken across its channels"
DECLINED = {
    "roll": (lambda r: Roll(r), (2, 4), "a", "a slice [4:8] of the 8-channel axis"),
    "temporal-shift": (TemporalShift, X.shape, "c1", "a slice [0:2] of the 8-channel axis"),
    "layernorm": (lambda r: Tail(r, _with_rngs(lambda r: nnx.LayerNorm(6, rngs=r))), X.shape,
                  "conv1", NORMALIZED + " (op 'reduce_sum' reduces over the channel axis)"),
    "rmsnorm": (lambda r: Tail(r, _with_rngs(lambda r: nnx.RMSNorm(6, rngs=r))), X.shape,
                "conv1", NORMALIZED),
    "groupnorm": (lambda r: Tail(r, _with_rngs(lambda r: nnx.GroupNorm(6, num_groups=3,
                                                                       rngs=r))),
                  X.shape, "conv1",
                  NORMALIZED + " (op 'reshape' splits the 6-channel axis into 3 x 2)"),
    "groupnorm-without-affine": (
        lambda r: Tail(r, _with_rngs(lambda r: nnx.GroupNorm(
            6, num_groups=6, use_scale=False, use_bias=False, rngs=r))),
        X.shape, "conv1", "'op' is a GroupNorm without scale or bias: pruning has no array"),
    "depthwise-multiplier": (
        lambda r: Tail(r, _with_rngs(lambda r: conv(6, 12, rngs=r, feature_group_count=6)),
                       cout2=12),
        X.shape, "conv1", "is depthwise with channel multiplier 2"),
    "hard-sigmoid": (lambda r: Tail(r, nnx.hard_sigmoid), X.shape, "conv1",
                     "not zero-invariant at the input of 'conv2/kernel': op 'add' combines it "
                     "with a nonzero constant"),
    "softplus": (lambda r: Tail(r, nnx.softplus), X.shape, "conv1",
                 "not zero-invariant at the input of 'conv2/kernel': op 'exp' maps zero to a "
                 "nonzero value"),
    "baked-constant": (lambda r: Tail(r, lambda x: x * np.arange(1.0, 7.0, dtype=np.float32)),
                       X.shape, "conv1", "combined with a fixed 6-wide array along the channel "
                                         "axis"),
    "size-attribute": (lambda r: Tail(r, _with_rngs(lambda r: Features(6, r))), X.shape,
                       "conv1", "'op' (Features) keeps size attribute(s) features=6 that "
                                "pruning cannot update"),
    "masked-conv": (lambda r: Tail(r, _with_rngs(lambda r: conv(
        6, 6, rngs=r, mask=jnp.ones((3, 3, 6, 6))))), X.shape, "conv1",
                    "conv whose kernel is not a parameter leaf as stored (e.g. a masked"),
}


@pytest.mark.parametrize("name", list(DECLINED))
def test_declined_with_the_reason(name):
  make, shape, layer, why = DECLINED[name]
  model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
  if name == "masked-conv":  # an op the analysis does not follow: it says so
    with pytest.warns(UserWarning, match="conservative fallback"):
      graph = hf.analyze_channels(model, shape)
  else:
    graph = hf.analyze_channels(model, shape)
  assert layer not in {f.name for f in graph.families}
  reason = dict(graph.ungrouped)[layer]
  assert why in reason
  if "not zero-invariant" not in why:  # no zero-preserving op is blamed
    assert "not zero-invariant" not in reason


def test_clipped_activations_are_not_called_non_zero_invariant():
  for act in (nnx.relu6, nnx.hard_tanh, nnx.hard_swish, lambda x: jnp.clip(x, -1.0, 2.0)):
    graph = hf.analyze_channels(nnx.eval_shape(lambda: Tail(nnx.Rngs(0), act)), X.shape)
    assert {f.name for f in graph.families} == {"conv1", "conv2"}


# --- prune verifies before it returns ---------------------------------------------------

def test_prune_refuses_an_unverified_model_naming_the_layers():
  # A graph from the same model without the roll (same parameters, so it applies),
  # as the analysis used to produce: channels followed through partial slices.
  model = materialize(lambda r: Roll(r))
  twin = materialize(lambda r: Roll(r, shift=0))
  graph = hf.analyze_channels(twin, (2, 4))
  assert [f.name for f in graph.families] == ["a"]
  zero_groups(model, graph, which={"a": [1, 6]})
  with pytest.raises(ValueError, match=r"max \|dense - pruned\|.*family 'a' \(layers a, b\)"):
    hf.prune(model, graph)
  # The caller's own probe input and tolerance are used.
  x = jnp.ones((5, 4))
  with pytest.raises(ValueError, match="family 'a'"):
    hf.prune(model, graph, check_inputs=x)
  diff = float(np.max(np.abs(np.asarray(model(x)) - np.asarray(
      prune_lib._cut(model, graph, prune_lib.removal_masks(model, graph))(x)))))
  assert diff > 0.1
  small = hf.prune(model, graph, check_inputs=x, atol=10 * diff)
  assert small.a.kernel.shape == (4, 6)


def test_prune_reports_a_pruned_model_that_fails_to_run():
  # A hard-coded width: the analysis sees a constant, the pruned model a shape error.
  model = materialize(lambda r: Tail(r, lambda x: x + jnp.zeros(6)))
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"conv1": [2]})
  with pytest.raises(ValueError, match=r"fails to run \(.*shapes.*family 'conv1' \(layers conv1, conv2\)"):
    hf.prune(model, graph)


def test_prune_needs_a_probe_input():
  model = materialize(SqueezeExcite)
  graph = hf.analyze_channels(model, X)
  zero_groups(model, graph, which={"fc1": [0]})
  bare = dataclasses.replace(graph, inputs=None)
  with pytest.raises(ValueError, match="check_inputs="):
    hf.prune(model, bare)
  assert hf.prune(model, bare, check_inputs=X).fc1.kernel.shape == (8, 2)
