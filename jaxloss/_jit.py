"""How public functions meet ``jax.jit``: structure static, numbers traced.

A public loss is compiled with ``jax.jit``. Its keywords fall in two kinds:

* **Structure** (``axis``, ``reduction``, ``ignore_index``, switches,
  callables, chunk sizes): static. Each distinct value is its own program,
  and the checks on it run once, at trace time.
* **Hyperparameters** (label smoothing, margins, temperatures, focusing
  parameters, ...): ordinary arguments. A Python number, a NumPy or JAX
  scalar or a tracer (under the caller's ``jit``, ``vmap`` or ``grad``) all
  work, and a new value never compiles again. A concrete value (a Python
  or NumPy number) is range-checked at trace time, with the function and the
  keyword in the message; an exact concrete zero is passed to the body as
  the Python number ``0.0``, so that a term it switches off costs nothing
  (:func:`is_zero`). Zero or not is part of the program's structure: a
  zero and a nonzero value compile once each. A concrete value of a
  hyperparameter that cannot be negative is known positive besides (at
  least float32's smallest normal number, every element of an array): a
  body may ask :func:`known_positive` and leave out a guard that only a
  zero needs (a subnormal value, which a flush to zero makes 0, compiles
  apart; a hyperparameter that may be negative never splits by sign). A
  traced value is range-checked under :func:`jaxloss.checked`. An array
  (integer or floating) is converted once, on entry, to the dtype the loss
  is computed in (float32, or float64 for a float64 model output),
  whatever its own.
"""

import contextvars
import functools
import inspect
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _checks

try:
  from jax.extend.core import find_top_trace as _find_top_trace
except ImportError:   # a JAX without it: see _differentiated_in_a_program
  _find_top_trace = None


class Hyper(NamedTuple):
  """A numeric hyperparameter: its interval, and what shapes it may take.

  ``optional`` admits ``None`` (a structural choice: no such term).
  ``array`` admits arrays, which the function broadcasts itself; otherwise
  the value must be a scalar (0-d after the caller's ``vmap``).
  """
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False
  optional: bool = False
  array: bool = False

  def interval(self):
    return (f"{'(' if self.low_open else '['}{_number(self.low)}, "
            f"{_number(self.high)}{')' if self.high_open else ']'}")

  def inside(self, v, xp):
    low = v > self.low if self.low_open else v >= self.low
    high = v < self.high if self.high_open else v <= self.high
    return xp.logical_and(low, high)


REAL = Hyper(high_open=True, low_open=True)
UNIT = Hyper(0.0, 1.0)
NON_NEGATIVE = Hyper(0.0, high_open=True)
POSITIVE = Hyper(0.0, low_open=True, high_open=True)


def _number(v):
  if v == math.inf:
    return "inf"
  if v == -math.inf:
    return "-inf"
  return repr(int(v)) if float(v).is_integer() else repr(v)


# What each structural keyword must be, for the message when it is traced or
# not hashable. Other static keywords read "a Python value".
_STATIC = {
    "axis": "an int or a tuple of ints",
    "reduction": "one of 'none', 'mean', 'sum'",
    "ignore_index": "a Python int or None",
    "implementation": "a string naming an implementation",
    "chunk_size": "None, an int or a pair of ints",
    "axis_name": "a mesh axis name or a tuple of them",
    "blank_id": "a Python int",
    "p": "a Python int",
    "reduce_fn": "a function or None",
    "distance_function": "a function or None",
    "distance": "a string",
    "divergence": "a string",
}


def _static_value(fn, name, value):
  """``value`` as a hashable static argument, or a clear error."""
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(value, (jax.Array, np.ndarray)) or not _hashable(value):
    what = _STATIC.get(name, "a Python value")
    given = ("a traced value" if isinstance(value, jax.core.Tracer)
             else f"a {type(value).__name__}")
    _checks.fail(fn, f"{name} must be {what}, fixed when the function is "
                 f"traced (it sets the program's structure), got {given}",
                 TypeError)
  return value


def _hashable(value):
  try:
    hash(value)
  except TypeError:
    return False
  return True


