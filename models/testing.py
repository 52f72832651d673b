"""Fast, random-valued models for tests and benchmarks.

``jax.random`` initialisers cost one XLA compile per distinct parameter shape
(about a second each on a small CPU), which dominates tests and benchmarks that
only need *some* values. :func:`materialize` builds the model abstractly and
fills it from NumPy instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hspg_jax import groups as groups_lib

__all__ = ["materialize"]


def materialize(make, seed: int = 0) -> nnx.Module:
  """``make(rngs)`` with NumPy-random weights and BatchNorm statistics.

  Kernels are He-scaled normals, BatchNorm scales ~ N(1, 0.3), biases and running
  means ~ N(0, 0.5), running variances ~ U(0.5, 2) (non-trivial statistics, so
  that eval-mode outputs exercise them). Integer leaves are zeros.

  Example:
    >>> from flax import nnx
    >>> from models.testing import materialize
    >>> layer = materialize(lambda rngs: nnx.Linear(3, 2, rngs=rngs))
    >>> layer.kernel.shape
    (3, 2)
  """
  graphdef, state = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = groups_lib.path_str(path).rsplit("/", 1)[-1]
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.key(seed)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    if name == "var":
      v = rng.uniform(0.5, 2.0, x.shape)
    elif name == "scale":
      v = rng.normal(1.0, 0.3, x.shape)
    elif name in ("mean", "bias"):
      v = rng.normal(0.0, 0.5, x.shape)
    else:  # kernels, He-scaled
      v = rng.normal(0.0, np.sqrt(2.0 / np.prod(x.shape[:-1])), x.shape)
    return jnp.asarray(v, x.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
