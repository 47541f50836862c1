"""Activations: thin, checked layers over ``jax.nn``.

``jax.nn`` already gets the numerics right (``log_sigmoid`` as
``-softplus(-x)``, ``log_softmax`` with a max shift and ``-inf`` support), so
these functions only add argument checks and float32 internals for half
precision input. Each returns the input's dtype, like ``jax.nn``.
"""

import jax
import jax.numpy as jnp

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction


def _floating(fn, x):
  x = _checks.floating(fn, "x", x)
  return x, x.astype(_reduction.stat_dtype(x.dtype))


def _class_mask(fn, where, x):
  if where is None:
    return None
  where = _checks.boolean(fn, "where", where)
  return _checks.conform(fn, "where", where, "x", x.shape)


def _normalised(fn, normalise, x, axis, where, fill):
  """``normalise(x, axis, where)`` in float32, ``fill`` where not taking part.

  A 0-d ``x`` is a single entry, normalised along ``axis`` 0 or -1 as torch
  allows: probability 1, log-probability 0.
  """
  x, x32 = _floating(fn, x)
  if x.ndim == 0:
    if isinstance(axis, int) and not isinstance(axis, bool) and axis in (
        0, -1):
      axis = -1
      x32 = x32[None]
    else:
      _checks.fail(fn, f"axis must be 0 or -1 for a 0-d x, got {axis!r}")
  axis = _checks.axes(fn, axis, x32.ndim)
  where = _class_mask(fn, where, x)
  if where is not None and x.ndim == 0:
    where = where[None]
  out = normalise(x32, axis=axis, where=where)
  if where is not None:
    out = jnp.where(where, out, fill)
  return out.reshape(x.shape).astype(x.dtype)


@_jit.jit()
def sigmoid(x):
  r"""Logistic sigmoid, :math:`\sigma(x) = 1 / (1 + e^{-x})`.

  Its derivative is :math:`\sigma(x)(1 - \sigma(x))`, at most 0.25 (at 0):
  stacked sigmoids shrink gradients by at least 4 per layer.

  Args:
    x: floating array of any shape.

  Returns:
    ``sigmoid(x)``, same shape and dtype as ``x``.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.sigmoid(jnp.array([-2.0, 0.0, 2.0])))
    [0.11920291 0.5        0.8807971 ]

  References:
    ``torch.sigmoid``; ``jax.nn.sigmoid``, which this wraps.
  """
  x, x32 = _floating("sigmoid", x)
  return jax.nn.sigmoid(x32).astype(x.dtype)


@_jit.jit()
def log_sigmoid(x):
  r"""Log of the sigmoid, computed stably as :math:`-\mathrm{softplus}(-x)`.

  .. math::
    \log \sigma(x) = -\log(1 + e^{-x})

  Exact at saturation: ``log_sigmoid(-1e4) == -1e4`` where
  ``log(sigmoid(-1e4))`` is ``-inf``.

  Args:
    x: floating array of any shape.

  Returns:
    ``log(sigmoid(x))``, same shape and dtype as ``x``.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.log_sigmoid(jnp.array([-1e4, 0.0, 40.0])))
    [-1.0000000e+04 -6.9314718e-01 -4.2483541e-18]

  References:
    ``torch.nn.functional.logsigmoid``; ``jax.nn.log_sigmoid``.
  """
  x, x32 = _floating("log_sigmoid", x)
  return jax.nn.log_sigmoid(x32).astype(x.dtype)


@_jit.jit("axis")
def softmax(x, axis=-1, where=None):
  r"""Softmax along ``axis``.

  .. math::
    \mathrm{softmax}(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}

  ``-inf`` entries get probability 0; entries excluded by ``where`` get 0 and
  are left out of the normalisation.

  Args:
    x: floating array; a 0-d ``x`` is one entry (``axis`` 0 or -1, as in
      torch).
    axis: int or tuple of ints, the axes normalised over.
    where: optional boolean mask broadcastable to the shape of ``x`` (never
      enlarging it): the entries taking part.

  Returns:
    Probabilities, same shape and dtype as ``x``.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.softmax(jnp.array([1.0, 2.0, 3.0])))
    [0.09003057 0.24472848 0.66524094]

  References:
    ``torch.softmax``; ``jax.nn.softmax``.
  """
  return _normalised("softmax", jax.nn.softmax, x, axis, where, 0)


@_jit.jit("axis")
def log_softmax(x, axis=-1, where=None):
  r"""Log-softmax along ``axis``: :math:`x_i - \log \sum_j e^{x_j}`.

  Entries excluded by ``where`` are ``-inf`` in the output.

  Args:
    x: floating array; a 0-d ``x`` is one entry (``axis`` 0 or -1, as in
      torch).
    axis: int or tuple of ints, the axes normalised over.
    where: optional boolean mask broadcastable to the shape of ``x`` (never
      enlarging it).

  Returns:
    Log-probabilities, same shape and dtype as ``x``.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.log_softmax(jnp.array([0.0, 0.0])))
    [-0.6931472 -0.6931472]

  References:
    ``torch.log_softmax``; ``jax.nn.log_softmax``.
  """
  return _normalised("log_softmax", jax.nn.log_softmax, x, axis, where,
                     -jnp.inf)
