"""Public functions are jitted with their configuration keywords static."""

import jax


def jit(*static_argnames):
  """``jax.jit`` with the given keywords static, as ``jax.nn`` does it.

  Static keywords are Python values (``axis``, ``reduction``,
  ``label_smoothing``, ...): each distinct value compiles once, and the trace
  time checks on them cost nothing at run time.
  """
  def wrap(fn):
    return jax.jit(fn, static_argnames=static_argnames)
  return wrap
