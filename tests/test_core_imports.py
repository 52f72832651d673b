"""The core library imports only jax, optax and numpy."""

import subprocess
import sys


def test_core_import_pulls_no_heavy_optional_dependency():
  code = (
      "import sys, hspg_jax\n"
      "heavy = [m for m in ('flax', 'librosa', 'tensorflow_datasets', 'tensorflow', 'grain',"
      " 'sklearn', 'matplotlib') if m in sys.modules]\n"
      "print(','.join(heavy))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == ""


def test_public_api_is_exported():
  import hspg_jax

  for name in hspg_jax.__all__:
    assert hasattr(hspg_jax, name), name
