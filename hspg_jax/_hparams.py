"""Hyperparameter helpers shared by the transforms: schedules and input checks."""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def value_at(hparam, count):
  """A hyperparameter's value at step ``count``: calls schedules, passes constants."""
  return hparam(count) if callable(hparam) else hparam


def _concrete(value):
  """``value`` as a NumPy array when it is concrete, else None (tracers)."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    return None


def _is_numeric(value) -> bool:
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return jnp.issubdtype(value.dtype, jnp.number)
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_range(name: str, hparam, low: float, high: float | None = None, *, closed_high=False,
                hint: str = ""):
  """Raises ValueError unless ``low <= hparam`` and ``hparam < high`` (or ``<=``).

  Schedules are checked at step 0; traced values (inside ``inject_hyperparams``
  under ``jit``) cannot be checked here: see :func:`clip`. A value that is
  neither a number nor a schedule raises TypeError (``hint`` is appended, e.g.
  the call signature, because the usual cause is arguments in the wrong order).
  """
  value = hparam
  if callable(hparam):
    try:
      value = hparam(0)
    except Exception:  # pylint: disable=broad-except  # an exotic schedule: skip the check
      return
  elif not isinstance(hparam, jax.core.Tracer) and not _is_numeric(hparam):
    raise TypeError(f"{name} must be a number or a schedule, got {hparam!r} "
                    f"({type(hparam).__name__}).{' ' + hint if hint else ''}")
  arr = _concrete(value)
  if arr is None:
    return
  bad = np.any(~np.isfinite(arr)) or np.any(arr < low)
  if high is not None:
    bad = bad or np.any(arr > high if closed_high else arr >= high)
  if bad:
    where = " at step 0" if callable(hparam) else ""
    if high is None:
      allowed = f">= {low}"
    else:
      allowed = f"in [{low}, {high}{']' if closed_high else ')'}"
    raise ValueError(f"{name} must be {allowed}, got {arr.tolist()}{where}")


def per_family(name: str, hparam, family_names, low: float, high: float) -> list:
  """Expands a float or ``{regex: float}`` mapping into one value per family.

  Mapping keys are regexes matched against the whole family name; the first
  match wins. A family that no key matches is an error (add ``".*"`` as a
  default).
  """
  if not isinstance(hparam, Mapping):
    check_range(name, hparam, low, high)
    return [hparam] * len(family_names)
  compiled = []
  for key, val in hparam.items():
    check_range(f"{name}[{key!r}]", val, low, high)
    compiled.append((re.compile(key), val))
  out = []
  for fam in family_names:
    for regex, val in compiled:
      if regex.fullmatch(fam):
        out.append(val)
        break
    else:
      raise ValueError(
          f"{name}: no key matches group family {fam!r}; keys are {list(hparam)} "
          "(add '.*' for a default)"
      )
  return out


def clip(value, low: float, high: float):
  """``value`` clipped to ``[low, high]``: the guard for values checked only at run
  time (schedules after step 0, hyperparameters changed under
  ``inject_hyperparams``), where raising is impossible inside ``jit``.
  """
  return jnp.clip(value, low, high)


def check_step(name: str, value, hint: str = "") -> None:
  """Raises unless ``value`` is a non-negative integer step (traced values pass)."""
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, np.bool_)) or not (
      isinstance(value, (int, np.integer))
      or (isinstance(value, (jax.Array, np.ndarray)) and value.ndim == 0
          and jnp.issubdtype(value.dtype, jnp.integer))):
    raise TypeError(f"{name} must be an int step, got {value!r}.{' ' + hint if hint else ''}")
  if int(value) < 0:
    raise ValueError(f"{name} must be >= 0, got {int(value)}")