def _differentiated_in_a_program():
  """Whether the caller differentiates (``grad``, ``jvp``, ``linearize``)
  inside a program being traced (``jit``, a loop's body), read from JAX's
  stack of traces.

  There a call of the public function's own ``jit`` is first linearized as
  a call of its own (traced, then linearized equation by equation), and
  only then inlined: the same program as tracing the body in place, which
  takes up to half less time the first time. The ``jit`` caches
  both, so that a later trace at the same shapes costs next to nothing:
  the body traced in place is traced anew each time (as any function
  without a ``jit`` of its own, optax's included). Undifferentiated, the
  body traced in place saves nothing, and run op by op (eager ``grad``)
  it would dispatch every operation. Without the stack (another JAX
  version): False, the ``jit`` every time.
  """
  if _find_top_trace is None:
    return False
  trace, kinds = _find_top_trace(()), set()
  while trace is not None:
    kinds.add(type(trace).__name__)
    trace = getattr(trace, "parent_trace", None)
  return ("DynamicJaxprTrace" in kinds
          and not kinds.isdisjoint({"JVPTrace", "LinearizeTrace"}))


def _all_traced(arguments, static_argnames, hypers):
  """Whether every array argument is a tracer of the caller's program (or
  None): a NumPy array or a concrete one would reach the body as it is,
  where ``jit`` would have handed it a tracer."""
  return all(
      isinstance(leaf, jax.core.Tracer)
      for name, value in arguments.items()
      if name not in static_argnames and name not in hypers
      for leaf in jax.tree.leaves(value))


def _concrete(value):
  """Whether ``value`` is known on the host: a Python or NumPy number."""
  return isinstance(value, (int, float, np.ndarray, np.generic))


# The hyperparameters known positive in the body being traced: see jit.
_POSITIVE = contextvars.ContextVar("jaxloss_positive", default=frozenset())
_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def known_positive(name, value):
  """Whether the hyperparameter ``name``, ``value`` in the public function's
  body being traced, was concrete and positive (at least float32's
  smallest normal number, which no flush to zero turns into 0): passed so,
  or left at a default that is. False for a value passed to a
  hyperparameter that may be negative, whatever it is."""
  if isinstance(value, float):   # a default: the body's own constant
    return value >= _SMALLEST_NORMAL
  return name in _POSITIVE.get()


def keeps_known(fn):
  """``fn``, run with the hyperparameters known positive (see
  :func:`known_positive`) where ``keeps_known`` is called: for a
  derivative rule defined in a body, which JAX may trace after the body,
  when the loss went through its own ``jit``."""
  positive = _POSITIVE.get()

  @functools.wraps(fn)
  def run(*args, **kwargs):
    token = _POSITIVE.set(positive)
    try:
      return fn(*args, **kwargs)
    finally:
      _POSITIVE.reset(token)
  return run


def _hyper_value(fn, name, spec, value):
  """A hyperparameter checked as far as it is known: ``(value, is_zero,
  known_positive)``, the last for a hyperparameter that cannot be negative
  (see :func:`known_positive`)."""
  if value is None:
    if spec.optional:
      return None, False, False
    _checks.fail(fn, f"{name} must be a number, got None", TypeError)
  if not _concrete(value):
    if not isinstance(value, jax.Array):
      _checks.fail(fn, f"{name} must be a number or an array, got "
                   f"{type(value).__name__}", TypeError)
    _dtype(fn, name, value.dtype)
    if not spec.array and value.ndim:
      _checks.fail(fn, f"{name} must be a scalar, got shape {value.shape}")
    return value, False, False
  if isinstance(value, (bool, np.bool_)):
    _checks.fail(fn, f"{name} must be a number, got {value!r}", TypeError)
  a = np.asarray(value)
  _dtype(fn, name, a.dtype)
  if not spec.array and a.ndim:
    _checks.fail(fn, f"{name} must be a scalar, got shape {a.shape}")
  ok = spec.inside(a, np)
  if not np.all(ok):
    bad = a if a.ndim == 0 else a[~ok].reshape(-1)[0]
    shown = value if a.ndim == 0 and isinstance(value, (int, float)) else (
        bad.item())
    _checks.fail(fn, f"{name} must be in {spec.interval()}, got {shown!r}")
  if isinstance(value, int):
    value = float(value)
  return value, bool(np.all(a == 0)), bool(
      spec.low >= 0 and np.all(a.astype(np.float64) >= _SMALLEST_NORMAL))


