"""The one place where masks, weights and reductions are applied."""

import functools
import inspect

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _value_form

# Rows shorter than this are laid out flat for XLA:CPU (see `elementwise`).
NARROW = 128


def stat_dtype(dtype):
  """The dtype losses are computed in: float32, or float64 for float64 input."""
  return jnp.promote_types(dtype, jnp.float32)


def upcast_apart(x, dtype):
  """``x`` in ``dtype``, converted apart from any other conversion of it.

  For a second pass that reads half-precision input: where two fusions
  read one conversion, XLA:CPU writes a float32 copy out for both, and its
  conversion alone can take longer than the loss (bfloat16 [4096, 1024]:
  ``convex_kl_divergence`` 48 MiB of temporaries against optax's 32 and
  1.21x its time, 16 MiB and 0.52x with its mass terms' operands converted
  apart, in ``benchmarks/suite.py --dtype bfloat16``). ``x`` itself where
  it is already in ``dtype``.
  """
  if x.dtype == dtype:
    return x
  return lax.optimization_barrier(x).astype(dtype)


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
  if reduction == "mean" and denominator is not None:
    denominator = jnp.sum(denominator, dtype=loss.dtype)
  return reduce_total(total, reduction, loss.size, denominator=denominator,
                      keep=keep)


def reduce_total(total, reduction, size, *, denominator=None, keep=None):
  """``"sum"`` or ``"mean"`` (checked) of a loss of ``size`` elements
  whose sum is ``total``: the mean divides by ``denominator`` (a scalar),
  else by the number of kept elements (``keep``, or all ``size``), as
  :func:`reduce`."""
  if reduction == "sum":
    return total
  if denominator is None:
    denominator = (jnp.asarray(size, total.dtype) if keep is None
                   else jnp.sum(keep, dtype=total.dtype))
  # A zero denominator only happens when every element is dropped, so the
  # total is already zero: dividing by one keeps value and gradient at zero.
  return total / jnp.where(denominator == 0, 1, denominator)


def reduce_terms(fn, plain, exact, args, reduction):
  """:func:`reduce` of ``exact(*args)``, an unmasked elementwise loss
  whose guard only keeps ``0 * inf`` out (a clamp or a select on every
  term); reduced, its sum on CPUs is ``plain``'s unless that is NaN, its
  derivatives ``exact``'s (:func:`jaxloss._value_form.plain_value`).

  The reduced value costs the plain formula's sum and one scalar
  condition, and under differentiation the value's pass no longer carries
  the guard beside the gradient's (``poisson_nll_loss``: 1.2x the plain
  formula's time, value or value and gradient, with the guard on every
  term; 0.985x and 0.915x so, in ``benchmarks/suite.py --reduction
  mean``). ``plain`` and ``exact`` take ``args`` as they come.
  Half-precision ones are best upcast inside each (the condition's
  operands are written out), and in ``exact`` behind one barrier over all
  of them: else XLA:CPU shares the value's conversions (and exponentials)
  with the gradient's pass and writes them out (bfloat16
  ``poisson_nll_loss`` on [512, 256]: three float32 copies; none behind
  the barrier).
  """
  _checks.reduction(fn, reduction)
  if reduction == "none":
    return exact(*args)

  def summed(f):
    return lambda *a: jnp.sum(f(*a))

  total = _value_form.plain_value(summed(plain), summed(exact), *args)
  return reduce_total(total, reduction, jax.eval_shape(exact, *args).size)


# Rows under which the derivatives of `smooth_l1_loss` and `kl_div` are
# taken flat (see `elementwise`): `python benchmarks/suite.py --shapes
# narrow --only kl_div,poisson,smooth_l1_loss --no-write`, three runs each
# way, measured their gradients on rows of 10 (kl_div) and 16 at
# 0.44x-0.76x and 0.67x-0.83x the plain formula's time flat, against
# 0.70x-0.88x and 0.87x-0.94x at their own shape, compiled in 69-77 and
# 81-85 ms against 106-152 and 116-162 (Keras's `poisson` too, whose
# derivatives are now read apart instead). `huber_loss`,
# `hinge_embedding_loss` and the squared and absolute errors were slower
# flat in some runs, or kept a temporary.
FLAT_BELOW = 32


