"""Which Flax layers pruning can shrink, and how their size attributes follow the arrays.

Pruning cuts state arrays, merges them back into the same graph definition and
then rewrites the size attributes a layer keeps beside its arrays (``Linear``'s
``in_features``, ``GroupNorm``'s ``num_groups``, ``Einsum``'s
``kernel_shape``...), since some layers reshape with them. A layer type not
listed here is accepted only if it keeps no integer attribute equal to the
size of an axis that would be cut; otherwise :func:`cut_problem` gives the
reason the analysis declines its channels.
"""

from __future__ import annotations

from flax import nnx

_NORMS = tuple(getattr(nnx, n) for n in ("BatchNorm", "LayerNorm", "RMSNorm", "InstanceNorm")
               if hasattr(nnx, n))
_KNOWN = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.ConvTranspose, nnx.GroupNorm,
          nnx.Embed) + _NORMS


def modules_by_path(model: nnx.Module, path_str) -> dict[str, nnx.Module]:
  return {path_str(p): m for p, m in nnx.iter_modules(model)}


def owner(modules: dict[str, nnx.Module], leaf_path: str):
  """``(module path, module)`` of the innermost module holding a state leaf."""
  parts = leaf_path.split("/")[:-1]
  while parts:
    path = "/".join(parts)
    if path in modules:
      return path, modules[path]
    parts.pop()
  return "", modules.get("")


def cut_problem(path: str, module, leaf_name: str, size: int) -> str | None:
  """Why pruning cannot rebuild ``module`` after cutting its leaf (None if it can)."""
  kind = type(module).__name__
  if isinstance(module, (nnx.Conv, nnx.ConvTranspose)) and getattr(module, "mask", None) is not None:
    return f"{path!r} is a {kind} with a mask, which keeps the kernel's original shape"
  if isinstance(module, nnx.GroupNorm) and module.group_size != 1:
    return (f"{path!r} is a GroupNorm with {module.group_size} channels per group: removing "
            "one channel would change the statistics of the others in its group")
  if module is None or isinstance(module, _KNOWN):
    return None
  sizes = [f"{k}={v!r}" for k, v in sorted(vars(module).items())
           if not k.startswith("_") and _mentions(v, size)]
  if sizes:
    return (f"{path!r} ({kind}) keeps size attribute(s) {', '.join(sizes)} that pruning "
            f"cannot update when {leaf_name!r} is cut")
  return None


def widths_without_arrays(modules: dict[str, nnx.Module]) -> list[tuple[int, str]]:
  """``(width, reason)`` of layers whose width pruning could not read back from arrays.

  A ``GroupNorm`` with ``group_size=1`` and neither scale nor bias reshapes
  its input with ``num_groups``, and keeps no array of that width: after
  pruning its channels, nothing says what ``num_groups`` becomes.
  """
  out = []
  for path, m in modules.items():
    if (isinstance(m, nnx.GroupNorm) and m.group_size == 1 and _feature_width(m) is None):
      out.append((m.num_groups, f"{path!r} is a GroupNorm without scale or bias: pruning has "
                                "no array to read its new num_groups from"))
  return out


def _mentions(v, size: int) -> bool:
  if isinstance(v, bool):
    return False
  if isinstance(v, int):
    return v == size
  if isinstance(v, tuple) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                        for x in v):
    return size in v
  return False


def sync_sizes(model: nnx.Module):
  """Rewrites the size attributes of every known layer from its (cut) arrays."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.Conv):
      *_, k_in, k_out = tuple(m.kernel.shape)
      if m.feature_group_count > 1 and k_in == 1 and m.out_features == m.in_features:
        m.feature_group_count = k_out  # depthwise: one group per (kept) channel
      m.in_features = k_in * m.feature_group_count
      m.out_features = k_out
      m.kernel_shape = tuple(m.kernel.shape)
    elif isinstance(m, nnx.ConvTranspose):
      m.in_features, m.out_features = tuple(m.kernel.shape)[-2:]
      m.kernel_shape = tuple(m.kernel.shape)
    elif isinstance(m, nnx.Linear):
      m.in_features, m.out_features = tuple(m.kernel.shape)
    elif isinstance(m, nnx.LinearGeneral):
      shape = tuple(m.kernel.shape)
      nb, ni = len(m.batch_axis), len(m.in_features)
      m.in_features, m.out_features = shape[nb:nb + ni], shape[nb + ni:]
    elif isinstance(m, nnx.Einsum):
      m.kernel_shape = tuple(m.kernel.shape)
      if m.bias is not None:
        m.bias_shape = tuple(m.bias.shape)
    elif isinstance(m, nnx.Embed):
      m.num_embeddings, m.features = tuple(m.embedding.shape)
    elif isinstance(m, nnx.GroupNorm):
      width = _feature_width(m)
      if width is not None:
        m.num_groups = width // m.group_size
    elif isinstance(m, _NORMS):
      width = _feature_width(m)
      if width is not None and isinstance(getattr(m, "num_features", None), int):
        m.num_features = width


def _feature_width(m):
  for name in ("scale", "bias", "mean", "var"):
    v = getattr(m, name, None)
    if isinstance(v, nnx.Variable) and getattr(v, "shape", None):
      return tuple(v.shape)[-1]
  return None