def _dtype(fn, name, dtype):
  if not (jnp.issubdtype(dtype, jnp.floating)
          or jnp.issubdtype(dtype, jnp.integer)):
    _checks.fail(fn, f"{name} must be a real number, got dtype {dtype}",
                 TypeError)


def _loss_dtype(output):
  """The dtype a loss is computed in for the model output ``output``:
  float32, or float64 for float64 (None if it is not a floating array)."""
  dtype = getattr(output, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return None
  return jnp.promote_types(dtype, jnp.float32)


def _in_dtype(value, dtype):
  """A hyperparameter array in the loss's dtype, converted once.

  Its cotangent is then summed over all its uses in that dtype and rounded
  to its own once, at the end: a bfloat16 hyperparameter that a loss reads
  twice with opposite signs (the label smoothing's two terms) would
  otherwise have its cotangents added in bfloat16, and the difference lost.
  A float64 one (under ``jax_enable_x64``) does not make a float32 loss
  float64, and an integer one has a tangent in the loss's custom derivative
  rules (not the ``float0`` of an integer). Without a floating model
  output, the array is promoted to at least float32.
  """
  if _concrete(value):   # traced in place: an array, as `jit` passes it
    value = jnp.asarray(value)
  if not isinstance(value, jax.Array):
    return value
  if dtype is None:
    dtype = jnp.promote_types(value.dtype, jnp.float32)
  # Already there (a Python number arrives weakly typed): left as it is.
  return value if value.dtype == dtype else value.astype(dtype)


def is_zero(value):
  """Whether a hyperparameter is an exact zero known at trace time.

  Inside a public function's body a concrete zero arrives as the Python
  number ``0.0``: the term it weighs can be left out of the program.
  """
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and value == 0)


def cast(value, dtype):
  """A hyperparameter in the loss's dtype; an exact concrete zero stays the
  Python ``0.0`` (:func:`is_zero` still tells)."""
  return value if is_zero(value) else jnp.asarray(value).astype(dtype)


def concrete(value):
  """``value`` as a float when the host knows it (a Python or NumPy
  scalar), else None: for the rules an interval cannot state."""
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, (int, float, np.number)) or (
      isinstance(value, np.ndarray) and value.ndim == 0):
    return float(value)
  return None


def check_options(name, **options):
  """An object's numeric options, each ``(value, spec)``, checked as a
  function's concrete hyperparameters are (``jaxloss.nn`` classes check
  theirs when built); a traced one is left to the function it reaches."""
  for option, (value, spec) in options.items():
    if not isinstance(value, jax.Array):
      _hyper_value(name, option, spec, value)


def precheck(check):
  """A public function that runs ``check(**arguments)`` (defaults filled
  in) before its jitted body: for the rules a hyperparameter's interval
  cannot state, on what only the caller's Python knows (a margin positive
  with one distance but not another, probabilities given as a concrete
  array). The result keeps the jitted function's signature, docstring,
  ``static_argnames``, ``hyperparameters`` and ``compiled``.
  """
  def wrap(jitted):
    signature = inspect.signature(jitted)

    @functools.wraps(jitted)
    def public(*args, **kwargs):
      try:
        bound = signature.bind(*args, **kwargs)
      except TypeError:
        return jitted(*args, **kwargs)   # which says what is wrong
      bound.apply_defaults()
      check(**bound.arguments)
      return jitted(*args, **kwargs)

    return public
  return wrap


def inlined(fn):
  """``fn`` traced with ``jax.numpy``'s own ``jit`` wrappers inlined.

  Most ``jnp`` functions are ``jax.jit(..., inline=True)`` functions: each
  call under a trace looks up (on a miss: traces) a nested program, and
  under ``grad`` each is linearized as a call of its own. That is Python
  which runs once per shape, but it was most of a small loss's tracing
  time, and a guarded loss makes more ``jnp`` calls than its plain formula.
  A loss's body, and each derivative rule (which JAX traces apart from the
  body), runs under ``jax.disable_jit()``: a ``jnp`` function then binds
  its primitives straight into the program being traced. The same
  primitives, the same program. Nothing is run eagerly that was staged
  before: the body and its rules are only ever traced, into the public
  function's ``jit``. A loop must not meet it (``lax.scan`` would unroll):
  :func:`staged` turns it off again.
  """
  @functools.wraps(fn)
  def run(*args, **kwargs):
    with jax.disable_jit():
      return fn(*args, **kwargs)
  return run


