"""The comparison harness: metrics checked against NumPy, resume, missing methods, tables."""

import json

import numpy as np
import pytest

import hspg_jax
from experiments import compare
from experiments import convex

LAM = 0.05  # larger than the study's 0.01: the float64 optimum converges in fewer steps
TINY = ["--problems", "digits-group", "--seeds", "2", "--no-plot", "--no-progress",
        "--set", "digits-group.epochs=4", "digits-group.switch_epoch=2",
        "digits-group.lr_drops=(3,)", f"digits-group.lam={LAM}"]


def _np_ce_and_grad(W, b, X, y):
  """Mean softmax cross-entropy and its gradient, restated in float64 NumPy."""
  X = X.astype(np.float64)
  z = X @ W + b
  z = z - z.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  n = len(y)
  onehot = np.eye(W.shape[1])[y]
  g = (np.exp(logp) - onehot) / n
  return -np.sum(onehot * logp) / n, X.T @ g, g.sum(axis=0)


def _results(out, problem):
  return [json.loads(p.read_text()) for p in sorted((out / "results" / problem).rglob("*.json"))]


def test_registry_lists_the_issues_methods():
  assert set(compare.METHODS) == {"proxsg", "proxsg_l1", "admm", "obproxsg", "hspg", "dhspg",
                                  "hierarchical"}
  for name in compare.METHODS:
    assert name in compare.METHOD_DEFAULTS  # every method has documented defaults
  # The methods in hspg_jax today resolve; names are looked up at run time.
  assert compare.resolve_method("hspg")[1] is hspg_jax.hspg
  assert compare.resolve_method("proxsg")[1] is hspg_jax.prox_sg


def test_tiny_digits_group_run_matches_numpy(tmp_path, capsys):
  rc = compare.main(TINY + ["--methods", "hspg", "proxsg", "--out", str(tmp_path)])
  assert rc == 0
  records = _results(tmp_path, "digits-group")
  assert sorted((r["method"], r["seed"]) for r in records) == [
      ("hspg", 0), ("hspg", 1), ("proxsg", 0), ("proxsg", 1)]
  X, y = convex.load_digits()
  for r in records:
    W, b = np.asarray(r["params"]["W"], np.float64), np.asarray(r["params"]["b"], np.float64)
    ce, _, _ = _np_ce_and_grad(W, b, X, y)
    F = ce + LAM * np.sum(np.sqrt(np.sum(W * W, axis=1)))
    m = r["metrics"]
    assert m["F"] == pytest.approx(F, rel=1e-12)
    assert m["gap"] == pytest.approx(F / m["F_star"] - 1, rel=1e-9)
    assert m["zero_groups"] == int(np.sum(np.all(W == 0, axis=1)))
    assert m["num_groups"] == 64
    assert m["zero_elements"] == int(np.sum(W == 0)) and m["num_elements"] == W.size
    assert m["one_shot"] == (m["zero_groups"] > 0)
    assert m["seconds"] > 0
  # "of them zero at the optimum": the run's zero rows that are zero rows of the
  # float64 optimum too.
  W_opt = np.asarray(compare.PROBLEMS["digits-group"].optimum({"lam": LAM})["W"])
  for r in json.loads((tmp_path / "results.json").read_text())["records"]:
    W = np.asarray(r["params"]["W"], np.float64)
    both = np.all(W == 0, axis=1) & np.all(W_opt == 0, axis=1)
    assert r["metrics"]["zeros_at_optimum"] == int(both.sum()) <= r["metrics"]["zero_groups"]
  text = capsys.readouterr().out
  assert "== digits-group ==" in text and "optimum (float64)" in text
  assert "of them zero at the optimum" in text
  for name in ("table.md", "table.csv", "results.json"):
    assert (tmp_path / name).stat().st_size > 0


def test_shared_zeros_counts_rows_or_elements_as_the_run_stores_w():
  W_opt = np.zeros((4, 3))
  W_opt[1] = [1.0, 0.0, 2.0]
  W_opt[3, 2] = 1e-300  # tiny but not zero: the row is not a zero row
  run = np.zeros((4, 3))
  run[0, 0] = 5.0
  assert compare.shared_zeros({"W": run.tolist()}, {"W": W_opt.tolist()}) == 1  # row 2
  # digits-l1 stores W flat: one group per element. 12 elements, 3 non-zero at
  # the optimum, and the run's one non-zero element is among the other 9.
  assert compare.shared_zeros({"W": run.reshape(-1).tolist()}, {"W": W_opt.tolist()}) == 8


