"""End-to-end tests of ``hspg-asc``: training, pruning, data parallelism, resume, errors.

Every run here uses a tiny synthetic scene set (4 classes, 1-s clips, 32 log-mel
bands) and a CP-ResNet of width 1/32, so that a run compiles and trains in
seconds on 2 CPU cores. Two fake CPU devices come from conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.asc import cli
from experiments.asc import config as config_lib
from experiments.asc import export as export_lib
from experiments.asc import train as train_lib
from experiments.data import pipeline
from experiments.data import synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """``(root, cache_dir)`` of the tiny synthetic set, features cached."""
  base = tmp_path_factory.mktemp("asc")
  root = synthetic.make_default(base / "scenes", clips_per_class=8, locations_per_class=4,
                                evaluate_locations=1, clip_seconds=1.0,
                                classes=synthetic.CLASSES[:4], progress=False)
  return root, base / "cache"


def tiny_config(root, **overrides):
  cfg = config_lib.default_config()
  cfg.data.root = str(root)
  cfg.data.name = "tiny"
  cfg.data.features = "logmel"
  cfg.data.n_mels = 32
  cfg.data.workers = 1
  cfg.model.width_mult = 1 / 32
  cfg.model.rho = 3
  cfg.train.batch_size = 8
  cfg.train.eval_batch_size = 8
  cfg.train.epochs = 4
  cfg.train.loader_threads = 2
  cfg.train.eval_recalibrate_batches = 2
  cfg.optimizer.warmup_epochs = 2
  cfg.optimizer.learning_rate = 0.1
  cfg.optimizer.reg_strength = 1.0
  config_lib.apply_overrides(cfg, [f"{k}={v!r}" for k, v in overrides.items()])
  return cfg


@pytest.fixture(scope="module")
def tiny_data(tiny):
  root, cache = tiny
  cfg = tiny_config(root)
  from experiments.asc import data as data_lib

  return pipeline.prepare(root, features=data_lib.feature_config(cfg), cache_dir=cache,
                          progress=False, workers=1)


def read_metrics(run):
  return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def restore_last(run):
  """``(step, state, meta)`` of a run's last checkpoint, as arrays on one device.

  The target names the device explicitly, so a checkpoint written by another
  device layout (2 processes, say) restores here too.
  """
  from jax.sharding import SingleDeviceSharding

  one = SingleDeviceSharding(jax.devices()[0])
  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(Path(run).absolute() / "checkpoints" / "last",
                             item_handlers=handlers) as m:
    step = m.latest_step()
    tree = m.item_metadata(step)["state"]
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), tree)
    restored = m.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return step, jax.tree.map(np.asarray, restored["state"]), dict(restored["meta"])


# ----------------------------------------------------------------------------- end to end


def test_train_end_to_end_sparsifies_prunes_and_reports(tiny, tiny_data, tmp_path, capsys,
                                                        monkeypatch):
  root, _ = tiny
  cfg = tiny_config(root)
  summary = train_lib.train(cfg, tmp_path / "run", data=tiny_data, progress=False)
  metrics = read_metrics(tmp_path / "run")
  assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
  # Zero groups appear only in the half-space stage (after the 2 warm-up epochs).
  assert all(sum(m["zero_groups"].values()) == 0 for m in metrics[:2])
  assert [m["stage"] for m in metrics] == ["warmup", "warmup", "half_space", "half_space"]
  assert summary["group_sparsity"] > 0.05
  assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
  # The summary's sparsity is the fraction of exactly-zero groups of the saved params.
  _, state, _ = restore_last(tmp_path / "run")
  import hspg_jax

  run = train_lib.build(cfg, tiny_data)
  assert hspg_jax.group_sparsity(state["params"], run.graph.spec) == pytest.approx(
      summary["group_sparsity"])
  # Pruning: fewer parameters and MACs, same predictions, an export that loads alone.
  assert summary["pruned_agrees"] is True
  assert summary["params"]["pruned"] < summary["params"]["dense"]
  assert summary["macs"]["pruned"] < summary["macs"]["dense"]
  exported = export_lib.load(tmp_path / "run" / "pruned")
  source = tiny_data.sources["evaluate"]
  feats = np.stack([source[i]["features"] for i in range(len(source))])
  pred = np.argmax(exported.predict(feats), -1)
  acc = float(np.mean(pred == np.asarray(source.labels)))
  assert acc == pytest.approx(summary["eval"]["accuracy"])
  # The confusion matrix counts every evaluate clip once.
  conf = np.array(summary["eval"]["confusion"])
  assert conf.sum() == len(source) and np.trace(conf) / len(source) == pytest.approx(acc)
  for name in ("curves.png", "sparsity.png", "channels.png", "confusion.png"):
    assert (tmp_path / "run" / "plots" / name).stat().st_size > 1000
  # A finished run is not trained again.
  again = train_lib.train(cfg, tmp_path / "run", data=tiny_data, progress=False)
  assert again["eval"] == summary["eval"]
  # `evaluate` and `prune` from the folder agree with what training reported.
  monkeypatch.setenv("HSPG_CACHE_DIR", str(tiny[1]))
  capsys.readouterr()
  assert cli.main(["evaluate", str(tmp_path / "run"), "--which", "pruned", "--no-progress"]) == 0
  assert cli.main(["evaluate", str(tmp_path / "run"), "--no-progress"]) == 0
  assert cli.main(["prune", str(tmp_path / "run"), "--no-progress"]) == 0
  out = capsys.readouterr().out
  assert out.count(f"accuracy {100 * summary['eval']['accuracy']:.2f}%") == 2, out
  assert "pruned predictions equal the dense model's" in out


def test_recalibration_replaces_statistics_by_the_training_average(tiny, tiny_data):
  root, _ = tiny
  cfg = tiny_config(root, **{"train.recalibrate_batches": 0})
  run = train_lib.build(cfg, tiny_data)
  state = run.stepper.init_state(0)
  stats = train_lib.recalibrate(run, state.params, state.batch_stats)
  # Independent truth for the stem BatchNorm: the mean over training batches of
  # each batch's per-channel mean of the stem conv output.
  import jax.numpy as jnp

  model = train_lib.live_model(run, run.stepper.host(state.params),
                               run.stepper.host(state.batch_stats))
  src = tiny_data.sources["train"]
  gb = cfg.train.batch_size
  order = np.random.default_rng([cfg.seed, 0xBA7C]).permutation(len(src))
  order = order[:(len(src) // gb) * gb].reshape(-1, gb)
  means = []
  for row in order:
    x = tiny_data.stats.apply(np.stack([src[int(i)]["features"] for i in row]))
    y = model.stem_conv(jnp.asarray(x))
    means.append(np.asarray(jnp.mean(y, axis=(0, 1, 2))))
  np.testing.assert_allclose(run.stepper.host(stats)["stem_bn"]["mean"], np.mean(means, 0),
                             rtol=1e-4, atol=1e-5)


def test_mixup_batches_mix_each_clip_with_a_partner_of_the_global_batch():
  from experiments.asc import data as data_lib

  class Source:
    labels = np.arange(8) % 4

    def __len__(self):
      return 8

    def __getitem__(self, i):
      return {"features": np.full((2, 3, 1), float(i), np.float32), "label": self.labels[i]}

  order = data_lib.train_order(8, 4, seed=0, epoch=0)
  whole = list(data_lib.Batches(Source(), None, order, mixup_alpha=0.4, mixup_seed=(0, 0),
                                threads=0))
  halves = [list(data_lib.Batches(Source(), None, order, process_index=p, process_count=2,
                                  mixup_alpha=0.4, mixup_seed=(0, 0), threads=0))
            for p in range(2)]
  for k, b in enumerate(whole):
    ids = order[k]
    m = b["mix"]
    assert np.all((m >= 0.5) & (m <= 1))
    # Every feature value is m * own id + (1 - m) * partner id, the partner's label is label2.
    partner = (b["features"][:, 0, 0, 0] - m * ids) / (1 - m + 1e-12)
    for j in range(4):
      if m[j] < 0.999:
        assert round(float(partner[j])) in ids
        assert b["label2"][j] == Source.labels[round(float(partner[j]))]
    # Two processes see exactly the two halves of the same mixed global batch.
    joined = {key: np.concatenate([halves[0][k][key], halves[1][k][key]]) for key in b}
    for key in b:
      np.testing.assert_array_equal(joined[key], b[key])


# ----------------------------------------------------------------------------- data parallel


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")
def test_pmap_and_sharded_jit_give_the_same_training(tiny, tiny_data, tmp_path):
  root, _ = tiny
  results = {}
  # Two steps: this tiny network (BatchNorm over 4 clips a device) amplifies
  # float round-off within a few steps, so only a short run can be compared
  # tightly; a wrong reduction (a sum for a mean, unsynchronised BatchNorm
  # statistics) shows up at the first step.
  for name in ("pmap", "sharded"):
    cfg = tiny_config(root, **{"train.parallel": name, "train.epochs": 1,
                               "optimizer.warmup_epochs": 1, "train.max_steps_per_epoch": 2,
                               "train.prune": False})
    train_lib.train(cfg, tmp_path / name, data=tiny_data, progress=False, finalize=False)
    results[name] = (read_metrics(tmp_path / name), restore_last(tmp_path / name)[1])
  (m_p, s_p), (m_s, s_s) = results["pmap"], results["sharded"]
  assert m_p[0]["train_loss"] == pytest.approx(m_s[0]["train_loss"], rel=1e-4)
  moved = 0
  for tree in ("params", "batch_stats"):
    leaves_p, leaves_s = jax.tree.leaves(s_p[tree]), jax.tree.leaves(s_s[tree])
    assert len(leaves_p) == len(leaves_s) > 10
    for a, b in zip(leaves_p, leaves_s):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)
  init = train_lib.build(tiny_config(root), tiny_data).stepper
  for a, b in zip(jax.tree.leaves(s_s["params"]), jax.tree.leaves(init.host(init.init_state(0)).params)):
    moved = max(moved, float(np.max(np.abs(a - b))))
  assert moved > 0.01  # the steps changed the parameters well beyond the tolerance


# ----------------------------------------------------------------------------- subprocesses


def _config_file(path: Path, root, **overrides) -> Path:
  lines = ["from experiments.asc import config", "", "", "def get_config():",
           "  c = config.default_config()"]
  values = {
      "data.root": str(root), "data.name": "tiny", "data.features": "logmel", "data.n_mels": 32,
      "data.workers": 1, "model.width_mult": 1 / 32, "model.rho": 3, "train.batch_size": 8,
      "train.eval_batch_size": 8, "train.epochs": 2, "train.loader_threads": 2,
      "train.eval_recalibrate_batches": 2, "optimizer.warmup_epochs": 1,
      "optimizer.learning_rate": 0.1, "optimizer.reg_strength": 1.0, "train.prune": False,
      **overrides}
  lines += [f"  c.{k} = {v!r}" for k, v in values.items()]
  lines.append("  return c")
  path.write_text("\n".join(lines) + "\n")
  return path


def _env(cache, devices: int):
  env = dict(os.environ)
  env["HSPG_CACHE_DIR"] = str(cache)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_cmd(config, workdir, *extra):
  return [sys.executable, "-m", "experiments.asc.cli", "train", "--config", str(config),
          "--workdir", str(workdir), "--no-progress", *extra]


def test_kill_and_resume_ends_bit_identical(tiny, tiny_data, tmp_path):
  root, cache = tiny
  config = _config_file(tmp_path / "cfg.py", root, **{"train.checkpoint_every_steps": 1})
  env = _env(cache, jax.device_count())  # the same device count as this process
  cfg = config_lib.load(config)
  train_lib.train(cfg, tmp_path / "whole", data=tiny_data, progress=False)
  proc = subprocess.Popen(_train_cmd(config, tmp_path / "killed"), env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill it mid-epoch: once a checkpoint inside epoch 2 exists.
  last = tmp_path / "killed" / "checkpoints" / "last"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in last.glob("[0-9]*") if p.name.isdigit()] if last.exists() else []
    if steps and max(steps) >= 4:  # epoch 2 (3 steps an epoch) has begun
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  subprocess.run(_train_cmd(config, tmp_path / "killed"), env=env, check=True, cwd=REPO,
                 capture_output=True, timeout=600)
  step_a, state_a, meta_a = restore_last(tmp_path / "whole")
  step_b, state_b, meta_b = restore_last(tmp_path / "killed")
  assert step_a == step_b and meta_a == meta_b
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)
  ma = [{k: v for k, v in m.items() if k not in ("examples_per_sec", "epoch_time_s")}
        for m in read_metrics(tmp_path / "whole")]
  mb = [{k: v for k, v in m.items() if k not in ("examples_per_sec", "epoch_time_s")}
        for m in read_metrics(tmp_path / "killed")]
  assert ma == mb


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")
def test_two_processes_match_one_process_on_two_devices(tiny, tiny_data, tmp_path):
  root, cache = tiny
  overrides = {"train.epochs": 1, "optimizer.warmup_epochs": 1, "train.max_steps_per_epoch": 2,
               "train.eval_recalibrate_batches": 0}
  # The 2-process run goes all the way: recalibration, evaluation, pruning, export.
  config = _config_file(tmp_path / "cfg.py", root, **overrides, **{"train.prune": True})
  cfg = tiny_config(root, **{**overrides, "train.prune": False})
  train_lib.train(cfg, tmp_path / "single", data=tiny_data, progress=False, finalize=False)
  port = _free_port()
  env = _env(cache, 1)
  procs = [subprocess.Popen(
      _train_cmd(config, tmp_path / "multi", "--coordinator", f"127.0.0.1:{port}",
                 "--num-processes", "2", "--process-id", str(i)),
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  _, single, _ = restore_last(tmp_path / "single")
  _, multi, _ = restore_last(tmp_path / "multi")
  for a, b in zip(jax.tree.leaves(single["params"]), jax.tree.leaves(multi["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
  assert summary["finished"] and summary["eval"]["num_examples"] == len(
      tiny_data.sources["evaluate"])
  assert (tmp_path / "multi" / "pruned" / "weights.npz").is_file()
  for a, b in zip(read_metrics(tmp_path / "single"), read_metrics(tmp_path / "multi")):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["eval_acc"] == pytest.approx(b["eval_acc"])


# ----------------------------------------------------------------------------- robustness


class _Poisoned:
  """A source whose features are all NaN."""

  def __init__(self, source):
    self.source, self.labels = source, source.labels

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    item = dict(self.source[i])
    item["features"] = np.full_like(item["features"], np.nan)
    return item


def test_a_nonfinite_batch_leaves_the_state_untouched(tiny, tiny_data):
  root, _ = tiny
  run = train_lib.build(tiny_config(root), tiny_data)
  state = run.stepper.init_state(0)
  good = {"features": np.stack([tiny_data.sources["train"][i]["features"] for i in range(8)]),
          "label": np.asarray(tiny_data.sources["train"].labels[:8]),
          "weight": np.ones(8, np.float32)}
  state, m = run.stepper.train_step(state, good)  # one real step first
  before = run.stepper.host(state)
  bad = {**good, "features": np.full_like(good["features"], np.nan)}
  state, m = run.stepper.train_step(state, bad)
  after = run.stepper.host(state)
  assert int(np.asarray(m["finite"].addressable_data(0))) == 0
  for name in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
      np.testing.assert_array_equal(a, b)
  assert int(after.opt_state.notfinite_count) == 1
  for a, b in zip(jax.tree.leaves(before.opt_state.inner_state),
                  jax.tree.leaves(after.opt_state.inner_state)):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_batches_in_a_row_stop_the_run_and_keep_nothing_bad(tiny, tiny_data, tmp_path):
  import dataclasses

  root, _ = tiny
  cfg = tiny_config(root, **{"train.epochs": 1, "optimizer.warmup_epochs": 1,
                             "optimizer.max_nonfinite": 2, "train.prune": False})
  poisoned = dataclasses.replace(
      tiny_data, sources={**tiny_data.sources, "train": _Poisoned(tiny_data.sources["train"])})
  with pytest.raises(train_lib.TrainingStopped, match="2 batches in a row had non-finite"):
    train_lib.train(cfg, tmp_path / "run", data=poisoned, progress=False)
  assert not (tmp_path / "run" / "summary.json").exists()
  assert not list((tmp_path / "run" / "checkpoints" / "last").glob("[0-9]*"))
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""


def test_bad_configs_are_rejected_before_data(tmp_path, capsys):
  cfg = config_lib.default_config()
  with pytest.raises(config_lib.ConfigError, match="valid fields: .*optimizer.reg_strength"):
    config_lib.apply_overrides(cfg, ["optimizer.reg_strenght=1e-3"])
  with pytest.raises(config_lib.ConfigError, match="did you mean optimizer.reg_strength"):
    config_lib.apply_overrides(cfg, ["optimizer.reg_strenght=1e-3"])
  with pytest.raises(config_lib.ConfigError, match="takes a float"):
    config_lib.apply_overrides(cfg, ["optimizer.reg_strength=fast"])
  # Model keyword arguments: one at a time or as a dict.
  config_lib.apply_overrides(cfg, ["model.kwargs.growth=8"])
  assert cfg.model.kwargs.to_dict() == {"growth": 8}
  config_lib.apply_overrides(cfg, ["model.kwargs={'growth': 16, 'layers': (2, 2, 2)}"])
  assert cfg.model.kwargs.to_dict() == {"growth": 16, "layers": (2, 2, 2)}
  with pytest.raises(config_lib.ConfigError, match="takes a dict"):
    config_lib.apply_overrides(cfg, ["model.kwargs=3"])
  for override, valid in (("model.name=resnet50", "cp_resnet"),
                          ("optimizer.name=adamw", "hspg"),
                          ("optimizer.direction=rmsprop", "adam"),
                          ("optimizer.pruning_epochs=-1", "optimizer.pruning_epochs"),
                          ("optimizer.name=dhspg optimizer.pruning_epochs=25",
                           "optimizer.pruning_epochs.*past train.epochs")):
    bad = config_lib.apply_overrides(config_lib.default_config(), override.split())
    with pytest.raises(config_lib.ConfigError, match=valid):
      config_lib.validate(bad)
  # Through the CLI: exit status 2, one message naming the field or option, no traceback.
  for argv, expected in (
      (["train", "optimizer.epsilon=1.5"], "optimizer.epsilon"),
      (["train", "model.name=resnet50"], "unknown value 'resnet50'"),
      (["train", "--data", str(tmp_path / "nowhere")], "data.root"),
      (["train", "--config", str(tmp_path / "missing.py")], "--config"),
      (["train", "train.batch_size=7", "--workdir", str(tmp_path / "w")], "divisible"),
  ):
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, (argv, err)


def test_a_folder_holding_another_config_is_refused(tiny, tiny_data, tmp_path):
  root, _ = tiny
  cfg = tiny_config(root, **{"train.epochs": 1, "optimizer.warmup_epochs": 1,
                             "train.prune": False})
  train_lib.train(cfg, tmp_path / "run", data=tiny_data, progress=False, finalize=False)
  other = tiny_config(root, **{"train.epochs": 1, "optimizer.warmup_epochs": 1,
                               "train.prune": False, "optimizer.reg_strength": 0.5})
  with pytest.raises(train_lib.OtherConfigError, match="optimizer.reg_strength"):
    train_lib.train(other, tmp_path / "run", data=tiny_data, progress=False, finalize=False)
  train_lib.train(other, tmp_path / "run", data=tiny_data, progress=False, finalize=False,
                  overwrite=True)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["optimizer"]["reg_strength"] == 0.5
  # hspg-compare reruns a stale ASC result in its folder: it starts over there.
  from experiments import compare  # pylint: disable=import-outside-toplevel

  compare.train_or_restart(cfg, tmp_path / "run", data=tiny_data, progress=False,
                           finalize=False)
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["optimizer"]["reg_strength"] == cfg.optimizer.reg_strength != 0.5


def test_bad_data_is_reported_with_its_file(tmp_path, capsys):
  from experiments.data import testing

  root = testing.write_dcase2018(tmp_path / "set")
  meta = root / "meta.csv"
  lines = meta.read_text().splitlines()
  lines[2] = lines[2].replace(".wav", ".flac")  # a clip that does not exist
  meta.write_text("\n".join(lines) + "\n")
  code = cli.main(["train", "--data", str(root), "--workdir", str(tmp_path / "run"),
                   "--no-progress"])
  err = capsys.readouterr().err
  assert code == 2 and "meta.csv:3" in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- the grid


def one_device_stepper(cfg, steps_per_epoch):
  """``(stepper, state, batch, graph)``: cfg's model (4 classes) and optimizer on one
  device, and a fixed random batch of 4 clips of 24 x 24 x 2 features."""
  from flax import nnx

  import hspg_jax.flax
  import models
  from experiments.asc import optim
  from experiments.asc import step as step_lib

  model = models.get_model(cfg.model.name, 4, rngs=nnx.Rngs(0), **train_lib.model_kwargs(cfg))
  graph = hspg_jax.flax.analyze_channels(model, (1, 24, 24, 2))
  tx = optim.build(cfg, graph.spec, steps_per_epoch=steps_per_epoch)
  stepper = step_lib.Stepper(model, tx, "sharded", devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  batch = {"features": rng.normal(size=(4, 24, 24, 2)).astype(np.float32),
           "label": np.arange(4, dtype=np.int32), "weight": np.ones(4, np.float32)}
  return stepper, stepper.init_state(0), batch, graph


def test_every_seed_table_config_builds_and_steps_in_smoke_form():
  """Each cell's model and optimizer, shrunk by --smoke, takes one finite step."""
  from experiments.configs import seed_tables

  seen = set()
  for table, column, row in seed_tables.cells():
    path = REPO / "experiments" / "configs" / table / seed_tables.file_name(column, row)
    cfg = config_lib.smoke(config_lib.load(path))
    assert cfg.cell.table == table and cfg.cell.row == row and cfg.cell.column == column
    assert cfg.train.epochs == 3 and cfg.optimizer.warmup_epochs == 1
    full = config_lib.load(path)
    assert (full.train.epochs, full.optimizer.warmup_epochs) == (350, 50)
    assert (full.optimizer.learning_rate, full.optimizer.final_learning_rate) == (1e-4, 5e-6)
    # One step per model (the two tables share them); a column's baseline model is
    # stepped in its HSPG cells, with the more complex optimizer.
    key = cfg.model.name
    if key in seen or row == "baseline":
      continue
    seen.add(key)
    stepper, state, batch, _ = one_device_stepper(cfg, steps_per_epoch=2)
    state, m = stepper.train_step(state, batch)
    assert int(np.asarray(m["finite"].addressable_data(0))) == 1, key
  assert seen == {"vgg", "densenet", "densenet_dn1", "cp_resnet", "cp_resnet_rn1",
                  "cp_resnet_rn2", "cp_resnet_rn3"}


