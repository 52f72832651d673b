"""Output folders of the data set generators (synthetic, debian-scenes): resume or refuse.

A generator writes a marker (``_IN_PROGRESS``, its parameters) first and the
manifest last, so a folder is in one of four states: complete (manifest, every
file at its recorded size), unfinished (marker), foreign (anything else), or
empty. :func:`claim` decides what to do with each, the same way for every
generator.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["claim", "clear", "complete"]


def complete(root: Path, manifest: dict, needed: Sequence[str]) -> bool:
  """Every file in ``needed`` exists, and every file of the manifest has its size."""
  if not all((root / p).is_file() for p in needed):
    return False
  return all((root / rel).is_file() and (root / rel).stat().st_size == size
             for rel, size in manifest.get("files", {}).items())


def clear(root: Path, dirs: Sequence[str], files: Sequence[str]) -> None:
  """Removes what a generated set consists of (and nothing else)."""
  for name in dirs:
    shutil.rmtree(root / name, ignore_errors=True)
  for name in files:
    (root / name).unlink(missing_ok=True)


def claim(root: Path, want: dict, *, manifest: str, marker: str, what: str, remedy: str,
          needed: Sequence[str], dirs: Sequence[str]) -> bool:
  """True if ``root`` already holds the set ``want`` describes (nothing to do).

  Otherwise leaves ``root`` ready to write: clears a set or an unfinished build
  with other parameters when ``remedy`` was taken (the caller passes
  ``overwrite`` through ``remedy=None``), and raises ``FileExistsError`` saying
  ``remedy`` when it was not, or when ``root`` holds something else.
  """
  files = ("meta.csv", manifest, marker)
  m, k = root / manifest, root / marker
  if m.exists():
    have = json.loads(m.read_text())
    if have.get("config") == want and complete(root, have, needed):
      return True
    if have.get("config") != want and remedy is not None:
      raise FileExistsError(f"{m}: holds a {what} built with other parameters "
                            f"({have.get('config')}); {remedy}")
    clear(root, dirs, files)
  elif k.exists():
    if json.loads(k.read_text()) != want:
      if remedy is not None:
        raise FileExistsError(f"{k}: an unfinished {what} with other parameters; {remedy}")
      clear(root, dirs, files)
  elif root.exists() and any(root.iterdir()):
    raise FileExistsError(f"{root}: not empty and not a {what}; refusing to write")
  return False
