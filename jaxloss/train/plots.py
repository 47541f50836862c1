"""PNG figures: the tutorial's plots, saturation in float32, training curves.

matplotlib is imported lazily, with the non-interactive Agg backend, so
``import jaxloss`` never needs it.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jaxloss
from jaxloss.train import data as data_lib

FIGURES = ("sigmoid", "bce_branches", "softmax", "five_class", "saturation")


def _pyplot():
  matplotlib = data_lib.require("matplotlib", "drawing figures")
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)
  return path


def sigmoid(path):
  """The sigmoid and its derivative, whose peak is 0.25 at 0."""
  plt = _pyplot()
  x = jnp.linspace(-8.0, 8.0, 401)
  s, ds = jax.jit(lambda x: (jaxloss.sigmoid(x),
                             jax.vmap(jax.grad(jaxloss.sigmoid))(x)))(x)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(x, s, label=r"$\sigma(x)$")
  ax.plot(x, ds, label=r"$\sigma'(x) = \sigma(x)(1 - \sigma(x))$")
  ax.annotate("peak 0.25 at x = 0", xy=(0, 0.25), xytext=(1.5, 0.45),
              arrowprops={"arrowstyle": "->"})
  ax.set_xlabel("x")
  ax.set_ylabel(r"$\sigma(x)$ and $\sigma'(x)$")
  ax.set_title("sigmoid and its derivative: at most 0.25")
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left")
  return _save(fig, path)


def bce_branches(path):
  """-log(h) and -log(1 - h): the two branches of binary cross entropy."""
  plt = _pyplot()
  h = jnp.linspace(0.001, 0.999, 999)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(h, jaxloss.binary_cross_entropy(h, jnp.ones_like(h)),
          label=r"$y = 1$: $-\log(h)$")
  ax.plot(h, jaxloss.binary_cross_entropy(h, jnp.zeros_like(h)),
          label=r"$y = 0$: $-\log(1 - h)$")
  ax.set_xlabel("predicted probability h")
  ax.set_ylabel("loss")
  ax.set_title("binary cross entropy: the two branches")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def softmax(path):
  """softmax([1, 2, 3]), about [0.09, 0.24, 0.67]."""
  plt = _pyplot()
  z = jnp.array([1.0, 2.0, 3.0])
  p = np.asarray(jaxloss.softmax(z))
  fig, ax = plt.subplots(figsize=(5, 4))
  bars = ax.bar(["z = 1", "z = 2", "z = 3"], p, color="tab:blue")
  for bar, value in zip(bars, p):
    ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}",
            ha="center")
  ax.set_ylim(0, 0.8)
  ax.set_xlabel("logit")
  ax.set_ylabel("probability")
  ax.set_title("softmax([1, 2, 3])")
  return _save(fig, path)


def five_class_losses(probs=(0.6, 0.3, 0.1)):
  """Cross entropy of three five-class predictions giving the true class p.

  The other four classes share ``1 - p``; the loss is ``-log p``.
  """
  probs = np.asarray(probs)
  rows = np.concatenate(
      [probs[:, None], np.repeat((1 - probs[:, None]) / 4, 4, axis=1)], 1)
  losses = jaxloss.nll_loss(jnp.log(jnp.asarray(rows, jnp.float32)),
                            jnp.zeros(len(probs), jnp.int32))
  return probs, np.asarray(losses)


def five_class(path):
  """The five-class example: -log(0.6) < -log(0.3) < -log(0.1)."""
  plt = _pyplot()
  probs, losses = five_class_losses()
  fig, ax = plt.subplots(figsize=(5, 4))
  labels = [f"p = {p:.1f}" for p in probs]
  bars = ax.bar(labels, losses, color=["tab:green", "tab:orange", "tab:red"])
  for bar, value in zip(bars, losses):
    ax.text(bar.get_x() + bar.get_width() / 2, value + 0.03,
            f"{value:.3f}", ha="center")
  ax.set_xlabel("probability of the true class (the other four share the "
                "rest)", fontsize=8)
  ax.set_ylabel(r"cross entropy $-\log p$")
  ax.set_title("five classes: the less mass on the true class, the larger "
               "the loss", fontsize=9)
  return _save(fig, path)


def _prob_form(x, y):
  return jaxloss.binary_cross_entropy(jaxloss.sigmoid(x), y)


def _logit_form(x, y):
  return jaxloss.sigmoid_binary_cross_entropy(x, y)


@jax.jit
def _curves(logits, labels):
  return {name: (fn(logits, labels), jax.vmap(jax.grad(fn))(logits, labels))
          for name, fn in (("prob", _prob_form), ("logit", _logit_form))}


def saturation_curves(logits, label):
  """Loss and d loss / d logit, probability form and logit form, float32.

  Returns:
    ``{"prob": (loss, grad), "logit": (loss, grad)}`` of NumPy arrays, the
    probability form being ``binary_cross_entropy(sigmoid(x))`` and the
    logit form ``sigmoid_binary_cross_entropy(x)``.
  """
  logits = jnp.asarray(logits, jnp.float32)
  out = _curves(logits, jnp.full(logits.shape, label, jnp.float32))
  return jax.tree_util.tree_map(np.asarray, out)


def saturation(path):
  """Loss and gradient of BCE(sigmoid(x)) against BCEWithLogits(x), float32.

  For label 0, ``sigmoid(x)`` rounds to 1.0 from x of about 17: the
  probability form jumps to the clamp (100) and its gradient drops to 0,
  while the logit form stays exactly ``softplus(x)`` with gradient
  ``sigmoid(x)``. For label 1 the values hold (float32 keeps tiny
  probabilities), but the gradient still vanishes past x of about -28,
  where ``p (1 - p)`` falls under torch's 1e-12 floor.
  """
  plt = _pyplot()
  x = jnp.linspace(-50.0, 50.0, 2001, dtype=jnp.float32)
  fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
  for col, label in enumerate((0, 1)):
    curves = saturation_curves(x, label)
    ax = axes[0, col]
    ax.plot(x, curves["logit"][0], lw=3, alpha=0.5,
            label="logit form: sigmoid_binary_cross_entropy(x)")
    ax.plot(x, curves["prob"][0], "--",
            label="probability form: binary_cross_entropy(sigmoid(x))")
    ax.set_title(f"label {label}: loss")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left" if label == 0 else "upper right")
    ax = axes[1, col]
    ax.plot(x, curves["logit"][1], lw=3, alpha=0.5, label="logit form")
    ax.plot(x, curves["prob"][1], "--", label="probability form")
    ax.set_title(f"label {label}: gradient d loss / d logit")
    ax.set_xlabel("logit x (float32)")
    ax.set_ylabel("d loss / d x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Where BCE on probabilities saturates in float32 and BCE on "
               "logits does not")
  return _save(fig, path)


def figures(out, only=None):
  """Writes the tutorial's figures as ``out/<name>.png``; returns the paths."""
  out = pathlib.Path(out)
  names = FIGURES if only is None else only
  unknown = [n for n in names if n not in FIGURES]
  if unknown:
    raise ValueError(f"--only expected names from {', '.join(FIGURES)}, got "
                     f"{', '.join(unknown)}")
  return [globals()[name](out / f"{name}.png") for name in names]


def curves(history, path, title=""):
  """Loss and accuracy per epoch, from a trainer's history.

  ``title``, in words (the trainer's ``curves_title``), heads the figure.
  """
  plt = _pyplot()
  epochs = [r["epoch"] for r in history]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
  left.plot(epochs, [r["test_loss"] for r in history], "o-", label="test")
  ticks = _pyplot().MaxNLocator(integer=True)
  left.xaxis.set_major_locator(ticks)
  right.xaxis.set_major_locator(_pyplot().MaxNLocator(integer=True))
  left.set_xlabel("epoch")
  left.set_ylabel("loss")
  left.grid(alpha=0.3)
  left.legend()
  if "train_accuracy" in history[0]:
    right.plot(epochs, [r["train_accuracy"] for r in history], "o-",
               label="train")
  right.plot(epochs, [r["test_accuracy"] for r in history], "o-",
             label="test")
  right.set_xlabel("epoch")
  right.set_ylabel("accuracy")
  right.grid(alpha=0.3)
  right.legend()
  if title:
    fig.suptitle(title)
  return _save(fig, path)