def test_grid_lists_runs_and_resumes_without_redoing_finished_cells(tiny, tiny_data, tmp_path,
                                                                    capsys, monkeypatch):
  del tiny_data  # features cached
  root, cache = tiny
  from experiments.asc import grid

  monkeypatch.setenv("HSPG_CACHE_DIR", str(cache))
  argv = ["grid", "--data", str(root), "--runs", str(tmp_path / "g"), "--smoke",
          "--only", "resnet_rn1", "--only", "vgg_hspg_1e-3", "--seeds", "2", "--no-progress",
          "data.features=logmel", "data.n_mels=32", "train.batch_size=8",
          "train.eval_batch_size=8", "data.workers=1"]
  assert cli.main(argv + ["--list"]) == 0
  listing = capsys.readouterr().out.splitlines()
  assert len(listing) == 4 and all("missing" in line for line in listing)
  # An "interrupted" grid: one run finished, then the whole grid is run.
  args = cli._parser().parse_args(argv)  # pylint: disable=protected-access
  jobs = grid.plan(args)
  name, cfg, run_dir = jobs[0]
  train_lib.train(cfg, run_dir, progress=False)
  first = (run_dir / "summary.json").stat().st_mtime_ns
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "4 runs, 1 finished, 3 to run" in out
  assert (run_dir / "summary.json").stat().st_mtime_ns == first  # not redone
  assert cli.main(argv + ["--list"]) == 0
  assert all("finished" in line for line in capsys.readouterr().out.splitlines())
  # And the table over the grid: two seeds per cell.
  assert cli.main(["table", str(tmp_path / "g"), "--out", str(tmp_path / "t")]) == 0
  text = (tmp_path / "t" / "table.md").read_text()
  assert "RN1" in text and "HSPG 1e-3" in text


