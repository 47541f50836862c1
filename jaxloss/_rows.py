"""Rows of classes: what every loss with a class axis shares.

The class axes moved last and flattened, row and class masks read as optax
reads ``where``, integer labels checked and masked, a row's cross entropy
from its statistics, and the final masking and reduction. Nothing here is
public; the cross-entropy kernels and the public losses build on it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction


def classes_last(fn, x, axis):
  """Moves the class axes of ``x`` last and flattens them into one.

  Returns the reshaped array, the batch shape and the canonical class axes.
  """
  axes = _checks.axes(fn, axis, x.ndim)
  _checks.has_classes(fn, x.shape, axes, axis)
  batch_axes = tuple(a for a in range(x.ndim) if a not in axes)
  batch_shape = tuple(x.shape[a] for a in batch_axes)
  if axes != tuple(range(x.ndim - len(axes), x.ndim)):
    x = jnp.transpose(x, batch_axes + axes)
  num_classes = math.prod(x.shape[len(batch_shape):])
  return x.reshape(batch_shape + (num_classes,)), batch_shape, axes


def split_where(fn, where, shape, axis, batch_shape, arg="logits"):
  """Reads ``where`` as optax does: a row mask, or a mask over the classes.

  A mask with fewer dimensions than ``arg`` broadcasts to the batch shape and
  drops whole rows; a mask of ``arg``'s rank broadcasts to its shape and
  drops classes (a row with no class left is dropped).

  Returns ``(row_keep, class_keep)``, either possibly None; ``class_keep`` is
  laid out like the output of :func:`classes_last`.
  """
  if where is None:
    return None, None
  where = _checks.boolean(fn, "where", where)
  if where.ndim == len(shape):
    where = _checks.broadcastable(fn, "where", where, shape, arg)
    class_keep, _, _ = classes_last(fn, where, axis)
    return jnp.any(class_keep, axis=-1), class_keep
  return _checks.broadcastable(fn, "where", where, batch_shape,
                               f"the batch shape of {arg}"), None


def masked_rows(fn, name, x, axis, where):
  """Floating ``x`` (argument ``name``) as rows of classes in the statistics
  dtype, with ``where`` read as a row mask only (a per-class mask is an
  error): ``(rows, batch_shape, row_keep)``."""
  x = _checks.floating(fn, name, x)
  rows, batch_shape, _ = classes_last(fn, x, axis)
  rows = rows.astype(_reduction.stat_dtype(rows.dtype))
  if where is not None and jnp.ndim(where) == x.ndim:
    _checks.fail(fn, f"where must be a row mask with the batch shape "
                 f"{batch_shape}, got shape {jnp.shape(where)}")
  row_keep, _ = split_where(fn, where, x.shape, axis, batch_shape, name)
  return rows, batch_shape, row_keep


def class_weight(fn, weight, num_classes, dtype):
  if weight is None:
    return None
  weight = _checks.numeric(fn, "weight", weight)
  _checks.shape_is(fn, "weight", weight, (num_classes,), "one per class")
  return weight.astype(dtype)


# Rows shorter than this take the forms that XLA:CPU's fused row sums run
# faster on short rows (see :func:`short_rows_on_cpu`).
SHORT_ROWS = 32


def short_rows_on_cpu(length):
  """Whether rows of ``length`` elements take the short-row forms: on CPUs,
  under :data:`SHORT_ROWS`.

  XLA:CPU fuses a row sum with its terms into one loop nest, and on short
  rows what each operation costs per row depends on the form (a cap's
  absolute value, say), so that two forms of the same numbers trade places
  as the rows lengthen. ``python benchmarks/row_forms.py`` times each form
  on rows of 2 to 8192 elements.
  """
  return jax.default_backend() == "cpu" and length < SHORT_ROWS


def logsumexp(x, where=None):
  """The log-sum-exp over the last axis, kept, with no select on [..., C]
  arrays (``jax.nn.logsumexp`` has two), which XLA:CPU fuses with the
  maximum; ``where`` (optional, boolean) drops entries, applied once as a
  ``-inf`` bound. A row of ``-inf`` reads the lowest finite number, with
  zero derivatives: its sum of exponentials, 0, is floored at the smallest
  normal number (a bare log there had the gradient ``0 * (0 / 0)``, NaN on
  the whole row even where no label weighs it)."""
  if where is not None:
    x = jnp.where(where, x, -jnp.inf)
  info = jnp.finfo(x.dtype)
  top = jax.lax.stop_gradient(
      jnp.maximum(jnp.max(x, axis=-1, keepdims=True), info.min))
  total = jnp.sum(jnp.exp(x - top), axis=-1, keepdims=True)
  return top + _floored_log(total)


@jax.custom_jvp
def _floored_log(t):
  """``log(max(t, tiny))``, its derivative ``dt / max(t, tiny)`` in
  arithmetic: ``jnp.maximum``'s is a select, which kept XLA:CPU from
  fusing the derivatives of :func:`logsumexp` and of :func:`cross_sum`
  with the sum of the labels (``ranking_softmax_loss``'s gradient: 0.8x
  the compile time and half the temporaries so, on rows of 8). Exact: the
  sum of exponentials is under ``tiny`` only on a row of ``-inf``, where
  its tangent is 0."""
  return jnp.log(jnp.maximum(t, jnp.finfo(t.dtype).tiny))


@_floored_log.defjvp
@_jit.inlined
def _floored_log_jvp(primals, tangents):
  (t,), (dt,) = primals, tangents
  return _floored_log(t), dt / jnp.maximum(t, jnp.finfo(t.dtype).tiny)


def zero_flag(x):
  """1 where ``x`` is 0, 0 wherever it is not, NaN at NaN: ``1 - |sign x|``.

  Arithmetic rather than a comparison, for the value forms
  (:mod:`jaxloss._value_form`): XLA:CPU fuses it with a sum, where a select
  would have the terms written out first. Not for differentiation (its
  derivative is 0 almost everywhere, as the select's is).
  """
  return 1 - lax.abs(lax.sign(x))


def cap_unless_zero(c, sign=1, *, nonnegative=False, squared=False):
  """The largest finite number where ``c`` is 0, ``inf`` elsewhere (times
  ``sign``, +1 or -1, folded into the constant: a floor costs no negation
  of every term, which took ``poisson_nll_loss``'s value a tenth of the
  plain formula's time): a clamp
  that keeps ``0 * inf`` out of a zero coefficient's term and leaves every
  other term alone, with no select (which would keep XLA:CPU from fusing
  the terms with their sum).

  ``1 + |c| * 2**(maxexp - 1)`` is at least 3 for a normal ``c``, and for
  the smallest subnormal still over 1 by more than half an ulp of the
  largest number, so that ``max`` times it is ``inf`` (in float16, bfloat16,
  float32 and float64; where subnormals are flushed they count as 0). It
  costs XLA:CPU's fused sums less than ``max * (1 + |sign(c)|)``: the
  probability cross entropy's guarded sum took 0.2x optax's time less.
  Not ``max + max * (|c| * 2**(maxexp - 1))``: XLA folds the two constants
  into ``inf``, and ``inf * 0`` is NaN.

  ``nonnegative`` is for a ``c`` that cannot be negative by construction
  (an exponential, an indicator): it takes no absolute value, which slows
  XLA:CPU's fused row sums on short rows (``python
  benchmarks/row_forms.py`` compares the cap with it and without it, in
  the squared form). A negative ``c`` then gives a cap of the wrong sign.
  ``squared`` takes ``(c * 2**(maxexp - 1))**2`` for the size instead, with
  no absolute value either, for any sign: faster in XLA:CPU's fused sums
  over rows shorter than :data:`SHORT_ROWS`, slower over longer ones.
  Exact where subnormals flush to 0 (as on CPUs): a normal ``c`` gives at
  least 4 before the 1 is added; a subnormal one kept would square to
  nothing.
  """
  info = jnp.finfo(c.dtype)
  scale = np.asarray(2.0 ** (info.maxexp - 1), c.dtype)
  one, top = np.asarray(1, c.dtype), np.asarray(sign * info.max, c.dtype)
  # A constant to autodiff: its slope, max * scale, is inf. lax and NumPy
  # constants: it is traced once per term, and jnp's wrappers cost time.
  if squared:
    size = c * scale
    size = size * size
  else:
    size = (c if nonnegative else lax.abs(c)) * scale
  return lax.stop_gradient((size + one) * top)


def both(a, b):
  if a is None:
    return b
  return a if b is None else a & b


def row_labels(fn, name, labels, x_name, x_shape, batch_shape):
  """One label per row of ``x_name``: ``labels`` broadcast to the batch
  shape (``x_shape`` less its class axes), never enlarging it.

  The message names both arguments, the batch shape and ``x_name``'s whole
  shape.
  """
  try:
    return _checks.conform(fn, name, labels, f"the batch shape of {x_name}",
                           batch_shape)
  except ValueError as e:
    raise ValueError(f"{e}; {x_name} has shape {tuple(x_shape)}") from None


def _gather_label(x, labels):
  return jnp.take_along_axis(x, labels[..., None], axis=-1,
                             mode="promise_in_bounds")[..., 0]


@jax.custom_jvp
def take_label(x, labels):
  """``x[..., labels]`` along the last axis, for labels in ``[0, C)``.

  A gather; its derivative is a select on the classes, which reverse mode
  writes in the same loop as the rest of the gradient (the gather's own
  transpose is a scatter: on XLA:CPU a loop of its own and index arrays,
  a fifth of the multiclass hinge loss's gradient's compile time).
  """
  return _gather_label(x, labels)


@take_label.defjvp
@_jit.inlined
def _take_label_jvp(primals, tangents):
  (x, labels), (dx, _) = primals, tangents
  classes = lax.broadcasted_iota(labels.dtype, x.shape, x.ndim - 1)
  at = classes == labels[..., None]
  return take_label(x, labels), jnp.sum(jnp.where(at, dx, 0), axis=-1)


@jax.custom_jvp
def gate_rows(x, closed):
  """``x`` [..., C] as it is, its tangent 0 on the rows where ``closed``.

  Reverse mode zeroes those rows of the gradient with one select in the
  loop that writes it; a mask on the loss's rows instead meets the
  reductions' cotangents, a loop of its own for XLA:CPU. Exact zeros,
  whatever the rest of the derivative holds there.
  """
  del closed
  return x


@gate_rows.defjvp
@_jit.inlined
def _gate_rows_jvp(primals, tangents):
  (x, closed), (dx, _) = primals, tangents
  return x, jnp.where(closed[..., None], 0, dx)


@jax.custom_jvp
def row_max(v):
  """``jnp.max(v, axis=-1)`` with ``jnp.max``'s derivative: ties share it
  equally, and a row holding a NaN has a NaN derivative.

  The value is ``jnp.max``'s. The derivative reads the maximum and the
  number of ties from one pass over ``v`` (a variadic reduction) and keeps
  no [..., C] array, where ``jnp.max``'s own writes an indicator of the
  ties and broadcasts their count back to [..., C]. In half precision the
  count is exact (``jnp.max`` counts in the input's dtype).
  """
  return jnp.max(v, axis=-1)


def _max_and_ties(v):
  """Each row's maximum and the number of its elements equal to it (0 on a
  row holding a NaN, whose maximum is NaN), in one reduction. Integer
  counts: a reduction may not mix floating precisions."""
  return lax.reduce(
      (v, lax.full(v.shape, 1, np.int32)),
      (np.array(-np.inf, v.dtype), np.array(0, np.int32)),
      _max_and_ties_step, (v.ndim - 1,))


def _max_and_ties_step(a, b):
  """Two (maximum, ties) pairs as one. Each side's count counts where its
  maximum is not below the other's: both when equal, neither against a
  NaN. A module-level function: JAX caches its trace."""
  (m1, n1), (m2, n2) = a, b
  zero = lax.full_like(n1, 0)
  n = (lax.select(lax.ge(m1, m2), n1, zero)
       + lax.select(lax.ge(m2, m1), n2, zero))
  return lax.max(m1, m2), n


def _max_tangent(m, ties, v, dv):
  dtype = _reduction.stat_dtype(v.dtype)
  at_max = (v == m[..., None]).astype(dtype)
  return (jnp.sum(dv.astype(dtype) * at_max, axis=-1)
          / ties.astype(dtype)).astype(m.dtype)


@jax.custom_jvp
def _max_given(m, ties, v):
  """``m``, differentiated as the maximum of ``v`` (for the derivatives of
  :func:`row_max`'s derivative)."""
  del ties, v
  return m


@row_max.defjvp
@_jit.inlined
def _row_max_jvp(primals, tangents):
  (v,), (dv,) = primals, tangents
  m, ties = _max_and_ties(lax.stop_gradient(v))
  return _max_given(m, ties, v), _max_tangent(m, ties, v, dv)


@_max_given.defjvp
@_jit.inlined
def _max_given_jvp(primals, tangents):
  m, ties, v = primals
  return m, _max_tangent(m, ties, v, tangents[2])


def flag_label(label_x, valid):
  """The label's score, NaN where the label is out of range: a select on
  the rows, computed with the gather. Only for a loss that takes the score
  in a sum (a NaN there must not meet a zero cotangent in a product)."""
  return jnp.where(valid, label_x, jnp.nan)


def integer_rows(fn, x, labels, batch_shape, *, ignore_index, row_keep,
                 weight, x_shape=None, labels_name="labels", x_name="logits",
                 scatter=False):
  """What integer-label losses share: the label logit, weight and masks.

  Args:
    x: [..., C] scores (logits or log-probabilities), classes last.
    labels: integer labels broadcastable to ``batch_shape`` (never
      enlarging it).
    ignore_index: label value whose rows are dropped, or None.
    row_keep: boolean [...] of rows to keep, or None.
    weight: [C] class weights in ``x``'s dtype, or None.
    x_shape: the scores' shape as the caller has it (for messages; by
      default the batch shape and the classes).
    labels_name, x_name: the caller's names for ``labels`` and the scores,
      used in messages.
    scatter: the label's score as a plain gather, whose gradient is a
      scatter of one element per row, for a loss that meets it with every
      class of its row (the select of :func:`take_label` would then wait
      for the row's sum, in a second pass).

  Returns:
    ``(x, label_x, label_w, keep, valid)``: ``x`` with dropped rows zeroed
    (so their gradient is an exact 0, whatever their values), the score of
    each row's label, its class weight, the kept rows (None if every row is
    kept) and the rows whose label lies in [0, C).
  """
  labels = _checks.integer(fn, labels_name, labels)
  if x_shape is None:
    x_shape = tuple(batch_shape) + x.shape[-1:]
  labels = row_labels(fn, labels_name, labels, x_name, x_shape, batch_shape)
  num_classes = x.shape[-1]
  keep = row_keep
  keep = both(keep, _checks.not_ignored(labels, ignore_index))
  valid = (labels >= 0) & (labels < num_classes)
  expected = f"must be in [0, {num_classes})" + (
      "" if ignore_index is None else " or equal ignore_index")
  _checks.values(fn, labels_name, valid if keep is None else valid | ~keep,
                 expected, labels)
  safe = jnp.where(valid, labels, 0)
  if keep is not None:
    safe = jnp.where(keep, safe, 0)
    x = jnp.where(keep[..., None], x, 0)
  label_x = (_gather_label if scatter else take_label)(x, safe)
  label_w = None if weight is None else weight[safe]
  return x, label_x, label_w, keep, valid


def row_loss(lse, label_x, label_w, label_smoothing, z_loss, smoothing=None):
  r"""Each row's loss from its statistics.

  :math:`(1 - \varepsilon)(\mathrm{lse} - x_y) + z\,\mathrm{lse}^2`, times
  the label's class weight ``label_w`` (when given), plus
  :math:`\varepsilon` times ``smoothing``, the row's cross entropy against
  the uniform distribution over its support.
  """
  smoothed = not _jit.is_zero(label_smoothing)
  loss = lse - label_x
  if smoothed:
    loss = (1 - label_smoothing) * loss
  if not _jit.is_zero(z_loss):
    loss = loss + z_loss * lse**2
  if label_w is not None:
    loss = label_w * loss
  if smoothed:
    loss = loss + label_smoothing * smoothing
  return loss


def loss_from_statistics(fn, stats, batch_shape, label_w, keep, valid,
                         label_smoothing, z_loss, reduction):
  """The loss from flat per-row statistics, reduced.

  ``stats`` is ``(lse, label_x)``, plus with smoothing the support sums of
  ``w x``, ``w`` and 1 (:func:`smoothing_term` from them), each [rows].
  """
  lse, label_x, *sums = (s.reshape(batch_shape) for s in stats)
  smoothing = None
  if not _jit.is_zero(label_smoothing):
    sx, wsum, count = sums
    smoothing = (lse * wsum - sx) / jnp.maximum(count, 1)
  # The label's score enters the loss in a sum alone when there are no
  # class weights and no smoothing to multiply it: it can carry the NaN.
  flagged = label_w is None and smoothing is None
  if flagged:
    label_x = flag_label(label_x, valid)
  loss = row_loss(lse, label_x, label_w, label_smoothing, z_loss, smoothing)
  return finish_rows(fn, loss, label_w, keep, valid, reduction,
                     flagged=flagged)


def flat_rows(a, batch_shape):
  """``a`` with its leading ``batch_shape`` axes as one (None stays None)."""
  if a is None:
    return None
  return a.reshape((math.prod(batch_shape),) + a.shape[len(batch_shape):])


@jax.custom_jvp
def _flag(loss, bad):
  del bad    # the loss is NaN there already
  return loss


@_flag.defjvp
@_jit.inlined
def _flag_jvp(primals, tangents):
  (loss, bad), (dloss, _) = primals, tangents
  return jnp.where(bad, jnp.nan, loss), jnp.where(bad, 0, dloss)


def finish_rows(fn, loss, label_w, keep, valid, reduction, flagged=False,
                gated=False):
  """Masks, flags out-of-range labels with NaN, and reduces.

  ``flagged``: the caller's loss is already NaN on every row whose label is
  out of range (from :func:`flag_label`), so that the value alone needs no
  select here (which XLA:CPU would compile as a loop of its own); under
  differentiation the select still gives those rows exact zero gradients.
  ``gated``: flagged, and those rows' gradients are zero already (the
  scores passed through :func:`gate_rows`): no select at all.
  """
  loss = _reduction.mask(loss, keep)
  # A label outside [0, C) that is not ignored has no meaning: NaN, never the
  # plausible number a wrapped-around index would give.
  if not gated:
    bad = ~valid if keep is None else keep & ~valid
    loss = _flag(loss, bad) if flagged else jnp.where(bad, jnp.nan, loss)
  denominator = label_w
  if keep is not None:
    denominator = _reduction.mask(
        jnp.ones_like(loss) if label_w is None else label_w, keep)
  return _reduction.reduce(fn, loss, reduction, denominator=denominator)


def support(x, class_keep):
  """Classes that can carry probability: kept by ``where`` and not ``-inf``."""
  return both(x > -jnp.inf, class_keep)


def smoothing_term(x, lse, weight, class_keep):
  r"""Per row, :math:`\frac{1}{C'} \sum_{j} w_j (\mathrm{lse} - x_j)` over the
  support: the cross entropy against the uniform distribution.

  ``-inf`` logits and classes dropped by ``where`` are outside the support, so
  the uniform part of a smoothed target never lands on an impossible class.
  """
  s = support(x, class_keep)
  w = jnp.ones_like(x) if weight is None else jnp.broadcast_to(weight, x.shape)
  w = jnp.where(s, w, 0)
  wx = jnp.sum(jnp.where(s, w * x, 0), axis=-1)
  count = jnp.sum(s, axis=-1, dtype=x.dtype)
  total = lse * jnp.sum(w, axis=-1) - wx
  return total / jnp.maximum(count, 1)


def class_values(fn, checks, row_keep, class_keep, shape, axis):
  """Value checks on arrays laid out by :func:`classes_last`, active only
  under ``checked``.

  ``checks`` holds ``(name, array, ok, check)``; offending elements are
  reported at their index in the caller's ``shape`` and ``axis``. Rows and
  classes dropped by ``where`` are not checked.
  """
  if not _checks.checking():
    return
  axes = _checks.axes(fn, axis, len(shape))
  order = tuple(a for a in range(len(shape)) if a not in axes) + axes
  inverse = tuple(order.index(a) for a in range(len(shape)))

  def original(a):
    return jnp.transpose(a.reshape(tuple(shape[a] for a in order)), inverse)

  keep = class_keep
  if row_keep is not None:
    keep = both(jnp.broadcast_to(row_keep[..., None], checks[0][1].shape),
                keep)
  for name, v, ok, check in checks:
    _checks.values(fn, name, original(ok if keep is None else ok | ~keep),
                   check, original(v))


def probability_values(fn, x, y, row_keep, class_keep, shape, axis):
  """Logits and probability labels: labels in [0, 1] (they need not sum to
  1, as in torch and optax), logits below ``+inf`` (``-inf`` is fine)."""
  if not _checks.checking():
    return
  class_values(fn, [
      ("logits", x, x < jnp.inf, "must not be NaN or +inf"),
      ("labels", y, (y >= 0) & (y <= 1), "must be in [0, 1]")],
               row_keep, class_keep, shape, axis)


@jax.custom_jvp
def cross_sum(coef, lse, x):
  r""":math:`\sum_j c_j\,(\mathrm{lse} - x_j)` over the last axis, where a
  term with :math:`c_j = 0` on a ``-inf`` logit counts 0, and the derivative
  by :math:`c_j` is :math:`\mathrm{lse} - x_j` wherever :math:`x_j` is
  finite, zero labels included. ``lse`` keeps the summed axis (size 1).

  A ``-inf`` logit marks a class outside the support: there the term and
  its derivatives are 0 (rather than ``0 * inf``), unless the class carries
  label mass, which costs ``inf``, also on a row of ``-inf`` logits (whose
  ``lse`` is ``-inf``). Each term is capped rather than selected, which
  XLA:CPU fuses with the sum; the derivatives are written out.
  """
  top = jnp.maximum(lse, jnp.finfo(x.dtype).min)
  cap = cap_unless_zero(coef, squared=short_rows_on_cpu(x.shape[-1]))
  return jnp.sum(coef * jnp.minimum(top - x, cap), axis=-1)


def _cross_sum_jvp(primals, tangents):
  (coef, lse, x), (dcoef, dlse, dx) = primals, tangents
  out = cross_sum(coef, lse, x)
  floor = jnp.finfo(x.dtype).min
  tangent = jnp.zeros_like(out)
  if not isinstance(dlse, SymbolicZero):
    # 0 on a row of -inf logits, whose lse is the floor or -inf: a flag in
    # arithmetic, which XLA:CPU fuses with the labels' sum.
    dtop = (dlse * lax.abs(lax.sign(jnp.maximum(lse, floor) - floor)))[..., 0]
    tangent = tangent + dtop * jnp.sum(coef, axis=-1)
  if not isinstance(dx, SymbolicZero):
    # A zero coefficient takes no part: 0 * dx, never a select.
    tangent = tangent - jnp.sum(coef * dx, axis=-1)
  if not isinstance(dcoef, SymbolicZero):
    top = jnp.maximum(lse, floor)
    gap = jnp.where((coef == 0) & (x == -jnp.inf), 0, top - x)
    tangent = tangent + jnp.sum(gap * dcoef, axis=-1)
  return out, tangent


cross_sum.defjvp(_jit.inlined(_cross_sum_jvp), symbolic_zeros=True)
