"""``checked``: value checks that raise, even under ``jax.jit``."""

import functools

import jax
from jax.experimental import checkify

from jaxloss import _checks


class CheckError(ValueError):
  """An input value a loss has no meaning for, caught by :func:`checked`.

  Args:
    message: the function, the argument, the check and the first offending
      element.

  Example:
    >>> import jaxloss
    >>> issubclass(jaxloss.CheckError, ValueError)
    True

  References:
    ``jax.experimental.checkify.JaxRuntimeError``, which it replaces with a
    ``ValueError`` naming the loss's argument.
  """

  # Raised and printed as the public name: ``jaxloss.CheckError: ...``.
  __module__ = "jaxloss"


def checked(fn):
  r"""Wraps a jaxloss loss, or any function calling them, with value checks.

  Shapes, dtypes and options are checked at trace time always. What can only
  be seen in the values (an integer label outside ``[0, C)`` that is not
  ``ignore_index``, a probability outside [0, 1], a negative target where the
  loss needs it non-negative, NaN or infinite inputs where the loss has no
  meaning for them, a negative variance) is checked only inside ``checked``,
  with ``jax.experimental.checkify``: the function still runs compiled, and a
  failed check raises :class:`CheckError` (a ``ValueError``) naming the
  function, the argument, the check and the first offending element. Outside
  ``checked`` these checks compile to nothing.

  Args:
    fn: a function of arrays, typically a jaxloss loss or a user loss
      function that calls them (a whole training step, say); it may itself
      be jitted. The result raises from Python: call it outside ``jax.jit``
      and ``jax.vmap`` (``checked(jax.jit(step))``), where a call under them
      is a ``TypeError`` saying so.

  Returns:
    A function with ``fn``'s signature and result that raises
    :class:`CheckError` on invalid values and otherwise returns exactly what
    ``fn`` returns.

  Example:
    >>> import jaxloss
    >>> ce = jaxloss.checked(jaxloss.softmax_cross_entropy_with_integer_labels)
    >>> logits = jnp.zeros((3, 4))
    >>> print(ce(logits, jnp.array([0, 1, 3])))
    [1.3863 1.3863 1.3863]
    >>> ce(logits, jnp.array([0, 7, 3]))
    Traceback (most recent call last):
    ...
    jaxloss.CheckError: softmax_cross_entropy_with_integer_labels: labels must be in [0, 4); first offending element labels[1] = 7 (`check` failed)

  References:
    ``jax.experimental.checkify``.
  """
  checkified = checkify.checkify(fn, errors=checkify.user_checks)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    # The checks are traced only under this flag, which every jax.jit keys
    # its cache on: a jitted fn traced before is traced again, with them.
    with _checks.checking_on():
      error, out = checkified(*args, **kwargs)
    try:
      message = error.get()
    except jax.errors.ConcretizationTypeError:
      # Under an outer jit or vmap the verdict is not known until run time,
      # so there is nothing to raise from here.
      raise TypeError(
          f"checked({getattr(fn, '__name__', 'fn')}) was called under a "
          "jax.jit, jax.vmap or another staging transformation; it raises "
          "from Python, so call it outside them and put them inside: "
          "checked(jax.jit(fn))") from None
    if message is not None:
      raise CheckError(message)
    return out

  return wrapper