def test_l1_fista_optimum_satisfies_l1_optimality():
  X, y = convex.load_digits()
  X, y = X[:500], y[:500]  # a subset keeps the solve short
  W, b, _ = compare.fista_l1(X, y, LAM)
  _, gW, gb = _np_ce_and_grad(W, b, X, y)
  assert np.abs(gb).max() < 1e-7  # b is unregularised
  zero = W == 0
  assert 0 < zero.sum() < W.size
  assert np.all(np.abs(gW[zero]) <= LAM + 1e-7)
  np.testing.assert_allclose(gW[~zero], -LAM * np.sign(W[~zero]), atol=1e-7)


def _rec(label, seed, status="ok", **metrics):
  r = {"problem": "digits-group", "method": label, "label": label, "seed": seed, "status": status}
  if status == "ok":
    r["metrics"] = {"num_groups": 4, **metrics}
  else:
    r["reason"] = metrics["reason"]
  return r


def test_table_writer_on_fabricated_results():
  records = [
      _rec("a", 0, F=1.0, zero_groups=1, group_sparsity=0.25, element_sparsity=0.1, seconds=1.0,
           one_shot=True, train_accuracy=0.9),
      _rec("a", 1, F=2.0, zero_groups=3, group_sparsity=0.75, element_sparsity=0.3, seconds=3.0,
           one_shot=False, train_accuracy=0.92),
      _rec("b", 0, F=0.5, zero_groups=0, group_sparsity=0.0, element_sparsity=0.0, seconds=0.25,
           one_shot=False, train_accuracy=0.5),
      _rec("c", 0, status="unavailable", reason="hspg_jax.c is not available in this hspg_jax"),
      _rec("d", 0, status="not applicable", reason="d minimises something else"),
  ]
  summary = compare.summarize(records)
  # std is the sample standard deviation: values 1, 3 -> 1.414; 1.0, 2.0 -> 0.707107.
  assert compare.format_table(summary) == "\n".join([
      "== digits-group ==",
      "metric                                a                    b         c",
      "final F                               1.500000 ± 0.707107  0.500000  n/a",
      "zero groups                           2.0 ± 1.4 /4         0 /4      n/a",
      "group sparsity                        50.0% ± 35.4         0.0%      n/a",
      "element sparsity                      20.0% ± 14.1         0.0%      n/a",
      "runtime (s, compile excluded)         2.00 ± 1.41          0.25      n/a",
      "one-shot (exact zeros, no threshold)  1/2 seeds            no        n/a",
      "train accuracy                        91.00% ± 1.41        50.00%    n/a",
      "  c: unavailable: hspg_jax.c is not available in this hspg_jax",
      "  d: not applicable: d minimises something else",
  ])
  md = compare.format_markdown(summary).splitlines()
  assert md[4:7] == ["| metric | a | b | c |", "|---|---|---|---|",
                     "| final F | 1.500000 ± 0.707107 | 0.500000 | n/a |"]
  csv = compare.format_csv(summary).splitlines()
  assert csv[0] == "problem,method,metric,mean,std,n,values"
  assert "digits-group,a,F,1.5,0.7071067811865476,2,1.0 2.0" in csv


def test_resume_skips_finished_results(tmp_path, monkeypatch, capsys):
  argv = TINY + ["--methods", "hspg", "--out", str(tmp_path)]
  assert compare.main(argv) == 0
  first = {p: p.read_text() for p in (tmp_path / "results").rglob("*.json")}
  assert len(first) == 2
  capsys.readouterr()

  def no_training(*args, **kwargs):
    raise AssertionError("a finished result was trained again")

  monkeypatch.setattr(compare, "train_epochs", no_training)
  assert compare.main(argv) == 0
  assert capsys.readouterr().out.count("finished earlier, loaded") == 2
  assert {p: p.read_text() for p in (tmp_path / "results").rglob("*.json")} == first
  # A changed setting is a new result, not a stale one reused.
  argv = TINY + ["digits-group.lr=0.05", "--methods", "hspg", "--out", str(tmp_path)]
  assert compare.main(argv) == 1


def test_an_asc_result_from_other_engine_defaults_is_stale(tmp_path):
  # ASC results are keyed by the overrides asked for; the record keeps the
  # resolved config, and a default that has changed since makes it stale.
  job = compare.Job("asc-synthetic", "dhspg", (), 0)
  settings = compare.job_settings(
      job, {k: v for k, (v, _) in compare.PROBLEM_DEFAULTS["asc-synthetic"].items()})
  today = compare._asc_config(job, settings, ())  # pylint: disable=protected-access
  assert today["optimizer"]["name"] == "dhspg"
  path = compare.result_path(tmp_path, job, settings)
  record = {"status": "ok", "asc_config": compare._plain(today)}  # pylint: disable=protected-access
  compare._write_json(path, record)  # pylint: disable=protected-access
  assert compare.load_result(tmp_path, job, settings, today) == record
  older = json.loads(json.dumps(record))
  older["asc_config"]["optimizer"]["pruning_epochs"] = 0
  compare._write_json(path, older)  # pylint: disable=protected-access
  assert compare.load_result(tmp_path, job, settings, today) is None
  del older["asc_config"]  # a record from before configs were kept: loaded as it is
  compare._write_json(path, older)  # pylint: disable=protected-access
  assert compare.load_result(tmp_path, job, settings, today) == older


