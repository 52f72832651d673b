"""Hyperparameter helpers shared by the transforms: schedules and input checks."""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
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


def check_range(name: str, hparam, low: float, high: float | None = None, *, closed_high=False):
  """Raises ValueError unless ``low <= hparam`` and ``hparam < high`` (or ``<=``).

  Schedules are checked at step 0; traced values (inside ``inject_hyperparams``
  under ``jit``) cannot be checked and pass through.
  """
  value = hparam
  if callable(hparam):
    try:
      value = hparam(0)
    except Exception:  # pylint: disable=broad-except  # an exotic schedule: skip the check
      return
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
