"""The convex study: the FISTA optimum is a true optimum, and HSPG meets the issue's bar."""

import json

import numpy as np
import pytest

from experiments import convex


@pytest.fixture(scope="module")
def digits():
  return convex.load_digits()


@pytest.fixture(scope="module")
def optimum(digits):
  X, y = digits
  return convex.fista(X, y, 0.01)


def test_fista_solution_satisfies_group_lasso_kkt(digits, optimum):
  X, y = digits
  W, b, _ = optimum
  _, gW, gb = convex._np_loss_grad(W, b, X.astype(np.float64), y)
  assert np.abs(gb).max() < 1e-7  # b is unregularised
  for w_r, g_r in zip(W, gW):
    n = np.linalg.norm(w_r)
    if n == 0:
      assert np.linalg.norm(g_r) <= 0.01 + 1e-7
    else:
      assert np.linalg.norm(g_r + 0.01 * w_r / n) < 1e-6
  # The PyTorch reference's optimum on this setting: F* = 0.863239, 36/64 zero groups.
  assert abs(convex.objective(W, b, X, y, 0.01) - 0.863239) < 2e-6
  assert convex.zero_groups(W) == 36


def test_hspg_reaches_reference_sparsity_near_the_optimum(digits, optimum):
  X, y = digits
  F_opt = convex.objective(optimum[0], optimum[1], X, y, 0.01)
  cfg = convex.parse_args(["--epsilons", "0.5"])
  hspg_params, hspg_hist, _ = convex.train("hspg", 0.5, X, y, cfg)
  prox_params, _, _ = convex.train("proxsg", None, X, y, cfg)
  F = convex.objective(hspg_params["W"], hspg_params["b"], X, y, 0.01)
  hspg_zeros = convex.zero_groups(hspg_params["W"])
  prox_zeros = convex.zero_groups(prox_params["W"])
  assert F <= 1.013 * F_opt
  assert hspg_zeros >= 27  # the PyTorch reference HSPG: 27-28/64
  assert hspg_zeros >= prox_zeros + 5  # Prox-SG: about 18/64
  # No group is zeroed during the first (subgradient) stage.
  assert max(hspg_hist["zero_groups"][:cfg.half_space_epoch]) == 0


def test_cli_quick_run_writes_results(tmp_path, capsys):
  assert convex.main(["--quick", "--epsilons", "0.0", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "results.json").read_text())
  methods = [r["method"] for r in result["rows"]]
  assert methods == ["optimum (FISTA, float64)", "HSPG eps=0.0", "Prox-SG"]
  assert len(result["histories"]["Prox-SG"]["F"]) == 30
  assert (tmp_path / "curves.png").stat().st_size > 10_000
  assert "zero groups" in capsys.readouterr().out


def test_cli_rejects_bad_options(capsys):
  with pytest.raises(SystemExit):
    convex.parse_args(["--epsilons", "1.2"])
  assert "--epsilons: 1.2 is outside [0, 1)" in capsys.readouterr().err
