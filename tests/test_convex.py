"""The convex study: the FISTA optimum is a true optimum, and HSPG meets the issue's bar."""

import json
from pathlib import Path

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
  assert "argument --epsilons: 1.2 is outside [0, 1)" in capsys.readouterr().err


def test_defaults_and_quick_follow_the_epochs():
  cfg = convex.parse_args([])
  assert (cfg.epochs, cfg.half_space_epoch, cfg.lr_drops) == (300, 50, [150, 225])
  quick = convex.parse_args(["--quick"])
  assert (quick.epochs, quick.half_space_epoch, quick.lr_drops) == (30, 5, [15, 22])
  # --quick changes defaults only: what is given explicitly wins.
  mine = convex.parse_args(["--quick", "--half-space-epoch", "10", "--lr-drops", "20"])
  assert (mine.epochs, mine.half_space_epoch, mine.lr_drops) == (30, 10, [20])


@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["--epochs", "0"], "argument --epochs: must be a positive integer"),
    (["--quick", "--half-space-epoch", "40"], "argument --half-space-epoch: must be in [0, "
     "--epochs=30], got 40"),
    (["--epochs", "100", "--lr-drops", "150"], "argument --lr-drops: 150 is outside [1, "
     "--epochs=100]"),
    (["--lr", "nan"], "argument --lr: must be a finite number >= 0"),
    (["--seed", "-2"], "argument --seed: must be an integer >= 0"),
    (["--lr-drops", "0"], "argument --lr-drops: must be a positive integer"),
])
def test_bad_options_name_the_flag(capsys, argv, needle):
  with pytest.raises(SystemExit) as e:
    convex.parse_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert needle in err.strip().splitlines()[-1] and "Traceback" not in err


def test_unwritable_out_fails_before_the_study(tmp_path, capsys, monkeypatch):
  def study(cfg, log=print):
    raise AssertionError("the study ran before --out was checked")

  monkeypatch.setattr(convex, "run_study", study)
  (tmp_path / "file").write_text("")
  with pytest.raises(SystemExit):
    convex.main(["--quick", "--out", str(tmp_path / "file")])
  assert "argument --out: " in capsys.readouterr().err
  target = "/proc/hspg-convex-test" if Path("/proc/self").is_dir() else None
  if target:  # not even root may create folders in /proc
    with pytest.raises(SystemExit):
      convex.main(["--quick", "--out", target])
    assert f"argument --out: cannot write to {target}: " in capsys.readouterr().err
