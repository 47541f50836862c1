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


def test_extend_trains_past_the_plan(trained, tmp_path, capsys):
  out = tmp_path / "run"
  shutil.copytree(trained, out)
  assert cli.main(["train", "--out", str(out), "--resume", "--extend", "1",
                   "--quiet"]) == 0
  records = json.loads((out / "metrics.json").read_text())
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[0] == json.loads(
      (trained / "metrics.json").read_text())[0]
  saved = trainer.load(out)
  assert saved.epoch == 2 and saved.config.epochs == 2
  assert saved.config.restarts == (1,)
  captured = capsys.readouterr()
  assert "2 epochs" in captured.out
  assert f"resuming {out} after epoch 1 of 2" in captured.err


def test_resume_with_nothing_to_do_says_so(trained, capsys):
  before = {p.name: p.read_bytes() for p in trained.iterdir()}
  assert cli.main(["train", "--out", str(trained), "--resume"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"{trained}: the run already finished the 1 epoch "
                        f"it planned (test accuracy ")
  assert "nothing to do" in out and "--resume --extend N" in out
  assert "wrote" not in out
  assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


def interrupt_after_first_save(monkeypatch):
  real_save = trainer.save

  def save_then_interrupt(path, state):
    real_save(path, state)
    raise KeyboardInterrupt

  monkeypatch.setattr(trainer, "save", save_then_interrupt)


COSINE = ["--channels", "16", "--hidden", "64", "--epochs", "3", "--quiet"]


@pytest.mark.slow  # A cosine schedule: a train step of its own to compile.
def test_resume_continues_the_schedule(tmp_path, monkeypatch, capsys):
  # A cosine run stopped after its first epoch and resumed gives the
  # uninterrupted run's numbers: the learning rate at every epoch, the
  # losses, and the parameters.
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  assert cli.main(["train", "--out", str(whole), *COSINE]) == 0
  interrupt_after_first_save(monkeypatch)
  assert cli.main(["train", "--out", str(cut), *COSINE]) == 130
  monkeypatch.undo()
  assert trainer.load(cut).epoch == 1
  assert cli.main(["train", "--out", str(cut), "--resume", "--quiet"]) == 0
  want = json.loads((whole / "metrics.json").read_text())
  got = json.loads((cut / "metrics.json").read_text())
  assert [r["epoch"] for r in got] == [1, 2, 3]
  drop = lambda records: [{k: v for k, v in r.items() if k != "seconds"}
                          for r in records]
  assert drop(got) == drop(want)
  assert [r["lr"] for r in got] == [r["lr"] for r in want]
  assert got[-1]["lr"] == 0.0
  a, b = trainer.load(whole), trainer.load(cut)
  assert a.step == b.step == 3 * 22
  jax_tree_equal(a.params, b.params)
  for x, y in zip(a.opt_leaves, b.opt_leaves, strict=True):
    np.testing.assert_array_equal(x, y)
  capsys.readouterr()


def jax_tree_equal(a, b):
  import jax
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("argv, message", [
    (["--resume", "--lr", "0.1"], "--resume takes its settings from the "
                                  "checkpoint; drop --lr (only --extend, "
                                  "--out and --quiet apply)"),
    (["--resume"], "no such checkpoint"),
])
def test_resume_errors(tmp_path, capsys, argv, message):
  assert cli.main(["train", "--out", str(tmp_path), *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxloss train: error: ") and message in err


@pytest.mark.parametrize("argv, message", [
    (["--resume", "--epochs", "30"],
     "--resume continues the run to the 1 epoch it planned; drop --epochs "
     "30, or add epochs past the plan with --extend N"),
    (["--resume", "--extend", "0"], "--extend expected a positive int, got 0"),
])
def test_resume_past_the_plan_must_be_explicit(trained, capsys, argv,
                                                message):
  assert cli.main(["train", "--out", str(trained), *argv]) == 2
  captured = capsys.readouterr()
  assert captured.err == f"jaxloss train: error: {message}\n"
  assert captured.out == ""


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
    (["--extend", "5"], "--extend adds epochs to a saved run: use it with "
                        "--resume --out DIR"),
])
def test_usage_errors_exit_2_without_traceback(capsys, argv, message):
  assert cli.main(["train", *argv]) == 2
  captured = capsys.readouterr()
  assert message in captured.err
  assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("command", ["train", "plot"])
def test_unwritable_out_is_a_usage_error(tmp_path, capsys, command):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  below_a_file = a_file / "run"
  for out, message in ((below_a_file, "cannot create the directory: Not a "
                                      "directory"),
                       (a_file, "expected a directory, got a file")):
    assert cli.main([command, "--out", str(out), "--only", "softmax"]
                    if command == "plot" else
                    [command, "--out", str(out), *SMALL]) == 2
    captured = capsys.readouterr()
    # Before any work, the header included.
    assert captured.err == (f"jaxloss {command}: error: --out {out}: "
                            f"{message}\n")
    assert captured.out == ""


def test_not_an_npz_is_named_for_what_it_is(tmp_path, capsys):
  text = tmp_path / "x.npz"
  text.write_text("x,y\n1,2\n")
  for path, message in (
      (text, "not an .npz archive: expected an .npz archive (numpy.savez) of "
             "arrays 'x' [N, H, W] or [N, H, W, C] and 'y' [N], got a text "
             "file"),
      (tmp_path, "is a directory; expected an .npz archive")):
    assert cli.main(["train", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxloss train: error: {path}: {message}")
    assert "pickle" not in err and "Traceback" not in err


def test_eval_of_a_file_that_is_no_checkpoint(trained, capsys):
  metrics = trained / "metrics.json"
  assert cli.main(["eval", "--checkpoint", str(metrics)]) == 2
  err = capsys.readouterr().err
  assert err == (f"jaxloss eval: error: {metrics}: not a jaxloss checkpoint: "
                 f"expected the checkpoint.npz that `jaxloss train --out DIR` "
                 f"writes, got a text file\n")


def test_divergence_stops_with_status_1(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["train", "--out", str(out), *SMALL, "--lr", "1e9"]) == 1
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err
  assert captured.err.splitlines()[-1].startswith(
      "jaxloss train: error: the train loss diverged: ")
  assert ("at epoch 1, over 1000 times its first value" in captured.err)
  assert (f"(--lr 1e+09); stopped. No epoch finished: {out} holds no "
          f"checkpoint. A smaller --lr may help") in captured.err
  assert not (out / "checkpoint.npz").exists() and captured.out == ""


def test_non_finite_loss_keeps_the_last_good_epoch(tmp_path, monkeypatch,
                                                   capsys):
  real = trainer.make_step

  def poisoned(*args):
    # The loss turns NaN on the first step of the second epoch.
    optimizer, schedule, step, init = real(*args)
    calls = []

    def step_then_nan(*a):
      calls.append(1)
      params, opt_state, value, acc = step(*a)
      return params, opt_state, value * (np.nan if len(calls) > 22 else 1), acc
    return optimizer, schedule, step_then_nan, init

  monkeypatch.setattr(trainer, "make_step", poisoned)
  out = tmp_path / "run"
  argv = ["train", "--out", str(out), *SMALL, "--epochs", "3"]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == (
      f"jaxloss train: error: the train loss is nan at epoch 2, step 1 of 22 "
      f"(--lr 0.01); stopped. {out} keeps epoch 1, the last good one: "
      f"jaxloss eval --checkpoint {out}. A smaller --lr may help")
  monkeypatch.undo()
  saved = trainer.load(out)
  assert saved.epoch == 1 and saved.step == 22
  assert len(json.loads((out / "metrics.json").read_text())) == 1
  assert cli.main(["eval", "--checkpoint", str(out)]) == 0
  assert float(capsys.readouterr().out.splitlines()[-1].split()[-1]) > 0.8


def test_a_failed_write_mid_run_exits_1(tmp_path, monkeypatch, capsys):
  def disk_full(out, history):
    raise OSError(28, "No space left on device", f"{out}/metrics.json")

  monkeypatch.setattr(trainer, "write_metrics", disk_full)
  assert cli.main(["train", "--out", str(tmp_path), "--epochs", "1",
                   *SMALL]) == 1
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == (f"jaxloss train: error: {tmp_path}/"
                                  f"metrics.json: No space left on device")
  assert "Traceback" not in err


def test_progress_redirected_is_plain_lines(capsys):
  # capsys's stderr is not a terminal: one line per epoch, no bar.
  assert cli.main(["train", "--epochs", "2", *SMALL[:-1]]) == 0
  err = capsys.readouterr().err
  assert "\r" not in err
  lines = err.splitlines()
  assert lines[0].startswith("digits: 1438 train / 359 test images of 1x8x8")
  assert [line.split()[:2] for line in lines[1:]] == [["epoch", "1/2"],
                                                      ["epoch", "2/2"]]


def test_progress_on_a_terminal_draws_bars(capsys, monkeypatch):
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
  assert cli.main(["train", "--epochs", "1", *SMALL[:-1]]) == 0
  err = capsys.readouterr().err
  assert "\r" in err and "epoch 1/1" in err


def test_quiet_keeps_the_header_and_the_table(capsys):
  assert cli.main(["train", "--epochs", "1", *SMALL]) == 0
  captured = capsys.readouterr()
  assert captured.err.splitlines() == [
      "digits: 1438 train / 359 test images of 1x8x8, binary (2 classes); "
      "model default (16673 parameters); loss bce-logits; adam lr 0.01 "
      "constant, batch 64, 1 epoch, seed 0"]
  assert captured.out.splitlines()[0].split() == ["loss", "accuracy"]


def interrupted(*args, **kwargs):
  raise KeyboardInterrupt


def test_synthetic_defaults_are_small_and_the_tutorials_size_warns(
    capsys, monkeypatch):
  assert cli.DIGITS_DEFAULTS["size"] == 64
  assert cli.main(["train", "--synthetic", "--epochs", "1", "--quiet"]) == 0
  err = capsys.readouterr().err
  assert err.startswith("synthetic: 26 train / 6 test images of 3x64x64")
  assert "warning" not in err
  # The warning comes before any training, which is not needed here.
  monkeypatch.setattr(trainer, "train", interrupted)
  assert cli.main(["train", "--synthetic", "--size", "256", "--num-examples",
                   "10", "--quiet"]) == 130
  err = capsys.readouterr().err
  assert err.startswith("jaxloss train: warning: 8 training images of "
                        "3x256x256 take seconds an epoch on a CPU, minutes "
                        "for the run; the default --size 64 trains in "
                        "seconds\n")


def test_curves_are_titled_in_words(tmp_path, monkeypatch, capsys):
  from jaxloss.train import plots
  figures = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
  assert cli.main(["train", "--out", str(tmp_path), "--epochs", "1",
                   "--loss", "focal", *SMALL]) == 0
  (fig,) = figures
  assert fig._suptitle.get_text() == (
      "Sigmoid focal loss (gamma 2), trained on handwritten digits, odd vs "
      "even")
  assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
  assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]
  capsys.readouterr()


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


def test_readme_quotes_the_divergence_of_lr_1e9(capsys):
  import pathlib
  import re
  assert cli.main(["train", "--lr", "1e9", "--quiet"]) == 1
  err = capsys.readouterr().err
  loss = float(re.search(r"the train loss diverged: (\S+) at epoch 1,",
                         err).group(1))
  readme = (pathlib.Path(__file__).resolve().parent.parent /
            "README.md").read_text()
  assert 1e30 < loss < np.finfo(np.float32).max
  assert ("`jaxloss train --lr 1e9` reaches a finite\nloss over 1e+30 in its "
          "first epoch") in readme
