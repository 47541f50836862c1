"""``jaxloss plot`` and the figures: every PNG written, the numbers drawn."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from jaxloss import cli  # noqa: E402
from jaxloss.train import data  # noqa: E402
from jaxloss.train import plots  # noqa: E402


def is_png(path):
  content = path.read_bytes()
  return content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) > 5000


def test_plot_writes_every_figure(tmp_path, capsys):
  assert cli.main(["plot", "--out", str(tmp_path)]) == 0
  names = sorted(p.name for p in tmp_path.iterdir())
  assert names == sorted(f"{n}.png" for n in plots.FIGURES)
  assert len(names) == 5
  for name in names:
    assert is_png(tmp_path / name), name
  assert len(capsys.readouterr().out.splitlines()) == 5


def test_plot_only(tmp_path, capsys):
  assert cli.main(["plot", "--out", str(tmp_path), "--only",
                   "softmax, five_class"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "five_class.png", "softmax.png"]
  assert cli.main(["plot", "--out", str(tmp_path), "--only", "tanh"]) == 2
  assert "--only expected names from sigmoid, bce_branches" in (
      capsys.readouterr().err)


def test_saturation_curves_float32():
  x = jnp.linspace(-50.0, 50.0, 2001, dtype=jnp.float32)
  xs = np.asarray(x, np.float64)
  zero, one = plots.saturation_curves(x, 0), plots.saturation_curves(x, 1)
  # The logit form is exact everywhere: softplus(x) for label 0.
  np.testing.assert_allclose(zero["logit"][0], np.logaddexp(0, xs),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(zero["logit"][1], 1 / (1 + np.exp(-xs)),
                             rtol=1e-5, atol=1e-7)
  # The probability form leaves it where float32 sigmoid rounds to 1.
  broken = np.abs(zero["prob"][0] - zero["logit"][0]) > 1.0
  first = xs[np.argmax(broken)]
  assert 15.0 < first < 18.0
  assert np.all(broken[xs >= 18])
  assert np.all(zero["prob"][0][xs >= 18] == 100.0)
  assert np.all(zero["prob"][1][xs >= 18] == 0.0)
  # Label 1: values agree, but below x of about -27.6, where p (1 - p)
  # falls under torch's 1e-12 floor, the gradient shrinks as e^(x + 27.6).
  np.testing.assert_allclose(one["prob"][0], one["logit"][0], rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(one["prob"][1][xs < -30],
                             -np.exp(xs[xs < -30]) / 1e-12, rtol=1e-3)
  assert np.all(np.abs(one["prob"][1][xs < -35]) < 1e-3)
  np.testing.assert_allclose(one["logit"][1][xs < -30], -1.0)


def test_tutorial_numbers():
  import jaxloss
  np.testing.assert_allclose(jaxloss.softmax(jnp.array([1.0, 2.0, 3.0])),
                             [0.09, 0.245, 0.665], atol=0.005)
  probs, losses = plots.five_class_losses()
  np.testing.assert_allclose(losses, -np.log([0.6, 0.3, 0.1]), rtol=1e-6)
  assert losses[0] < losses[1] < losses[2]


@pytest.fixture
def drawn(monkeypatch):
  """The figures the plot functions build, instead of their PNG files."""
  figures = []
  monkeypatch.setattr(plots, "_save",
                      lambda fig, path: figures.append(fig) or path)
  return figures


def test_every_axis_is_labelled_and_titled(tmp_path, drawn):
  plots.figures(tmp_path)
  assert len(drawn) == len(plots.FIGURES)
  for name, fig in zip(plots.FIGURES, drawn):
    for ax in fig.axes:
      assert ax.get_title() and ax.get_ylabel(), name
    # Shared x axes (saturation) label the bottom row only.
    assert fig.axes[-1].get_xlabel(), name
  sigmoid = drawn[0].axes[0]
  assert sigmoid.get_ylabel() == r"$\sigma(x)$ and $\sigma'(x)$"
  assert sigmoid.get_xlabel() == "x"
  # The saturation grid: a y label per row, an x label per column.
  saturation = drawn[plots.FIGURES.index("saturation")]
  assert [ax.get_ylabel() for ax in saturation.axes] == [
      "loss", "loss", "d loss / d x", "d loss / d x"]
  assert [ax.get_xlabel() for ax in saturation.axes] == [
      "", "", "logit x (float32)", "logit x (float32)"]


def test_curves_title_and_labels(tmp_path, drawn):
  history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8,
              "test_loss": 0.6, "test_accuracy": 0.7}]
  plots.curves(history, tmp_path / "c.png", title="Hinge loss on digits")
  (fig,) = drawn
  assert fig._suptitle.get_text() == "Hinge loss on digits"
  assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [
      ("epoch", "loss"), ("epoch", "accuracy")]
  assert [[line.get_label() for line in ax.get_lines()] for ax in fig.axes] \
      == [["train", "test"], ["train", "test"]]


def test_training_curves(tmp_path):
  history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 1 / e,
              "test_loss": 1.1 / e, "test_accuracy": 0.9 - 1 / e}
             for e in range(1, 4)]
  path = plots.curves(history, tmp_path / "sub" / "curves.png", title="t")
  assert is_png(path)


def test_missing_matplotlib(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with pytest.raises(data.MissingExtra, match="drawing figures needs "
                     "matplotlib"):
    plots.sigmoid(tmp_path / "s.png")
  assert cli.main(["plot", "--out", str(tmp_path)]) == 2
  assert 'pip install "jaxloss[train]"' in capsys.readouterr().err
