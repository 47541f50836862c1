"""Argument checks shared by every public function.

Every check runs at trace time on static information (shapes, dtypes, Python
options), so it costs nothing under ``jax.jit``. Messages follow one pattern:
``<function>: <argument> <what was expected>, got <what was given>``.
"""

import contextlib
import math
from collections.abc import Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("none", "mean", "sum")

# True while :func:`jaxloss.checked` traces: part of every ``jax.jit`` cache
# key, so that a function traced outside ``checked`` is traced again inside.
# A jax without ``make_user_context`` traces the checks everywhere (they
# lower to nothing outside ``checked``, at some compile time).
CHECKING = (jax.make_user_context(False) if hasattr(jax, "make_user_context")
            else None)


def fail(fn, message, error=ValueError):
  raise error(f"{fn}: {message}")


def reduction(fn, value, allowed=REDUCTIONS):
  if not isinstance(value, str) or value not in allowed:
    fail(fn, f"reduction must be one of {', '.join(map(repr, allowed))}, "
         f"got {value!r}")
  return value


def floating(fn, name, x):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    fail(fn, f"{name} must have a floating dtype, got {x.dtype}", TypeError)
  return x


def integer(fn, name, x):
  """Integer class indices, 8- and 16-bit ones widened to int32.

  Compared with a class count, ``ignore_index`` or a sentinel in their own
  dtype, such labels would wrap those around (128 reads -128 in int8, torch's
  -100 reads 156 in uint8).
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    fail(fn, f"{name} must have an integer dtype (class indices), got "
         f"{x.dtype}", TypeError)
  if x.dtype.itemsize < 4:
    x = x.astype(jnp.int32)
  return x


def not_ignored(labels, ignore_index):
  """``labels != ignore_index``, or None where no label is ignored: for no
  ``ignore_index``, or one the labels' dtype cannot hold (which the
  comparison would wrap around into it: -100 into uint32)."""
  if ignore_index is None:
    return None
  info = jnp.iinfo(labels.dtype)
  if not info.min <= ignore_index <= info.max:
    return None
  return labels != ignore_index


def numeric(fn, name, x):
  """Floats, integers or booleans: labels that are read as numbers."""
  x = jnp.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
    fail(fn, f"{name} must be numeric, got {x.dtype}", TypeError)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    fail(fn, f"{name} must be real, got {x.dtype}", TypeError)
  return x


def boolean(fn, name, x):
  x = jnp.asarray(x)
  if x.dtype != jnp.bool_:
    fail(fn, f"{name} must be a boolean mask, got {x.dtype}", TypeError)
  return x


def same_shape(fn, name, x, ref_name, ref):
  if x.shape != ref.shape:
    fail(fn, f"{name} shape {x.shape} does not match {ref_name} shape "
         f"{ref.shape}")


def shape_is(fn, name, x, shape, description):
  if x.shape != tuple(shape):
    fail(fn, f"{name} must have shape {tuple(shape)} ({description}), got "
         f"{x.shape}")


def conform(fn, name, x, ref_name, shape, *, class_axes=()):
  """``x`` broadcast to ``shape``, the shape of ``ref_name``: the shape contract.

  A loss's element shape is its predictions' shape. Targets, weights and
  masks may broadcast *to* it, by NumPy's rules aligned from the right, but
  never enlarge it: ``x`` has at most as many axes, and each of its axes has
  the reference's length or length 1. A class axis (``class_axes``, indices
  into ``shape``) must be present and match exactly: a single value spread
  over C > 1 classes is an error, not a broadcast. The commonest silent
  wrong number, [N] against [N, 1], is an error in both directions.

  Raises:
    ValueError naming ``fn``, both arguments and both shapes.
  """
  x = jnp.asarray(x)
  shape = tuple(shape)
  have = tuple(x.shape)
  offset = len(shape) - len(have)
  problem = None
  if offset < 0:
    problem = f"it has more axes than {ref_name}"
  else:
    for i, size in enumerate(shape):
      own = have[i - offset] if i >= offset else None
      if own == size:
        continue
      if i in class_axes and size != 1:
        problem = (f"the class axis {i} must have length {size}, as in "
                   f"{ref_name}" + ("" if own is None else f", not {own}"))
        break
      if own not in (None, 1):
        problem = f"axis {i} has length {own} where {ref_name} has {size}"
        break
  if problem is not None:
    target = ref_name if "shape" in ref_name else f"{ref_name} shape"
    fail(fn, f"{name} shape {have} does not broadcast to {target} {shape}: "
         f"{problem} ({name} may broadcast to it, never enlarge it)")
  return x if have == shape else jnp.broadcast_to(x, shape)


def broadcastable(fn, name, x, shape, ref_name):
  """``x`` broadcasts to ``shape`` by numpy's rules, aligned from the right."""
  try:
    if np.broadcast_shapes(x.shape, tuple(shape)) == tuple(shape):
      return jnp.broadcast_to(x, shape)
  except ValueError:
    pass
  fail(fn, f"{name} shape {x.shape} does not broadcast to {ref_name} shape "
       f"{tuple(shape)}")


