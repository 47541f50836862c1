"""Losses by name, read from the package namespace itself."""

import difflib
import inspect
import sys


class _UnknownLoss(KeyError, ValueError):
  """Unknown loss name: a ``KeyError`` (a failed lookup) and a ``ValueError``
  (a bad argument value), with a readable message."""

  def __str__(self):
    return self.args[0]


# Public functions that are not losses: activations, utilities, the value
# check wrapper and this registry. Everything else public is a loss, so a new
# loss is listed the moment it is exported.
_NOT_LOSSES = frozenset({
    "checked", "get", "log_sigmoid", "log_softmax", "names",
    "pairwise_distance", "sigmoid", "smooth_labels", "softmax", "sparsemax",
})


def _is_loss(name, value):
  # Factories (make_fenchel_young_loss) return losses but are not one.
  return not (name.startswith(("_", "make_")) or name in _NOT_LOSSES
              or inspect.isclass(value) or not callable(value))


def names():
  """Names of the loss functions in the public namespace, sorted.

  The list is read from the package: every public function except the
  activations (``softmax``, ``sparsemax``, ...), utilities
  (``smooth_labels``, ``pairwise_distance``, ``checked``) and factories of
  losses (``make_fenchel_young_loss``), so a new loss is listed as soon as it
  is exported.

  Args:
    None.

  Returns:
    tuple of str, sorted.

  Example:
    >>> import jaxloss
    >>> "ctc_loss" in jaxloss.names(), "softmax" in jaxloss.names()
    (True, False)

  References:
    Keras's ``keras.losses.get`` plays the same part.
  """
  package = sys.modules["jaxloss"]
  return tuple(sorted(
      name for name in getattr(package, "__all__", dir(package))
      if _is_loss(name, getattr(package, name, None))))


def get(name):
  """The loss function called ``name``, for picking a loss from a config.

  Args:
    name: a name from :func:`names`, e.g. ``"sigmoid_focal_loss"``.

  Returns:
    the function itself, e.g. ``jaxloss.sigmoid_focal_loss``.

  Raises:
    TypeError: ``name`` is not a string.
    KeyError: (also a ValueError) no loss has that name; the message lists
      close matches.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxloss
    >>> loss = jaxloss.get("sigmoid_binary_cross_entropy")
    >>> print(loss(jnp.array([0.0]), jnp.array([1.0])))
    [0.6931472]

  References:
    Keras's ``keras.losses.get`` plays the same part.
  """
  if not isinstance(name, str):
    raise TypeError(f"get: name must be a str, got {type(name).__name__}")
  known = names()
  if name in known:
    return getattr(sys.modules["jaxloss"], name)
  classes = getattr(sys.modules["jaxloss"].nn, "__all__", ())
  if name in classes:
    raise _UnknownLoss(f"get: {name!r} is a class, not a function: use "
                       f"jaxloss.nn.{name}")
  key = name.lower().replace("-", "_").replace(" ", "_")
  close = [n for n in known if key and key in n]
  close += [n for n in difflib.get_close_matches(key, known, n=5, cutoff=0.6)
            if n not in close]
  close = close[:5]
  hint = (f"; did you mean {', '.join(map(repr, close))}?" if close
          else "; jaxloss.names() lists them all")
  raise _UnknownLoss(f"get: no loss named {name!r}{hint}")
