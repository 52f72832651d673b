"""The ASC model zoo: layouts, parameter counts (by hand), registry, shapes.

Shapes and counts come from ``nnx.eval_shape`` / ``jax.eval_shape`` (tracing
only), so these tests compile nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from models import cp_resnet

FULL = (256, 431, 2)  # mel bins, frames (10 s), stereo


def n_params(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def abstract(name, **kw):
  return nnx.eval_shape(lambda: models.get_model(name, 10, rngs=nnx.Rngs(0), **kw))


def apply_shape(model, fn, shape):
  """Shape of ``fn(model, x)`` for an abstract model (tracing only)."""
  model.eval()
  graphdef, state = nnx.split(model)
  return jax.eval_shape(lambda s, x: fn(nnx.merge(graphdef, s), x), state,
                        jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def out_shape(model, shape):
  return apply_shape(model, lambda m, x: m(x), shape)


# --- CP-ResNet ---------------------------------------------------------------------

def test_kernel_sizes_match_the_issue_tables():
  ks = cp_resnet.kernel_sizes
  assert ks(0)[0] == ((3, 1, 1, 1), (1, 1, 1, 1))
  assert ks(3)[0] == ((3, 3, 3, 1), (1, 3, 1, 1))
  assert ks(5)[0] == ((3, 3, 3, 3), (1, 3, 3, 1))
  assert ks(7)[0] == ((3, 3, 3, 3), (1, 3, 3, 3))
  for rho in (0, 3, 5):  # stages 2 and 3 stay 1x1 up to rho 6
    assert ks(rho)[1] == ((1,) * 4, (1,) * 4) and ks(rho)[2] == ((1,) * 4, (1,) * 4)
  assert ks(7)[1] == ((3, 1, 1, 1), (1, 1, 1, 1))  # rho 7 opens stage 2 block 1 k1
  assert ks(8)[1] == ((3, 1, 1, 1), (3, 1, 1, 1))  # then stage 2 opens further
  assert ks(22)[2] == ((3,) * 4, (3,) * 4)  # and finally all of stage 3


def cp_resnet_params_by_hand(rho, c=128, n_classes=10, cin=2):
  """Conv weights + BN (scale, bias); the stage widths are c, 2c, 4c."""
  bn = lambda ch: 2 * ch  # noqa: E731
  total = 25 * cin * c + bn(c)  # stem
  cins = (c, c, 2 * c)
  couts = (c, 2 * c, 4 * c)
  for (k1s, k2s), ci, co in zip(cp_resnet.kernel_sizes(rho), cins, couts):
    for b in range(4):
      i = ci if b == 0 else co
      total += k1s[b] ** 2 * i * co + bn(co) + k2s[b] ** 2 * co * co + bn(co)
      if i != co:
        total += i * co + bn(co)  # 1x1 projection shortcut
  return total + 4 * c * n_classes + bn(n_classes)  # head conv + BN


@pytest.mark.parametrize("rho,millions,exact", [(0, 2.91, 2_911_252), (3, 3.30, 3_304_468),
                                                (5, 3.57, 3_566_612), (7, 3.96, 3_959_828)])
def test_cp_resnet_parameter_counts(rho, millions, exact):
  count = n_params(abstract("cp_resnet", rho=rho))
  assert count == exact == cp_resnet_params_by_hand(rho)
  assert round(count / 1e6, 2) == millions  # the issue's (authors') figures


def test_cp_resnet_layout():
  model = abstract("cp_resnet", rho=7)
  for stage in ("stage1", "stage2", "stage3"):
    blocks = [getattr(getattr(model, stage), f"block{i}") for i in range(1, 5)]
    # A projection shortcut exactly where the width changes: stage 2/3, block 1.
    assert [b.shortcut_conv is not None for b in blocks] == [stage != "stage1", False, False, False]
    for b in blocks:
      assert b.conv1.bias is None and b.conv2.bias is None
  assert model.stem_conv.strides == 2 and model.stem_conv.kernel_size == (5, 5)
  assert model.stem_conv.padding == ((1, 1), (1, 1))
  assert model.stage1.pool_after == (1, 2, 4)
  assert model.stage2.pool_after == () and model.stage3.pool_after == ()
  # Spatial sizes: stem (256+2-5)//2+1 = 127, (431+2-5)//2+1 = 215; three 2x2 pools.
  stem = apply_shape(model, lambda m, x: m.stem_conv(x), (1,) + FULL)
  assert stem == (1, 127, 215, 128)
  s1 = apply_shape(model, lambda m, x: m.stage1(m.stem_conv(x)), (1,) + FULL)
  assert s1 == (1, 127 // 8, 215 // 8, 128)
  assert out_shape(model, (4,) + FULL) == (4, 10)


def test_rn_presets_are_named_rhos():
  assert cp_resnet.RN_PRESETS == {"rn1": 3, "rn2": 5, "rn3": 7}
  for name, rho in cp_resnet.RN_PRESETS.items():
    assert abstract(f"cp_resnet_{name}").rho == rho


def test_width_multiplier_and_rho_validation():
  assert abstract("cp_resnet", width_mult=0.5).stage3.block4.conv2.out_features == 256
  with pytest.raises(ValueError, match="rho"):
    abstract("cp_resnet", rho=23)
  with pytest.raises(ValueError, match="width_mult"):
    abstract("cp_resnet", width_mult=0)


# --- VGG and DenseNet --------------------------------------------------------------

def test_vgg_parameter_count_by_hand():
  c1, c2, c3, c4, h, n = 4, 8, 16, 32, 16, 10  # widths (64, 128, 256, 512), 256 at 1/16
  convs = [(5, 2, c1), (3, c1, c1), (3, c1, c2), (3, c2, c2), (3, c2, c3), (3, c3, c3),
           (3, c3, c4), (3, c4, c4)]
  expected = sum(k * k * i * o + 2 * o for k, i, o in convs) + c4 * h + h + h * n + n
  assert n_params(abstract("vgg", width_mult=1 / 16)) == expected


@pytest.mark.parametrize("name,kernels", [("densenet", (3, 3, 3)), ("densenet_dn1", (3, 1, 1))])
def test_densenet_parameter_count_by_hand(name, kernels):
  g, n = 4, 10  # growth 32 at width 1/8
  c = 2 * g
  expected = 25 * 2 * c + 2 * c  # stem
  for b, k in enumerate(kernels):
    for i in range(4):
      expected += k * k * (c + i * g) * g + 2 * g
    c += 4 * g
    if b < 2:
      expected += c * (c // 2) + 2 * (c // 2)  # transition, compression 0.5
      c //= 2
  expected += c * n + 2 * n
  model = abstract(name, width_mult=1 / 8)
  assert n_params(model) == expected
  assert model.block2.layer1.conv.kernel_size == (kernels[1],) * 2


@pytest.mark.parametrize("name", models.available_models())
def test_every_model_maps_nhwc_input_to_logits(name):
  model = abstract(name, width_mult=1 / 16)
  assert out_shape(model, (3, 64, 40, 2)) == (3, 10)


def test_registry():
  assert {"cp_resnet", "cp_resnet_rn1", "cp_resnet_rn2", "cp_resnet_rn3", "vgg", "densenet",
          "densenet_dn1"} <= set(models.available_models())
  with pytest.raises(ValueError, match="unknown model 'resnet50'.*cp_resnet"):
    models.get_model("resnet50", 10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="already registered"):
    models.register("vgg", lambda n_classes, *, rngs: None)


def test_one_real_forward_in_both_modes():
  model = models.get_model("densenet_dn1", 5, growth=2, layers=(1, 1, 1), rngs=nnx.Rngs(0))
  x = jnp.ones((2, 24, 16, 2))
  y_train = model(x)
  model.eval()
  y_eval = model(x)
  assert y_train.shape == y_eval.shape == (2, 5)
  assert bool(jnp.all(jnp.isfinite(y_eval)))
