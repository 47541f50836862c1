r"""Integer-label softmax cross entropy with a hand-written VJP.

Autodiff of :math:`\mathrm{lse}(x) - x_y` keeps an [N, C] float32 residual
(the exponentials, or the upcast logits) alive from the forward to the
backward pass. Here the forward saves only per-row statistics next to the
logits themselves, and the backward writes

.. math::
  \partial x_j = g_\mathrm{lse}\, \mathrm{softmax}(x)_j + g_y [j = y]
    + g_s\, w_j [j \in S]

in one elementwise pass, directly in the logits' dtype. The per-row algebra
(class weights, smoothing, z-loss, masks, reductions) stays ordinary JAX on
[N] arrays around it, so autodiff supplies the row cotangents :math:`g`.
"""

import functools
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from jaxloss import _checks
from jaxloss import _reduction
from jaxloss import _rows

IMPLEMENTATIONS = ("auto", "xla", "pallas", "reference")
PROBABILITY_IMPLEMENTATIONS = ("auto", "xla", "reference")
# "auto" takes the Pallas kernels on GPUs from this many classes on.
PALLAS_MIN_CLASSES = 8192


def resolve(fn, implementation, logits, axis, where, probabilities=False):
  """``implementation`` made concrete: ``"xla"``, ``"pallas"``, ``"reference"``.

  ``"auto"`` takes the Pallas kernels on GPUs for many classes (not for
  float64, nor for a ``where`` that masks classes, nor past 2**31 logits,
  where 32-bit offsets would not do), the XLA path elsewhere. Probability
  labels (``probabilities``) have no Pallas kernel: ``"auto"`` is
  ``"xla"``.
  """
  choices = PROBABILITY_IMPLEMENTATIONS if probabilities else IMPLEMENTATIONS
  if not isinstance(implementation, str) or implementation not in choices:
    _checks.fail(fn, "implementation must be one of "
                 f"{', '.join(map(repr, choices))}, "
                 f"got {implementation!r}")
  if implementation != "auto":
    return implementation
  if probabilities:
    return "xla"
  axes = _checks.axes(fn, axis, logits.ndim)
  num_classes = math.prod(logits.shape[a] for a in axes)
  class_mask = where is not None and jnp.ndim(where) == logits.ndim
  if (jax.default_backend() == "gpu" and num_classes >= PALLAS_MIN_CLASSES
      and logits.dtype != jnp.float64 and not class_mask
      and logits.size < 2**31):
    return "pallas"
  return "xla"


def _pallas():
  # Imported on first use: Pallas and its Triton bindings add a fifth of a
  # second to `import jaxloss`, for a path only GPUs take by default.
  from jaxloss.kernels import pallas_cross_entropy  # noqa: PLC0415
  return pallas_cross_entropy


class Config(NamedTuple):
  smoothing: bool = False   # also the sums over the support
  pallas: bool = False
  interpret: bool = True    # Pallas interpret mode (off on GPUs)
  block: int | None = None
  num_warps: int | None = None
  num_stages: int | None = None
  lane_sums: bool = False   # per-lane maxima and sums (statistics kernel)
  # Keep exp(x - max) from the forward for the backward instead of computing
  # it again: on CPUs, where the exponentials rather than the memory traffic
  # set the pace, and only when the logits are already float32 (or float64),
  # so that XLA writes them into the gradient's buffer: no temporary.
  keep_exponentials: bool = False
  # Probability labels, value alone: the sums as a chain of plain
  # reductions rather than one variadic reduction; on CPUs, for float32 (or
  # float64) logits, where XLA fuses that chain into one pass without
  # temporaries. Elsewhere it costs extra reads (GPUs) or a float32 copy of
  # half-precision logits (CPUs).
  value_chain: bool = False


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def row_statistics(config, x, labels, keep, class_keep, weight):
  """Per-row statistics of [R, C] logits, with an O(R)-residual VJP.

  Args:
    config: a :class:`Config`.
    x: [R, C] logits, any floating dtype (never upcast as a whole).
    labels: [R] int32 labels in ``[0, C)``.
    keep: optional [R] boolean; the statistics of dropped rows are 0 and their
      gradient an exact 0, whatever their logits hold.
    class_keep: optional [R, C] boolean classes of the softmax.
    weight: optional [C] class weights of the smoothing sums.

  Returns:
    ``(lse, label_x)``, plus ``(sx, wsum, count)`` with ``config.smoothing``:
    sums over the support (kept, not ``-inf``) of ``w x``, ``w`` and 1. Each
    is [R] in float32 (float64 for float64 logits).
  """
  return _statistics(config, x, labels, keep, class_keep, weight)


