"""The convex study: the FISTA optimum is a true optimum, HSPG meets the issue's bar, and
HSPG with a larger half-space lr reaches the optimum's support at equal gradient evaluations."""

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


@pytest.fixture(scope="module")
def reference_hspg(digits):
  """The reference HSPG (eps 0.5, seed 0) on the full 300-epoch setting."""
  X, y = digits
  cfg = convex.parse_args(["--epsilons", "0.5"])
  params, history, _ = convex.train("hspg", 0.5, X, y, cfg)
  return cfg, params, history


def test_hspg_reaches_reference_sparsity_near_the_optimum(digits, optimum, reference_hspg):
  X, y = digits
  F_opt = convex.objective(optimum[0], optimum[1], X, y, 0.01)
  cfg, hspg_params, hspg_hist = reference_hspg
  prox_params, _, _ = convex.train("proxsg", None, X, y, cfg)
  F = convex.objective(hspg_params["W"], hspg_params["b"], X, y, 0.01)
  hspg_zeros = convex.zero_groups(hspg_params["W"])
  prox_zeros = convex.zero_groups(prox_params["W"])
  assert F <= 1.013 * F_opt
  assert hspg_zeros >= 27  # the PyTorch reference HSPG: 27-28/64
  assert hspg_zeros >= prox_zeros + 5  # Prox-SG: about 18/64
  # No group is zeroed during the first (subgradient) stage.
  assert max(hspg_hist["zero_groups"][:cfg.half_space_epoch]) == 0


def test_half_space_lr_finds_the_optimum_zeros_at_equal_gradient_evaluations(
    digits, optimum, reference_hspg):
  X, y = digits
  W_opt, b_opt, _ = optimum
  F_opt = convex.objective(W_opt, b_opt, X, y, 0.01)
  cfg, _, ref_hist = reference_hspg
  params, hist, _ = convex.train("hspg", 0.5, X, y, cfg, half_space_lr=1.0)
  # The bar: >= 34/64 zero groups with F within 0.5% of F*.
  assert convex.objective(params["W"], params["b"], X, y, 0.01) <= 1.005 * F_opt
  zeros = np.linalg.norm(np.asarray(params["W"]), axis=1) == 0
  assert zeros.sum() >= 34
  assert not np.any(zeros & (np.linalg.norm(W_opt, axis=1) > 0))  # only optimum-zero groups
  # Same budget as the reference: 300 epochs of ceil(1797 / 64) = 29 mini-batches.
  assert hist["grad_evals"][-1] == ref_hist["grad_evals"][-1] == 300 * 29
  assert hist["grad_evals"][:2] == [29, 58]
  # The first stage is the reference's, step for step.
  assert hist["F"][:cfg.half_space_epoch] == ref_hist["F"][:cfg.half_space_epoch]


def test_lr_schedule_with_a_half_space_lr():
  cfg = convex.parse_args(["--epochs", "40", "--half-space-epoch", "20", "--lr-drops", "10",
                           "30", "--lr", "0.2"])
  ref = convex.lr_schedule(cfg, steps_per_epoch=3)
  mine = convex.lr_schedule(cfg, steps_per_epoch=3, half_space_lr=1.5)
  for step in (0, 29, 30, 59, 60, 89, 90, 119):
    drops = sum(step >= 3 * e for e in (10, 30))
    base = 1.5 if step >= 60 else 0.2
    np.testing.assert_allclose(float(mine(step)), base * 0.1 ** drops, rtol=1e-6)
    np.testing.assert_allclose(float(ref(step)), 0.2 * 0.1 ** drops, rtol=1e-6)


def test_cli_quick_run_writes_results(tmp_path, capsys):
  argv = ["--quick", "--epsilons", "0.0", "--seeds", "3", "4", "--out", str(tmp_path)]
  assert convex.main(argv) == 0
  result = json.loads((tmp_path / "results.json").read_text())
  rows = result["rows"]
  assert [r["method"] for r in rows] == [
      "optimum (FISTA, float64)", "HSPG eps=0.0", "HSPG eps=0.5, half-space lr 1.0", "Prox-SG"]
  assert len(result["histories"]["Prox-SG"]["F"]) == 30
  for r in rows[1:]:
    per_seed = r["per_seed"]
    assert per_seed["seed"] == [3, 4]
    assert r["zero_groups"] == pytest.approx(np.mean(per_seed["zero_groups"]))
    assert r["zero_groups_std"] == pytest.approx(np.std(per_seed["zero_groups"]))
    assert r["F_std"] == pytest.approx(np.std(per_seed["F"]))
    assert 0 <= r["wrong_zeros"] <= r["zero_groups"]
    assert per_seed["grad_evals"] == [30 * 29] * 2 and r["grad_evals"] == 30 * 29
  for png in ("curves.png", "tradeoff.png"):
    assert (tmp_path / png).stat().st_size > 10_000
  out = capsys.readouterr().out
  assert "zero groups" in out and "grad evals" in out and "+/-" in out


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
    (["--seeds", "0", "-2"], "argument --seeds: must be an integer >= 0"),
    (["--half-space-lrs", "0"], "argument --half-space-lrs: must be a positive number"),
    (["--half-space-epsilon", "1"], "argument --half-space-epsilon: 1.0 is outside [0, 1)"),
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
