"""The trainer's losses, by name, each a jaxloss function.

Every entry turns ``(logits, labels)`` (float ``[B]`` or ``[B, K]`` logits,
int ``[B]`` labels) into per-example losses ``[B]``; the trainer averages
them. The jaxloss function is looked up when the loss is built, so a loss
whose function this version of jaxloss lacks fails with a clear message
instead of at import.
"""

import dataclasses

import jax

import jaxloss


class LossError(ValueError):
  """An unknown loss, a loss that does not fit the task, or a bad option."""


@dataclasses.dataclass(frozen=True)
class Loss:
  name: str
  task: str
  function: str
  title: str  # In words, for figures.
  about: str
  options: tuple = ()


LOSSES = (
    Loss("bce", "binary", "binary_cross_entropy",
         "Binary cross entropy on probabilities",
         "BCELoss: sigmoid, then binary cross entropy on probabilities"),
    Loss("bce-logits", "binary", "sigmoid_binary_cross_entropy",
         "Binary cross entropy on logits",
         "BCEWithLogitsLoss: binary cross entropy on logits",
         ("label_smoothing",)),
    Loss("focal", "binary", "sigmoid_focal_loss", "Sigmoid focal loss",
         "focal loss on the logit (no alpha)", ("gamma",)),
    Loss("hinge", "binary", "hinge_loss", "Hinge loss",
         "hinge loss on the logit, labels mapped to -1/+1"),
    Loss("squared-hinge", "binary", "squared_hinge", "Squared hinge loss",
         "Keras's squared hinge on the logit"),
    Loss("perceptron", "binary", "perceptron_loss", "Perceptron loss",
         "perceptron loss on the logit, labels mapped to -1/+1"),
    Loss("sparsemax", "binary", "sparsemax_loss", "Sparsemax loss",
         "binary sparsemax loss"),
    Loss("ce", "multiclass", "softmax_cross_entropy_with_integer_labels",
         "Softmax cross entropy",
         "CrossEntropyLoss: softmax cross entropy", ("label_smoothing",)),
    Loss("focal", "multiclass", "categorical_focal_cross_entropy",
         "Categorical focal loss",
         "softmax focal loss on the logits (no alpha)", ("gamma",)),
    Loss("poly", "multiclass", "poly_loss_cross_entropy",
         "Poly-1 cross entropy", "Poly-1 cross entropy (epsilon 2)"),
    Loss("multiclass-hinge", "multiclass", "multiclass_hinge_loss",
         "Multiclass hinge loss", "multiclass (Crammer-Singer) hinge loss"),
    Loss("multi-margin", "multiclass", "multi_margin_loss",
         "Multi-margin loss", "torch's MultiMarginLoss (Weston-Watkins hinge)"),
    Loss("categorical-hinge", "multiclass", "categorical_hinge",
         "Categorical hinge loss", "Keras's categorical hinge"),
    Loss("perceptron", "multiclass", "multiclass_perceptron_loss",
         "Multiclass perceptron loss", "multiclass perceptron loss"),
    Loss("sparsemax", "multiclass", "multiclass_sparsemax_loss",
         "Multiclass sparsemax loss", "multiclass sparsemax loss"),
)

DEFAULT = {"binary": "bce-logits", "multiclass": "ce"}


def names(task=None):
  """Loss names, for one task or (sorted, without repeats) for both."""
  if task is not None:
    return tuple(l.name for l in LOSSES if l.task == task)
  return tuple(sorted({l.name for l in LOSSES}))


def find(name, task):
  for entry in LOSSES:
    if entry.name == name and entry.task == task:
      return entry
  if name in names():
    raise LossError(f"--loss {name!r} does not fit --task {task}; losses "
                    f"for {task}: {', '.join(names(task))}")
  raise LossError(f"--loss expected one of {', '.join(names(task))} for "
                  f"--task {task}, got {name!r}")


def title(name, task, options=None):
  """The loss in words, with the options that change it: for figures.

  ``options`` is anything with ``label_smoothing`` and ``gamma`` attributes
  (a trainer ``Config``).
  """
  entry = find(name, task)
  extras = []
  if options is not None:
    if "gamma" in entry.options:
      extras.append(f"gamma {options.gamma:g}")
    if "label_smoothing" in entry.options and options.label_smoothing:
      extras.append(f"label smoothing {options.label_smoothing:g}")
  return entry.title + (f" ({', '.join(extras)})" if extras else "")


def _function(entry):
  # jaxloss.get is the catalogue's registry; getattr covers a jaxloss
  # without it.
  get = getattr(jaxloss, "get", None)
  try:
    fn = get(entry.function) if get else getattr(jaxloss, entry.function)
  except (KeyError, AttributeError):
    fn = None
  if fn is None:
    raise LossError(f"--loss {entry.name} needs jaxloss.{entry.function}, "
                    f"which this version of jaxloss does not have")
  return fn


def build(name, task, *, label_smoothing=0.0, gamma=2.0):
  """The per-example loss ``fn(logits, labels) -> [B]`` named ``name``."""
  entry = find(name, task)
  if label_smoothing and "label_smoothing" not in entry.options:
    raise LossError(f"--label-smoothing applies to bce-logits and ce, not "
                    f"--loss {name}")
  if not 0.0 <= label_smoothing <= 1.0:
    raise LossError(f"--label-smoothing expected a value in [0, 1], got "
                    f"{label_smoothing}")
  if gamma != 2.0 and "gamma" not in entry.options:
    raise LossError(f"--gamma applies to focal, not --loss {name}")
  if gamma < 0:
    raise LossError(f"--gamma expected a value >= 0, got {gamma}")
  fn = _function(entry)
  if task == "binary":
    return _binary(entry.name, fn, label_smoothing, gamma)
  return _multiclass(entry.name, fn, label_smoothing, gamma)


def _binary(name, fn, label_smoothing, gamma):
  def loss(logits, labels):
    y = labels.astype(logits.dtype)
    if name == "bce":
      return fn(jaxloss.sigmoid(logits), y)
    if name == "bce-logits":
      return fn(logits, y, label_smoothing=label_smoothing)
    if name == "focal":
      return fn(logits, y, gamma=gamma)
    if name in ("hinge", "perceptron"):
      return fn(logits, 2 * y - 1)
    if name == "squared-hinge":
      # Averages over its last axis: one decision value per example.
      return fn(logits[:, None], (2 * y - 1)[:, None])
    return fn(logits, y)
  return loss


def _multiclass(name, fn, label_smoothing, gamma):
  def loss(logits, labels):
    if name == "ce":
      return fn(logits, labels, label_smoothing=label_smoothing)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if name == "focal":
      return fn(logits, one_hot, alpha=1.0, gamma=gamma, from_logits=True)
    if name in ("poly", "categorical-hinge"):
      return fn(logits, one_hot)
    return fn(logits, labels)
  return loss


def predictions(logits):
  """Predicted classes: the logit's sign for one logit, else the argmax."""
  if logits.ndim == 1:
    return (logits > 0).astype("int32")
  return logits.argmax(axis=-1).astype("int32")
