"""The ``jaxloss`` command line, in-process through ``main`` and once as the
installed script."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from jaxloss import cli  # noqa: E402
from jaxloss.train import trainer  # noqa: E402

# Small widths and a constant schedule: every run below shares one compiled
# train step.
SMALL = ["--channels", "16", "--hidden", "64", "--lr", "0.01", "--schedule",
         "constant", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = tmp_path_factory.mktemp("cli")
  assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 0
  return out


def test_train_writes_its_outputs(trained):
  assert sorted(p.name for p in trained.iterdir()) == [
      "checkpoint.npz", "curves.png", "metrics.csv", "metrics.json"]
  records = json.loads((trained / "metrics.json").read_text())
  assert len(records) == 1
  assert {"epoch", "train_loss", "test_loss", "test_accuracy"} <= set(
      records[0])
  assert records[0]["test_accuracy"] > 0.8


def test_train_prints_the_final_table(tmp_path, capsys):
  assert cli.main(["train", "--epochs", "1", *SMALL]) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[0].split() == ["loss", "accuracy"]
  assert lines[1].split()[0] == "train" and lines[2].split()[0] == "test"
  assert float(lines[2].split()[2]) > 0.8


def test_eval_reports_the_checkpoints_accuracy(trained, capsys):
  assert cli.main(["eval", "--checkpoint", str(trained)]) == 0
  out = capsys.readouterr().out
  records = json.loads((trained / "metrics.json").read_text())
  accuracy = float(out.splitlines()[-1].split()[-1])
  assert out.splitlines()[-1].startswith("test accuracy")
  assert accuracy == pytest.approx(records[-1]["test_accuracy"], abs=1e-4)


def test_eval_on_another_file(trained, tmp_path, capsys):
  from sklearn.datasets import load_digits
  d = load_digits()
  path = tmp_path / "digits.npz"
  np.savez(path, x=d.images[:100], y=d.target[:100] % 2)
  assert cli.main(["eval", "--checkpoint", str(trained / "checkpoint.npz"),
                   "--data", str(path)]) == 0
  out = capsys.readouterr().out
  assert not any(line.startswith("train") for line in out.splitlines())
  assert float(out.splitlines()[-1].split()[-1]) > 0.8
  np.savez(path, x=d.images[:100], y=d.target[:100])
  assert cli.main(["eval", "--checkpoint", str(trained), "--data",
                   str(path)]) == 2
  assert "out of range for --task binary" in capsys.readouterr().err


def test_resume_continues(trained, tmp_path, capsys):
  out = tmp_path / "run"
  shutil.copytree(trained, out)
  assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "2",
                   "--quiet"]) == 0
  records = json.loads((out / "metrics.json").read_text())
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[0] == json.loads(
      (trained / "metrics.json").read_text())[0]
  assert trainer.load(out).epoch == 2
  assert "2 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--resume", "--lr", "0.1"], "--resume takes its settings from the "
                                  "checkpoint; drop --lr"),
    (["--resume"], "no such checkpoint"),
])
def test_resume_errors(tmp_path, capsys, argv, message):
  assert cli.main(["train", "--out", str(tmp_path), *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxloss train: error: ") and message in err


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "--resume needs --out DIR"),
    (["--loss", "ce"], "--loss 'ce' does not fit --task binary"),
    (["--task", "multiclass", "--loss", "hinge"],
     "--loss 'hinge' does not fit --task multiclass"),
    (["--loss", "hinge", "--label-smoothing", "0.1"],
     "--label-smoothing applies to bce-logits and ce"),
    (["--lr", "0"], "--lr expected a positive value, got 0.0"),
    (["--epochs", "0"], "--epochs expected a positive int, got 0"),
    (["--size", "64"], "--size applies to --synthetic only"),
    (["--model", "article", "--hidden", "8"],
     "--hidden does not apply to --model article"),
    (["--synthetic", "--task", "multiclass"], "--synthetic is a binary task"),
    (["--data", "missing.npz"], "missing.npz: no such file"),
])
def test_usage_errors_exit_2_without_traceback(capsys, argv, message):
  assert cli.main(["train", *argv]) == 2
  captured = capsys.readouterr()
  assert message in captured.err
  assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((20, 8, 8)), labels=np.zeros(20)), "missing key 'y'"),
    (dict(x=np.zeros((20, 8, 8)), y=np.zeros(19, int)),
     "'x' has 20 images but 'y' has 19 labels"),
    (dict(x=np.zeros((20, 8, 8)), y=np.full(20, 0.5)),
     "'y' expected integer labels"),
    (dict(x=np.zeros((20, 8, 8)), y=np.arange(20) - 3),
     "'y' labels out of range"),
    (dict(x=np.zeros((4, 8, 8)), y=np.arange(4) % 2), "too few examples: 4"),
])
def test_bad_data_files_exit_2(tmp_path, capsys, arrays, message):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  assert cli.main(["train", "--data", str(path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"jaxloss train: error: {path}: ")
  assert message in err and "Traceback" not in err


def test_own_data_trains(tmp_path, capsys):
  rng = np.random.default_rng(0)
  labels = np.arange(200) % 2
  # Bright images are class 1: learnable in a short run. 8x8 images in
  # batches of 64, like the digits: the compiled step is reused.
  x = rng.random((200, 8, 8, 1)) + labels[:, None, None, None]
  np.savez(tmp_path / "mine.npz", x=x, y=labels)
  assert cli.main(["train", "--data", str(tmp_path / "mine.npz"),
                   "--epochs", "5", *SMALL]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[2].split()[0] == "test" and float(lines[2].split()[2]) >= 0.9


def test_synthetic_article_model(capsys):
  assert cli.main(["train", "--synthetic", "--num-examples", "12", "--size",
                   "16", "--model", "article", "--epochs", "1",
                   "--quiet"]) == 0
  assert "test" in capsys.readouterr().out


def test_argparse_errors_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["train", "--optimizer", "lbfgs"])
  assert e.value.code == 2
  assert "invalid choice: 'lbfgs'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main([])
  assert e.value.code == 2


def test_missing_extra_exits_2_with_install_hint(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "sklearn", None)
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  assert cli.main(["train", "--quiet"]) == 2
  assert 'pip install "jaxloss[train]"' in capsys.readouterr().err


def test_interrupt_exits_130_with_resume_hint(monkeypatch, tmp_path, capsys):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(trainer, "train", interrupted)
  assert cli.main(["train", "--out", str(tmp_path), *SMALL]) == 130
  assert "--resume" in capsys.readouterr().err


def test_installed_script_runs_article():
  script = shutil.which("jaxloss", path=os.path.dirname(sys.executable))
  command = [script] if script else [sys.executable, "-m", "jaxloss.cli"]
  result = subprocess.run([*command, "article", "--size", "16"],
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert "sigmoid_binary_cross_entropy(logits, y)" in result.stdout
  assert "Where the two ways part" in result.stdout