def elementwise(body=None, *, flat_derivatives=0, derivatives_apart=False):
  """Marks a loss computed element by element, and computes its value on
  narrow rows flat, on CPUs.

  XLA:CPU runs a loss's terms and their sum as one fused loop nest over the
  operands' shape, row by row: on rows of a few elements each operation
  pays the inner loop's overhead per row. ``huber_loss(x, y).mean()`` on
  4M elements takes 0.05 of the time of optax's (the same program,
  unflattened) at [4M, 1], 0.7 at [256K, 16], the same from rows of 128
  (``benchmarks/narrow_rows.py``). So where every array
  argument has the same shape, of at least two axes and a last axis shorter
  than ``NARROW``, and the rest are scalars, the value is the body's on the
  arrays reshaped to one axis, each behind an optimization barrier (else
  XLA moves the reshape back past the elementwise operations), and
  ``"none"``'s result is reshaped back. The reshapes are free (same
  layout).

  Derivatives (``grad``, ``jvp``, ...) are the body's at the arguments' own
  shape, value included (but with ``derivatives_apart``, below): flat,
  XLA:CPU could not write the gradient into the buffer of the terms it
  shares with the value (their shapes differ), and ``mse_loss``'s value
  and gradient took a temporary of their size (16 MiB on [1M, 4]; none
  unflattened), which made them slower. A tangent that is
  zero stays a symbolic zero (a zero tangent of the targets times an
  infinite derivative would be NaN). On rows shorter than
  ``flat_derivatives`` they are taken flat too: for losses whose derivative
  is many operations per element, each paying per row, more than the
  temporary costs on the shortest rows (on longer ones, at their own shape,
  the rows' overhead no longer outweighs it).

  With ``derivatives_apart``, on longer rows, the derivatives are the
  body's on the arguments read again behind one optimization barrier and
  laid out flat, and the value is the body's own. Sharing anything with
  the derivatives' pass, the value's terms have a second reader, and
  XLA:CPU then writes them out rather than fusing them with their sum; a
  constant broadcast to the arguments' shape is shared too, whatever the
  barrier (XLA merges equal broadcasts), and written out: flat, the
  derivatives' broadcasts have a shape of their own. ``hinge_loss``'s
  value and gradient so keep no temporary, where they kept the terms (16
  MiB on [16384, 256]). For losses whose value has no select (the terms
  of a select are written out in any case) and whose derivatives cost
  little to compute again; where the arrays' shapes differ (a broadcast
  target) the body is taken as it is. ``derivatives_apart="half"`` takes
  them so for half-precision operands alone, whose float32 conversions
  the value's sum and the gradient's pass would share (and XLA:CPU write
  out): for losses whose float32 programs keep no temporary as they are
  and run no faster apart (``l2_loss``'s gradient: 1.15x optax's time
  apart in float32 in ``benchmarks/suite.py --only l2_loss`` at commit
  31a1434, 0.99x as it is; in bfloat16 0.65x apart, 16 MiB of temporaries
  to none).

  On narrow rows, with ``derivatives_apart``, the value under
  differentiation is the flat one too, and the derivatives are the body's
  at the arguments' own shape: laid out apart, the two share nothing, and
  XLA:CPU fuses the value with its sum there as on longer rows. Taken
  together at the rows' shape, the value's terms were written out for
  the gradient's pass (``benchmarks/suite.py --shapes narrow``, rows of
  16: 16 MiB of temporaries for ``hinge_loss``'s value and gradient, 32
  MiB for ``hinge_embedding_loss``'s, none now). Such losses take no
  ``flat_derivatives``: flat, their derivatives took no less time on rows
  of 1 to 16 than apart at the rows' own shape (Keras's ``poisson``'s
  more, with a temporary of their size). Losses without
  ``derivatives_apart`` keep the value taken with the derivatives: flat,
  ``soft_margin_loss``'s and ``mean_squared_logarithmic_error``'s
  gradients took longer on some widths.

  Not under :func:`jaxloss.checked` (its messages index the arguments' own
  shapes), not for other reductions (torch's ``"batchmean"`` reads the
  batch axis), and not on other backends, whose fused loops don't depend
  on the rows. ``body`` must treat every element alike: no axis, no batch
  statistic of an axis. Its checks see equal shapes, so that no message
  names a flattened one.
  """
  if body is None:
    return functools.partial(elementwise, flat_derivatives=flat_derivatives,
                             derivatives_apart=derivatives_apart)
  if flat_derivatives and derivatives_apart:
    raise ValueError("elementwise: derivatives read apart are taken at the "
                     "rows' own shape; give flat_derivatives or "
                     "derivatives_apart, not both")
  signature = inspect.signature(body)

  @functools.wraps(body)
  def run(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = bound.arguments
    shape, operands = _same_shape_operands(arguments)
    if shape is None:
      return body(**arguments)
    apart = derivatives_apart is True or (derivatives_apart and any(
        _half(arguments[n].dtype) for n in operands))
    if not (len(shape) >= 2 and 0 < shape[-1] < NARROW):
      if apart:
        # A layout other than the arguments' (a vector's is [1, N]).
        layout = (-1,) if len(shape) != 1 else (1, -1)
        return _differentiated_as(body, body, arguments, operands,
                                  apart=True, layout=layout)
      return body(**arguments)

    def flat(**values):
      # A barrier each: one over all would give every operand a tangent.
      values.update({n: lax.optimization_barrier(jnp.reshape(values[n], -1))
                     for n in operands})
      out = body(**values)
      return out.reshape(shape) if values["reduction"] == "none" else out

    if shape[-1] < flat_derivatives:
      return flat(**arguments)
    return _differentiated_as(flat, body, arguments, operands, apart=apart)

  run.elementwise = True
  run.flat_derivatives = flat_derivatives
  run.derivatives_apart = derivatives_apart
  return run


def _differentiated_as(value_of, body, arguments, operands, *, apart=False,
                       layout=None):
  """``value_of(**arguments)``, differentiated (any order, any mode) as
  ``body`` at the ``operands`` as they are, or with ``layout``, read again
  in that shape behind one optimization barrier. Under differentiation the
  value is ``body``'s, computed with the derivatives, or ``value_of``'s own
  where ``apart`` (``derivatives_apart``). A tangent that is zero stays a
  symbolic zero (a zero tangent of the targets times an infinite
  derivative would be NaN)."""
  # The operands, then traced scalars (hyperparameters, which may be
  # differentiated); concrete values keep their trace-time checks.
  names = operands + [n for n, v in arguments.items()
                      if n not in operands and isinstance(v, jax.core.Tracer)]
  fixed = {n: v for n, v in arguments.items() if n not in names}
  count = len(operands)

  @jax.custom_jvp
  def value(*values):
    return value_of(**fixed, **dict(zip(names, values)))

  def rule(primals, tangents):
    live = [i for i, t in enumerate(tangents)
            if not isinstance(t, SymbolicZero)]
    moving = [tangents[i] for i in live]
    own = value(*primals) if apart else None
    if layout is not None:
      # After the reshape (else XLA moves it back past the elementwise
      # operations), and over every operand: those with no tangent (the
      # targets) must not be the value's either.
      arrays = lax.optimization_barrier(
          tuple(a.reshape(layout) for a in primals[:count]))
      primals = list(arrays) + list(primals[count:])
      moving = [t.reshape(layout) if i < count else t
                for i, t in zip(live, moving)]

    def of_live(*xs):
      values = list(primals)
      for i, x in zip(live, xs):
        values[i] = x
      return body(**fixed, **dict(zip(names, values)))

    out, tangent = jax.jvp(of_live, [primals[i] for i in live], moving)
    if own is None:
      return out, tangent
    return own, tangent.reshape(own.shape)

  # Traced when JAX differentiates, maybe after the body's own tracing:
  # with jnp's jit wrappers inlined, as the body (see `_jit.inlined`), and
  # the body's knowledge of its hyperparameters.
  value.defjvp(_jit.inlined(_jit.keeps_known(rule)), symbolic_zeros=True)
  return value(*(arguments[n] for n in names))


def _half(dtype):
  return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _same_shape_operands(arguments):
  """The one shape of every array argument and their names, or (None,
  None) where there is no such shape or nothing is to be laid out anew
  (see :func:`elementwise`: flat on narrow rows, the derivatives apart on
  longer ones)."""
  if (arguments.get("reduction") not in ("none", "mean", "sum")
      or jax.default_backend() != "cpu" or _checks.checking()):
    return None, None
  shapes, names = set(), []
  for name, value in arguments.items():
    if isinstance(value, (list, tuple)):
      return None, None   # an array-like the body converts: leave it alone
    if getattr(value, "ndim", 0):
      shapes.add(tuple(value.shape))
      names.append(name)
  if len(shapes) != 1:
    return None, None
  return shapes.pop(), names