def staged(fn):
  """``fn`` traced as written, ``jit`` on: for a ``lax.scan`` and for the
  caller's own functions, inside a body run by :func:`inlined`."""
  @functools.wraps(fn)
  def run(*args, **kwargs):
    with jax.disable_jit(False):
      return fn(*args, **kwargs)
  return run


def while_loop(cond, body, init):
  """``lax.while_loop``, staged as a loop inside a body run by
  :func:`inlined` (see :func:`staged`)."""
  return staged(jax.lax.while_loop)(inlined(cond), inlined(body), init)


def check_traced(fn, name, spec, value):
  """Under :func:`jaxloss.checked`: a traced hyperparameter in its interval.

  Concrete values were checked at trace time; this costs nothing outside
  ``checked``.
  """
  if (value is None or isinstance(value, (int, float))
      or not _checks.checking()):
    return
  value = jnp.asarray(value)
  ok = spec.inside(value, jnp) & ~jnp.isnan(value) if jnp.issubdtype(
      value.dtype, jnp.floating) else spec.inside(value, jnp)
  _checks.values(fn, name, ok, f"must be in {spec.interval()}", value)


def jit(*static_argnames, **hypers):
  """``jax.jit`` with ``static_argnames`` static and ``hypers`` traced.

  Args:
    *static_argnames: the structural keywords.
    **hypers: each numeric hyperparameter's :class:`Hyper`.

  The wrapped function has the original's signature and docstring. It
  exposes ``static_argnames`` and ``hyperparameters`` for introspection (the
  catalogue-wide tests read them).
  """
  static_argnames = tuple(static_argnames)

  def wrap(body):
    signature = inspect.signature(body)
    fn = body.__name__.lstrip("_")
    for name in (*static_argnames, *hypers):
      if name not in signature.parameters:
        raise TypeError(f"{fn} has no parameter {name!r}")

    first = next(iter(signature.parameters))

    def inner(_zero=frozenset(), _positive=frozenset(), **arguments):
      dtype = _loss_dtype(arguments.get(first))
      for name, spec in hypers.items():
        if name in _zero:
          arguments[name] = 0.0
        elif name in arguments:
          check_traced(fn, name, spec, arguments[name])
          arguments[name] = _in_dtype(arguments[name], dtype)
      token = _POSITIVE.set(_positive)
      try:
        return body(**arguments)
      finally:
        _POSITIVE.reset(token)

    # Inlined into a program being traced (the user's jit, grad, vmap): its
    # equations join that program, not a nested call that lowering and XLA
    # then inline again (a tenth of a small loss's compile time on CPUs).
    # Differentiated there, the body is traced in place instead (`direct`,
    # see `_differentiated_in_a_program`). The body runs with jnp's own jit
    # wrappers inlined (see `inlined`).
    direct = inlined(inner)
    compiled = jax.jit(direct,
                       static_argnames=static_argnames + ("_zero",
                                                          "_positive"),
                       inline=True)

    @functools.wraps(body)
    def public(*args, **kwargs):
      try:
        bound = signature.bind(*args, **kwargs)
      except TypeError as e:
        raise TypeError(f"{fn}: {e}") from None
      arguments = bound.arguments
      zero, positive = set(), set()
      for name, value in arguments.items():
        if name in hypers:
          arguments[name], zero_now, positive_now = _hyper_value(
              fn, name, hypers[name], value)
          if zero_now:
            zero.add(name)
          elif positive_now:
            positive.add(name)
        elif name in static_argnames:
          arguments[name] = _static_value(fn, name, value)
      call = (direct if _differentiated_in_a_program()
              and _all_traced(arguments, static_argnames, hypers)
              else compiled)
      return call(_zero=frozenset(zero), _positive=frozenset(positive),
                  **arguments)

    public.static_argnames = static_argnames
    public.hyperparameters = dict(hypers)
    public.compiled = compiled
    return public

  return wrap
