"""The one place where masks, weights and reductions are applied."""

import jax.numpy as jnp

from jaxloss import _checks


def stat_dtype(dtype):
  """The dtype losses are computed in: float32, or float64 for float64 input."""
  return jnp.promote_types(dtype, jnp.float32)


def mask(loss, keep):
  """Zeroes dropped elements; ``keep`` is None or a boolean of loss's shape.

  The caller is responsible for feeding dropped elements safe inputs, so that
  their gradient is an exact zero rather than ``0 * nan``.
  """
  return loss if keep is None else jnp.where(keep, loss, 0)


def reduce(fn, loss, reduction, *, denominator=None, keep=None):
  """Applies ``reduction`` to an already masked and weighted ``loss``.

  Args:
    fn: name of the public function, for error messages.
    loss: per-element loss, zero where an element is dropped.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    denominator: what ``"mean"`` divides the sum by: an array summed here
      (for instance the class weights of the kept labels, as torch's
      ``CrossEntropyLoss`` does). Defaults to the number of kept elements.
    keep: boolean mask of kept elements, used for the default denominator.

  Returns:
    ``loss`` itself for ``"none"``, else a scalar. A mean over nothing (zero
    denominator) is 0 with zero gradient, never NaN.
  """
  _checks.reduction(fn, reduction)
  if reduction == "none":
    return loss
  total = jnp.sum(loss)
  if reduction == "sum":
    return total
  if denominator is None:
    denominator = (jnp.asarray(loss.size, loss.dtype) if keep is None
                   else jnp.sum(keep, dtype=loss.dtype))
  else:
    denominator = jnp.sum(denominator, dtype=loss.dtype)
  # A zero denominator only happens when every element is dropped, so the
  # total is already zero: dividing by one keeps value and gradient at zero.
  return total / jnp.where(denominator == 0, 1, denominator)