# ----------------------------------------------------------------------------- optimizers by name


@pytest.mark.parametrize("name", [n for n in config_lib.OPTIMIZERS if n != "base"])
def test_every_optimizer_name_trains_a_model_and_sparsifies(name):
  """``optimizer.name=X`` builds X over the model's groups; a strong regulariser
  makes the exact zeros X promises (whole groups, or elements for the l1 methods)."""
  import hspg_jax

  cfg = tiny_config("synthetic", **{"optimizer.name": name, "optimizer.learning_rate": 0.5,
                                    "optimizer.final_learning_rate": 0.5,
                                    "optimizer.schedule": "constant", "optimizer.momentum": 0.0,
                                    "optimizer.warmup_epochs": 1, "optimizer.reg_strength": 20.0,
                                    "optimizer.l1_strength": 1.0, "optimizer.rho": 1.0,
                                    "optimizer.target_group_sparsity": 0.5,
                                    "optimizer.pruning_epochs": 2})
  if name == "dhspg":
    cfg.optimizer.reg_strength = 0.0  # its own default lambda: the target needs no tuning
  config_lib.validate(cfg)
  stepper, state, batch, graph = one_device_stepper(cfg, steps_per_epoch=1)
  zeros = []
  for _ in range(4):
    state, m = stepper.train_step(state, batch)
    assert int(np.asarray(m["finite"].addressable_data(0))) == 1
    params = jax.tree.map(np.asarray, state.params)
    zeros.append(int(hspg_jax.num_zero_groups(params, graph.spec)))
  assert zeros == sorted(zeros) or name in ("proxsg", "proxsg_l1", "admm")  # one-stage: no freeze
  grouped = [np.asarray(x) for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(
      graph.spec, is_leaf=lambda s: s is None)) if s is not None]
  zero_elements = sum(int(np.sum(x == 0)) for x in grouped)
  if name in ("proxsg_l1", "obproxsg"):
    assert zero_elements > 0
  elif name == "admm":
    z = jax.tree.map(np.asarray, hspg_jax.admm_consensus(state.opt_state))
    assert int(hspg_jax.num_zero_groups(z, graph.spec)) > 0
  elif name == "dhspg":
    (dh,) = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: isinstance(
        s, hspg_jax.DHSPGState)) if isinstance(s, hspg_jax.DHSPGState)]
    picked = sum(int(np.sum(np.asarray(t))) for t in dh.to_zero)
    total = sum(np.asarray(t).size for t in dh.to_zero)
    assert 0.5 * total <= picked < total  # K = int(G * min(target + tol, 0.999)) groups picked
    # pruning_epochs=2 after the 1-epoch warm-up: the target is met by step 3 of 4.
    assert zeros[2] >= np.ceil(0.5 * total), (zeros, total)
  else:
    assert zeros[-1] > 0
