"""Argument checks shared by the command lines: errors name the flag, no traceback.

Types (``type=`` of ``add_argument``) raise ``argparse.ArgumentTypeError``, which
argparse turns into ``prog: error: argument --flag: ...`` and exit status 2.
:func:`writable_dir` is for checks after parsing: it proves a folder takes files
before any work starts, so results are never lost at the end of a long run.

Example::

  p.add_argument("--batch-size", type=argchecks.positive_int, default=64)
  args = p.parse_args()
  argchecks.writable_dir(p, "--out", args.out)
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

__all__ = ["existing_dir", "int_at_least", "non_negative_int", "positive_float",
           "positive_int", "writable_dir"]


def int_at_least(minimum: int, what: str):
  """A type accepting integers >= ``minimum``; ``what`` describes them in errors."""

  def parse(value: str) -> int:
    try:
      n = int(value)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if n < minimum:
      raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return n

  parse.__name__ = what  # argparse names the type in some messages
  return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def positive_float(value: str) -> float:
  try:
    x = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
  if not (math.isfinite(x) and x > 0):
    raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
  return x


def existing_dir(value: str) -> Path:
  path = Path(value).expanduser()
  if not path.exists():
    raise argparse.ArgumentTypeError(f"{value}: no such directory")
  if not path.is_dir():
    raise argparse.ArgumentTypeError(f"{value}: not a directory")
  return path


def writable_dir(parser: argparse.ArgumentParser, flag: str, path) -> None:
  """Creates ``path`` if needed and proves a file can be written there (else exits 2)."""
  if path is None:
    return
  path = Path(path).expanduser()
  if path.exists() and not path.is_dir():
    parser.error(f"argument {flag}: {path} exists and is not a directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    parser.error(f"argument {flag}: cannot write to {path}: {e.strerror or e}")