def at_least_rank(fn, name, x, rank):
  if x.ndim < rank:
    fail(fn, f"{name} must have at least {rank} dimension"
         f"{'s' if rank > 1 else ''}, got shape {x.shape}")


def in_range(fn, name, value, low, high, *, low_open=False, high_open=False):
  """A Python scalar option inside an interval."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    fail(fn, f"{name} must be a Python number, got {type(value).__name__}",
         TypeError)
  too_low = value <= low if low_open else value < low
  too_high = value >= high if high_open else value > high
  if too_low or too_high or value != value:
    interval = (f"{'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")
    fail(fn, f"{name} must be in {interval}, got {value!r}")
  return value


def has_classes(fn, shape, axes, axis):
  """At least one class along ``axes`` (canonical) of ``shape``: a softmax,
  a maximum or a label over no class has no meaning."""
  if not math.prod(shape[a] for a in axes):
    fail(fn, f"the class axis {axis} must hold at least one class, got "
         f"shape {tuple(shape)}")


def flag(fn, name, value):
  """A switch: a Python (or NumPy) bool, never a string or a traced value,
  either of which would read as True."""
  if not isinstance(value, (bool, np.bool_)):
    fail(fn, f"{name} must be a bool, got {value!r}", TypeError)
  return bool(value)


def optional_int(fn, name, value):
  if value is not None and (isinstance(value, bool)
                            or not isinstance(value, (int, np.integer))):
    fail(fn, f"{name} must be an int or None, got {value!r}", TypeError)
  return value


def axes(fn, axis, ndim):
  """Distinct non-negative axes from an int or a tuple, in the order given.

  A tuple of class axes is flattened in that order (as optax does): the
  flat class index runs fastest along its last axis.
  """
  if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
    axis = (int(axis),)
  elif not (isinstance(axis, Sequence) and axis and all(
      isinstance(a, (int, np.integer)) and not isinstance(a, bool)
      for a in axis)):
    fail(fn, f"axis must be an int or a non-empty tuple of ints, got {axis!r}",
         TypeError)
  out = []
  for a in axis:
    if not -ndim <= a < ndim:
      fail(fn, f"axis {a} is out of bounds for logits of rank {ndim}")
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    fail(fn, f"axis {tuple(axis)} repeats an axis")
  return tuple(out)


def checking():
  """Whether value checks are traced: inside :func:`jaxloss.checked` only.

  Helpers that build a predicate for :func:`values` return early when this
  is False, so that a program outside ``checked`` traces none of it.
  """
  return CHECKING is None or CHECKING.value


def checking_on():
  """The context :func:`jaxloss.checked` traces under."""
  return contextlib.nullcontext() if CHECKING is None else CHECKING(True)


def values(fn, name, ok, check, x):
  """A check on values, active only under :func:`jaxloss.checked`.

  ``ok`` is an elementwise boolean of ``x``'s shape. Outside ``checked``
  nothing is traced (the caller's ``ok`` is dead code, which XLA removes),
  so valid code pays nothing, in compile time either. Under ``checked`` the
  check is a ``checkify.debug_check``: a failure raises with the argument,
  the check and the first offending index and value.
  """
  if not checking() or ok.size == 0:
    return
  from jax.experimental import checkify  # noqa: PLC0415
  bad = ~ok
  flat = jnp.argmax(bad.reshape(-1))
  index = jnp.unravel_index(flat, bad.shape) if bad.ndim else ()
  slots = ", ".join("{}" for _ in index)
  # The value is picked by a comparison, not read at a traced index: there
  # is no sharding rule for indexing a dimension sharded over an explicit
  # mesh axis, and the check is traced even when it is not run.
  first = x
  if x.ndim:
    at = lax.broadcasted_iota(jnp.int32, x.shape, 0)
    for d in range(1, x.ndim):
      at = at * x.shape[d] + lax.broadcasted_iota(jnp.int32, x.shape, d)
    picked = jnp.where(at == flat, x, jnp.zeros((), x.dtype))
    first = (jnp.any(picked) if x.dtype == bool
             else jnp.sum(picked, dtype=x.dtype))
  where = f"first offending element {name}[{slots}] = " if x.ndim else "got "
  checkify.debug_check(~jnp.any(bad), f"{fn}: {name} {check}; {where}{{}}",
                       *index, first)