def test_unavailable_method_is_reported_not_crashed(tmp_path, monkeypatch, capsys):
  monkeypatch.delattr(hspg_jax, "prox_sg")
  argv = TINY[:3] + ["1"] + TINY[4:] + ["--methods", "proxsg", "hspg", "--out", str(tmp_path)]
  assert compare.main(argv) == 0
  out = capsys.readouterr().out
  assert "proxsg: unavailable: hspg_jax.prox_sg is not available in this hspg_jax" in out
  assert [r["method"] for r in _results(tmp_path, "digits-group")] == ["hspg"]  # nothing stored


@pytest.mark.parametrize("argv, flag", [
    (["--set", "digits-group.epochs=0"], "--set"),
    (["--set", "digits-group.switch_epoch=400"], "--set"),
    (["--set", "digits-gruop.epochs=3"], "--set"),
    (["--methods", "hspg:foo=1"], "--methods"),
    (["--methods", "sgd"], "--methods"),
    (["--seeds", "0"], "--seeds"),
])
def test_bad_arguments_name_the_option(argv, flag, capsys):
  with pytest.raises(SystemExit) as e:
    compare.parse_args(argv)
  assert e.value.code == 2
  assert f"argument {flag}" in capsys.readouterr().err


def test_builders_call_the_agreed_signatures():
  """Each registry entry calls its factory as I11_COMMON.md agrees (recorded, not run)."""
  calls = {}

  def recorder(name):
    def factory(*args, **kwargs):
      calls[name] = (args, kwargs)
    return factory

  problem = compare.PROBLEMS["digits-group"]
  base = {k: v for k, (v, _) in compare.PROBLEM_DEFAULTS["digits-group"].items()}
  for name, method in compare.METHODS.items():
    hp = {**base, **compare.method_defaults(name, "digits-group")}
    method.build(recorder(name), problem, 0.1, 29, hp)
  g = problem.groups
  assert calls["proxsg"] == ((0.1, 0.01, g), {"momentum": None})
  assert calls["admm"] == ((0.1, 0.01, g), {"rho": 1.0, "momentum": None})
  assert calls["obproxsg"] == ((0.1, 0.01, g), {"prox_steps": 30 * 29, "orthant_steps": None,
                                                "momentum": None})
  assert calls["hspg"] == ((0.1, 0.01, g), {"epsilon": 0.0, "half_space_start": 50 * 29,
                                            "momentum": None})
  assert calls["dhspg"] == ((0.1, 0.5625, g), {"direction": "sgd", "momentum": None,
                                               "reg_strength": None, "partition_step": 50 * 29,
                                               "pruning_steps": 100 * 29,
                                               "magnitude": "mean"})
  assert calls["hierarchical"] == ((0.1, 0.01, 0.001, g), {"half_space_start": 50 * 29,
                                                           "epsilon": 0.0, "momentum": None})


def test_admm_reports_the_sparsity_of_z(tmp_path, monkeypatch):
  """A stand-in ADMM (Prox-SG whose state also carries z = x with row 0 zeroed)."""
  import optax
  from typing import NamedTuple

  class FakeState(NamedTuple):
    inner: object
    z: object

  def fake_admm(learning_rate, reg_strength, groups, *, rho, momentum=None):
    inner = hspg_jax.prox_sg(learning_rate, reg_strength, groups, momentum=momentum)

    def update(u, state, params=None):
      u, s = inner.update(u, state.inner, params)
      new = optax.apply_updates(params, u)
      return u, FakeState(s, {"W": new["W"].at[0].set(0.0), "b": new["b"]})

    return optax.GradientTransformation(
        lambda p: FakeState(inner.init(p), p), update)

  monkeypatch.setattr(hspg_jax, "admm", fake_admm, raising=False)
  argv = TINY[:3] + ["1"] + TINY[4:] + ["--methods", "admm", "--out", str(tmp_path)]
  assert compare.main(argv) == 0
  (r,) = _results(tmp_path, "digits-group")
  W = np.asarray(r["params"]["W"])
  zW = W.copy()
  zW[0] = 0.0
  m = r["metrics"]
  assert m["zero_groups"] == int(np.sum(np.all(W == 0, axis=1)))
  assert m["z_zero_groups"] == int(np.sum(np.all(zW == 0, axis=1)))
  X, y = convex.load_digits()
  assert m["z_F"] == pytest.approx(convex.objective(zW, np.asarray(r["params"]["b"]), X, y, LAM))