def _statistics(config, x, labels, keep, class_keep, weight,
                exponentials=False):
  dtype = _reduction.stat_dtype(x.dtype)
  if config.pallas:
    stats = _pallas().statistics(
        x, class_keep, weight, smoothing=config.smoothing, dtype=dtype,
        interpret=config.interpret, block=config.block,
        num_warps=config.num_warps, num_stages=config.num_stages,
        lane_sums=config.lane_sums)
  else:
    stats, exps = xla_statistics(x, class_keep, weight, config.smoothing,
                                 dtype)
  # The barrier keeps XLA from sharing one float32 copy of x between this
  # gather and the reductions (a whole [R, C] temporary on CPUs).
  label_x = jnp.take_along_axis(lax.optimization_barrier(x), labels[:, None],
                                axis=-1)[:, 0]
  stats = (stats[0], label_x.astype(dtype)) + stats[1:]
  if keep is not None:
    # Dropped rows may hold anything (inf, nan): zeros keep the zero
    # cotangents of their masked loss from meeting an inf downstream.
    stats = tuple(jnp.where(keep, s, 0) for s in stats)
  if exponentials:
    return stats, exps
  return stats


def xla_statistics(x, class_keep, weight, smoothing, dtype):
  """The statistics, and ``(exp(x - shift), shift)`` for the backward."""
  # jax.nn.logsumexp, written so that every [R, C] pass reads x in its own
  # dtype and upcasts inside the fused reduction: the maximum is exact in
  # any precision, and no float32 copy of half-precision logits is made.
  if class_keep is not None:
    x = jnp.where(class_keep, x, -jnp.inf)
  m = jnp.max(x, axis=-1).astype(dtype)
  shift = jnp.where(jnp.isfinite(m), m, 0)
  exps = jnp.exp(x.astype(dtype) - shift[:, None])
  lse = jnp.log(jnp.sum(exps, axis=-1)) + shift
  if not smoothing:
    return (lse,), (exps, shift)
  # The support sums in one variadic reduction, which XLA fuses with the
  # masking (separate sums each get a masked float32 copy of x on CPUs);
  # the barrier keeps its upcast of x apart from the one above.
  x = lax.optimization_barrier(x)
  support = x > -jnp.inf
  xs = jnp.where(support, x.astype(dtype), 0)
  ones = support.astype(dtype)
  if weight is None:
    terms = (xs, ones)
  else:
    w = jnp.broadcast_to(weight[None, :], x.shape)
    terms = (w * xs, w * ones, ones)
  zero = jnp.zeros((), dtype)
  sums = lax.reduce(terms, (zero,) * len(terms),
                    lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
  sx, count = sums[0], sums[-1]
  wsum = sums[-2] if weight is not None else count
  return (lse, sx, wsum, count), (exps, shift)


# Higher-order autodiff (grad of grad, hessian) differentiates the fwd and bwd
# rules below; this identity stops it there, with a message, before it meets
# a primitive without a derivative rule (pallas_call).
@jax.custom_jvp
def _first_order_only(tree):
  return tree


@_first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
  del primals, tangents
  raise NotImplementedError(
      "softmax cross entropy: the \"xla\" and \"pallas\" implementations "
      "give first-order gradients only (jax.grad, jax.vjp); "
      "for higher-order or forward-mode autodiff pass "
      "implementation=\"reference\"")


def _row_statistics_fwd(config, x, labels, keep, class_keep, weight):
  # Reverse mode calls this on plain values; only a second differentiation
  # (grad of grad) reaches it with tracers, and stops with a message.
  x, weight = _first_order_only((x, weight))
  exponentials = config.keep_exponentials and not config.pallas
  stats = _statistics(config, x, labels, keep, class_keep, weight,
                      exponentials)
  if exponentials:
    stats, exps = stats
  else:
    exps = None
  return stats, (x, labels, keep, class_keep, weight, stats[0], exps)


def _row_statistics_bwd(config, residuals, cotangents):
  residuals, cotangents = _first_order_only((residuals, cotangents))
  x, labels, keep, class_keep, weight, lse, exps = residuals
  ct_lse, ct_label = cotangents[:2]
  ct_sx = cotangents[2] if config.smoothing else None
  if config.pallas:
    dx = _pallas().gradient(
        x, labels, keep, class_keep, weight, lse, ct_lse, ct_label, ct_sx,
        interpret=config.interpret, block=config.block,
        num_warps=config.num_warps, num_stages=config.num_stages)
  else:
    dx = xla_gradient(x, keep, class_keep, lse, ct_lse[:, None], exps,
                      label_term(labels, ct_label),
                      smoothing_gradient(ct_sx, weight))
  dweight = None
  if weight is not None:
    # Only with smoothing do class weights reach these statistics; XLA drops
    # this reduction when nobody asks for the weights' gradient.
    xf = x.astype(lse.dtype)
    support = _rows.support(xf, class_keep)
    if keep is not None:
      support = support & keep[:, None]
    ct_wsum = cotangents[3]
    dweight = jnp.sum(jnp.where(
        support, ct_sx[:, None] * xf + ct_wsum[:, None], 0), axis=0)
  return dx, None, None, None, dweight


row_statistics.defvjp(_row_statistics_fwd, _row_statistics_bwd)


def label_term(labels, ct_label):
  """The one-hot part of the gradient, ``ct_label`` at each row's label
  (nowhere for a label of -1), as a ``target`` of :func:`xla_gradient`."""
  def term(xf):
    cols = lax.broadcasted_iota(labels.dtype, xf.shape, 1)
    return jnp.where(cols == labels[:, None], ct_label[:, None], 0)
  return term


def smoothing_gradient(ct_sx, weight):
  """The smoothing sum's part of the gradient: ``ct_sx * w`` on the support."""
  if ct_sx is None:
    return None
  return ct_sx[:, None] if weight is None else ct_sx[:, None] * weight[None, :]


def xla_gradient(x, keep, class_keep, lse, scale, exps, target, smoothing):
  """``scale * softmax(x) + target(x) + smoothing * support``, in x's dtype.

  ``scale`` is [R, 1], ``target`` maps the float32 logits to the labels'
  [R, C] term, ``smoothing`` (or None) broadcasts against [R, C]. Dropped
  rows get an exact 0.
  """
  # As for the label gather: this pass converts x on its own.
  xf = lax.optimization_barrier(x).astype(lse.dtype)
  if exps is None:
    p = jnp.exp(xf - lse[:, None])
  else:
    # softmax = exp(x - shift) / exp(lse - shift); dropped rows may hold
    # inf or nan there, which the final mask removes.
    exps, shift = exps
    p = exps * jnp.exp(shift - lse)[:, None]
  if class_keep is not None:
    p = jnp.where(class_keep, p, 0)
  dx = scale * p + target(xf)
  if smoothing is not None:
    dx = dx + jnp.where(_rows.support(xf, class_keep), smoothing, 0)
  if keep is not None:
    dx = jnp.where(keep[:, None], dx, 0)
  return dx.astype(x.dtype)


def _default_config(x, dtype):
  backend = jax.default_backend()
  native = backend == "cpu" and x.dtype == dtype
  return Config(interpret=backend != "gpu", keep_exponentials=native,
                value_chain=native)


def softmax_cross_entropy_with_integer_labels(
    fn, logits, labels, *, axis, where, ignore_index, weight, label_smoothing,
    z_loss, reduction, implementation, config=None):
  """The body of the public function on the custom-VJP path.

  Same arguments and numbers as the reference formulation in
  :mod:`jaxloss._multiclass`; ``implementation`` is ``"xla"`` or
  ``"pallas"``; ``config`` overrides the kernel configuration (benchmarks).
  """
  x, batch_shape, _ = _rows.classes_last(fn, logits, axis)
  dtype = _reduction.stat_dtype(x.dtype)
  num_classes = x.shape[-1]
  row_keep, class_keep = _rows.split_where(fn, where, logits.shape, axis,
                                                 batch_shape)
  weight = _rows.class_weight(fn, weight, num_classes, dtype)
  # The label checks, masks and label weights are exactly the reference's;
  # its label logit goes unused (XLA drops it): the kernel reads its own, so
  # that the label's gradient lands in the same fused pass.
  _, _, label_w, keep, valid = _rows.integer_rows(
      fn, lax.stop_gradient(x), labels, batch_shape,
      ignore_index=ignore_index, row_keep=row_keep, weight=weight)
  safe = jnp.where(valid, labels, 0)
  if keep is not None:
    safe = jnp.where(keep, safe, 0)
  rows = math.prod(batch_shape)
  if config is None:
    config = _default_config(x, dtype)
  config = config._replace(smoothing=bool(label_smoothing),
                           pallas=implementation == "pallas" and rows > 0)

  def flat(a):
    return _rows.flat_rows(a, batch_shape)

  stats = row_statistics(
      config, flat(x), flat(safe).astype(jnp.int32), flat(keep),
      flat(class_keep), weight if label_smoothing else None)
  return _rows.loss_from_statistics(
      fn, stats, batch_shape, label_w, keep, valid, label_smoothing, z_loss,
      reduction)


# ---------------------------------------------------------------------------
# Probability labels.
#
# Per row, with coefficients c = w y over the kept classes and s the support
# (kept, not -inf), the loss is (1 - eps) sum_j c_j (lse - x_j) plus eps
# times sum_j w_j s_j (lse - x_j) / |s|. Each sum is taken as sum_j c_j
# (log sum_k exp(x_k - m) + (m - x_j)) with m the row's maximum: both terms
# are non-negative, so a large common offset of the logits costs no
# precision. The backward needs lse and the row sums of c and of w s besides
# the logits and labels themselves.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def label_statistics(config, x, y, keep, class_keep, weight):
  """Per-row cross entropies of [R, C] logits against [R, C] labels.

  Args:
    config: a :class:`Config` (``smoothing``, ``keep_exponentials`` and
      ``value_chain``).
    x: [R, C] logits, any floating dtype (never upcast as a whole).
    y: [R, C] labels, any floating dtype.
    keep: optional [R] boolean; dropped rows give 0 with an exact zero
      gradient, whatever they hold.
    class_keep: optional [R, C] boolean classes of the softmax.
    weight: optional [C] class weights.

  Returns:
    ``(cross,)``: :math:`\\sum_j c_j (\\mathrm{lse} - x_j)` over the terms
    with :math:`c_j = w_j y_j \\neq 0`; with ``config.smoothing`` also
    ``smooth`` and ``count``, the same sum against the weights over the
    support and the support's size. Each is [R] in float32 (float64 for
    float64 logits).
  """
  return _label_value(config, x, y, keep, class_keep, weight)


def _coefficients(y, class_keep, weight, dtype):
  c = y.astype(dtype)
  if weight is not None:
    c = c * weight[None, :]
  if class_keep is not None:
    c = jnp.where(class_keep, c, 0)
  return c


def _label_forward(config, x, y, keep, class_keep, weight):
  """The statistics, what the backward needs, and the kept exponentials."""
  dtype = _reduction.stat_dtype(x.dtype)
  if class_keep is not None:
    x = jnp.where(class_keep, x, -jnp.inf)
  m = jnp.max(x, axis=-1).astype(dtype)
  shift = jnp.where(jnp.isfinite(m), m, 0)
  below = shift[:, None] - x.astype(dtype)   # >= 0; +inf at -inf logits
  exps = jnp.exp(-below)
  c = _coefficients(y, class_keep, weight, dtype)
  terms = [exps, c, jnp.where(c != 0, c * below, 0)]
  if config.smoothing:
    support = below < jnp.inf
    w = (jnp.ones_like(below) if weight is None
         else jnp.broadcast_to(weight[None, :], below.shape))
    terms += [jnp.where(support, w, 0), jnp.where(support, w * below, 0),
              support.astype(dtype)]
  # One variadic reduction: one read of x and y for every sum, and on every
  # backend no [R, C] temporary besides (XLA:CPU hands single reductions to
  # a library that reads its input from memory).
  zero = jnp.zeros((), dtype)
  sums = lax.reduce(tuple(terms), (zero,) * len(terms),
                    lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
  log_sum = jnp.log(sums[0])

  def cross(total, below_sum):
    # A row whose terms are all zero costs 0, even if every logit is -inf;
    # one with mass but no possible class costs inf (not -inf + inf).
    row = jnp.where(total == 0, 0, total * log_sum) + below_sum
    return jnp.where((total != 0) & (log_sum == -jnp.inf), jnp.inf, row)

  stats = (cross(sums[1], sums[2]),)
  totals = (log_sum + shift, sums[1])
  if config.smoothing:
    stats += (cross(sums[3], sums[4]), sums[5])
    totals += (sums[3],)
  if keep is not None:
    stats = tuple(jnp.where(keep, s, 0) for s in stats)
  exps = (exps, shift) if config.keep_exponentials else None
  return stats, totals, exps


def _label_value(config, x, y, keep, class_keep, weight):
  """The statistics alone, when no gradient is taken.

  With ``config.value_chain``, the cross sum as a chain maximum -> sum of
  exponentials -> sum of ``c (log_sum + m - x)`` with no select on [R, C]
  arrays, which XLA:CPU fuses into one pass: half the time of the variadic
  reduction of :func:`_label_forward` there. Under differentiation the
  forward keeps the variadic form, which also returns the backward's
  statistics without an [R, C] temporary.
  """
  if not config.value_chain or config.smoothing or class_keep is not None:
    return _label_forward(config, x, y, keep, class_keep, weight)[0]
  dtype = _reduction.stat_dtype(x.dtype)
  big = jnp.finfo(dtype).max
  m = jnp.max(x, axis=-1).astype(dtype)
  below = jnp.maximum(m, -big)[:, None] - x.astype(dtype)
  log_sum = jnp.log(jnp.sum(jnp.exp(-below), axis=-1))
  c = _coefficients(y, None, weight, dtype)
  # c (log_sum + below), with 0 rather than 0 * inf where c is 0 on a -inf
  # logit: the cap on `below` is finite there, +inf where c > 0.
  cap = big * (1 + jnp.sign(c))
  cross = jnp.sum(c * (log_sum[:, None] + jnp.minimum(below, cap)), axis=-1)
  # A row whose logits are all -inf costs inf, unless it has no mass.
  cross = jnp.where(m == -jnp.inf, jnp.inf, cross)
  cross = jnp.where(jnp.sum(c, axis=-1) == 0, 0, cross)
  if keep is not None:
    cross = jnp.where(keep, cross, 0)
  return (cross,)


def _label_statistics_fwd(config, x, y, keep, class_keep, weight):
  x, y, weight = _first_order_only((x, y, weight))
  stats, totals, exps = _label_forward(config, x, y, keep, class_keep,
                                       weight)
  return stats, (x, y, keep, class_keep, weight, totals, exps)


def _label_statistics_bwd(config, residuals, cotangents):
  residuals, cotangents = _first_order_only((residuals, cotangents))
  x, y, keep, class_keep, weight, totals, exps = residuals
  lse, ysum = totals[:2]
  dtype = lse.dtype
  ct_cross = cotangents[0][:, None]
  # d cross / dx = ysum softmax - c, d smooth / dx = wsum softmax - w s.
  scale = ct_cross * ysum[:, None]
  ct_smooth = None
  if config.smoothing:
    ct_smooth = cotangents[1][:, None]
    scale = scale + ct_smooth * totals[2][:, None]

  def coefficient_term(xf):
    del xf
    return -ct_cross * _coefficients(y, class_keep, weight, dtype)

  smoothing = None
  if ct_smooth is not None:
    smoothing = -ct_smooth * (1 if weight is None else weight[None, :])
  # A row that costs nothing whatever its logits (no label mass, nothing to
  # smooth over) has scale 0: a logsumexp of +inf leaves its softmax out
  # (exactly 0) rather than multiplying it, nan for an all -inf row, by 0.
  safe_lse = jnp.where(scale[:, 0] == 0, jnp.inf, lse)
  dx = xla_gradient(x, keep, class_keep, safe_lse, scale, exps,
                    coefficient_term, smoothing)
  dy, dweight = _label_gradients(x, y, keep, class_keep, weight, lse,
                                 ct_cross, ct_smooth)
  return dx, dy, None, None, dweight


label_statistics.defvjp(_label_statistics_fwd, _label_statistics_bwd)


def _label_gradients(x, y, keep, class_keep, weight, lse, ct_cross,
                     ct_smooth):
  """The labels' and the class weights' gradients (None without weights).

  The derivative of a term by its coefficient is ``lse - x``, also where the
  coefficient is 0, as :func:`jaxloss._rows.cross_terms` gives it: 0
  for a zero coefficient on a ``-inf`` logit.
  """
  dtype = lse.dtype
  xf = lax.optimization_barrier(x).astype(dtype)
  if class_keep is not None:
    xf = jnp.where(class_keep, xf, -jnp.inf)
  gap = lse[:, None] - xf
  c = _coefficients(y, class_keep, weight, dtype)
  live = (ct_cross != 0) & ((c != 0) | (xf > -jnp.inf))
  if keep is not None:
    live = live & keep[:, None]
  if class_keep is not None:
    live = live & class_keep
  dc = jnp.where(live, ct_cross * gap, 0)
  if weight is None:
    return dc.astype(y.dtype), None
  w = weight[None, :]
  dy = jnp.where(w == 0, 0, dc * w).astype(y.dtype)
  yf = y.astype(dtype)
  terms = jnp.where(yf == 0, 0, yf * dc)
  if ct_smooth is not None:
    support = xf > -jnp.inf
    if keep is not None:
      support = support & keep[:, None]
    terms = terms + jnp.where(support, ct_smooth * gap, 0)
  return dy, jnp.sum(terms, axis=0)


def softmax_cross_entropy(fn, logits, labels, *, axis, where, weight,
                          label_smoothing, reduction, config=None):
  """The body of the public probability-label function on the XLA path.

  ``labels`` already broadcast to ``logits``' shape; same arguments and
  numbers as the reference formulation in :mod:`jaxloss._multiclass`.
  """
  x, batch_shape, _ = _rows.classes_last(fn, logits, axis)
  dtype = _reduction.stat_dtype(x.dtype)
  y, _, _ = _rows.classes_last(fn, labels, axis)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    y = y.astype(dtype)
  row_keep, class_keep = _rows.split_where(fn, where, logits.shape,
                                                 axis, batch_shape)
  _rows.probability_values(fn, x, y, row_keep, class_keep,
                                 logits.shape, axis)
  weight = _rows.class_weight(fn, weight, x.shape[-1], dtype)
  if config is None:
    config = _default_config(x, dtype)
  config = config._replace(smoothing=bool(label_smoothing), pallas=False)

  def flat(a):
    return _rows.flat_rows(a, batch_shape)

  cross, *smooth = (s.reshape(batch_shape) for s in label_statistics(
      config, flat(x), flat(y), flat(row_keep), flat(class_keep), weight))
  loss = cross
  if label_smoothing:
    smooth, count = smooth
    loss = ((1 - label_smoothing) * cross
            + label_smoothing * smooth / jnp.maximum(count, 1))
  loss = _reduction.mask(loss, row_keep)
  return _reduction.reduce(fn, loss, reduction, keep=row_keep)
