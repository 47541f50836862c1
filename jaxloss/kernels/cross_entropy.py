r"""Softmax cross-entropy statistics, with derivatives that keep O(rows).

Autodiff of :math:`\mathrm{lse}(x) - x_y` keeps an [R, C] float32 residual
(the exponentials, or the upcast logits) alive from the forward to the
backward pass. Here each function reduces [R, C] logits (and labels) to
per-row float32 statistics under a ``jax.custom_jvp`` whose tangent is a
linear function of the inputs' tangents, computed from the inputs and the
statistics alone under ``jax.checkpoint``:

.. math::
  d\,\mathrm{lse} = \sum_j \mathrm{softmax}(x)_j\, dx_j, \qquad
  d x_y = \sum_j [j = y]\, dx_j, \qquad \dots

Every autodiff mode works from that one rule: forward mode evaluates it;
reverse mode transposes it, and because it is rematerialized the transpose
recomputes the softmax from the logits and the [R] statistics rather than
saving it, and writes the gradient in one fused elementwise pass, in the
logits' dtype; higher orders differentiate it, as it is made of ordinary
JAX operations. The per-row algebra around the statistics (class weights,
smoothing, z-loss, masks, reductions) lives with the public functions.
"""

import functools
import math
from typing import NamedTuple

import jax
from jax import lax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp
import numpy as np

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss import _value_form

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
  """How the statistics are computed; never what they are."""
  smoothing: bool = False   # also the sums over the support
  pallas: bool = False      # the Pallas statistics kernel (integer labels)
  interpret: bool = True    # Pallas interpret mode (off on GPUs)
  block: int | None = None
  num_warps: int | None = None
  num_stages: int | None = None
  lane_sums: bool = False   # per-lane maxima and sums (statistics kernel)
  # Keep exp(x - max) from the forward for the gradient instead of computing
  # it again: on CPUs, where the exponentials rather than the memory traffic
  # set the pace, and only when the logits are already float32 (or float64),
  # so that XLA writes them into the gradient's buffer: no temporary.
  keep_exponentials: bool = False
  # Probability labels, value alone: the sums as a chain of plain
  # reductions rather than one variadic reduction; on CPUs, where XLA fuses
  # that chain into one pass without temporaries, half-precision logits
  # included (each sum upcasts as it reads them): bfloat16 [4096, 1024]
  # logits and labels took 3.74x optax's time in the variadic reduction,
  # with a select that XLA:CPU's fused sums take no part in, and take 0.99x
  # as the chain. On GPUs it costs extra reads.
  value_chain: bool = False


def default_config(x):
  """The configuration for logits like ``x`` on this backend."""
  backend = jax.default_backend()
  native = backend == "cpu" and x.dtype == _reduction.stat_dtype(x.dtype)
  return Config(interpret=backend != "gpu", keep_exponentials=native,
                value_chain=backend == "cpu")


def _zero(t):
  return t is None or isinstance(t, SymbolicZero)


def _remat(fn):
  """``fn`` rematerialized: reverse mode keeps its inputs, nothing inside."""
  return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)


def finite_exp(x, top):
  """``exp(x - top)``, 0 where ``top`` is not finite (a row without any
  possible class), never ``exp(nan)``, in value and in derivative."""
  finite = jnp.isfinite(top)
  return jnp.where(finite, jnp.exp(x - jnp.where(finite, top, 0)), 0)


@jax.custom_jvp
def _floored(top):
  return jnp.maximum(top, jnp.finfo(top.dtype).min)


@_floored.defjvp
@_jit.inlined
def _floored_jvp(primals, tangents):
  # Passed through: the floor moves only a -inf, where every exp(x - top)
  # is 0 and so is every term this tangent meets. jnp.maximum's own rule is
  # two selects (ties share), each a loop of its own for XLA:CPU.
  return _floored(primals[0]), tangents[0]


def exp_below(x, top):
  """``exp(x - top)`` for a row's ``top`` at or above its logits
  (log-sum-exp, maximum): a ``-inf`` top (a row without any possible class)
  is floored at the lowest finite number, so that its exponentials are 0,
  never ``exp(nan)``, in value and in derivative. No select: where
  :func:`finite_exp` has two on the rows and one on every element, XLA:CPU
  computes this in the loop that reads it. Unlike :func:`finite_exp`, a
  ``+inf`` or NaN top (an infinite logit, a NaN) gives NaN."""
  return jnp.exp(x - _floored(top))


def _softmax(xf, lse, exps, inside):
  """The softmax where ``inside`` (None: everywhere), else 0: from ``exps =
  (exp(x - shift), shift)`` kept by the forward, or ``(exp(x - shift),
  their row sums)``, or from the logits."""
  if exps is None:
    p = finite_exp(xf, lse[:, None])
  elif len(exps) == 3:
    # e / sum e, the sum floored where it was taken (_label_forward): 0 on
    # a row without a possible class, and no select, so that XLA computes
    # it in the gradient's own loop.
    e, _, total = exps
    p = e / total[:, None]
  else:
    e, shift = exps
    p = e * finite_exp(shift, lse)[:, None]
  return p if inside is None else jnp.where(inside, p, 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _row_sums(terms, start=0.0):
  """The row sums of a tuple of [R, C] arrays in one variadic reduction.

  One read of every input for all the sums, which XLA fuses with what makes
  the terms. Its derivative is written out: JAX's rule for a general
  ``lax.reduce`` fails on terms with zero tangents (a mask's count), which
  higher-order autodiff meets.

  The first sum starts at ``start`` (a Python float), the others at 0: a
  floor on a sum of non-negative terms that costs no operation. XLA may
  start a reduction more than once (in parts), so ``start`` must be too
  small to matter wherever a term is not 0.
  """
  zero = jnp.zeros((), terms[0].dtype)
  inits = (jnp.asarray(start, terms[0].dtype),) + (zero,) * (len(terms) - 1)
  return lax.reduce(terms, inits,
                    lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))


@_row_sums.defjvp
@_jit.inlined
def _row_sums_jvp(start, primals, tangents):
  (terms,), (dterms,) = primals, tangents
  return _row_sums(terms, start), tuple(jnp.sum(t, axis=1) for t in dterms)


def _upcast(x, dtype):
  # The barrier keeps XLA from sharing one float32 copy of x between two
  # passes that each read x (a whole [R, C] temporary on CPUs): each
  # converts on its own, inside its fusion.
  return lax.optimization_barrier(x).astype(dtype)


# ---------------------------------------------------------------------------
# Integer labels.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def row_statistics(config, x, labels, keep, class_keep, weight):
  """Per-row statistics of [R, C] logits.

  Args:
    config: a :class:`Config`.
    x: [R, C] logits, any floating dtype (never upcast as a whole).
    labels: [R] int32 labels in ``[0, C)``, or -1 for a row whose label is
      not among these classes (a shard of a vocabulary-parallel call): its
      label logit reads 0.
    keep: optional [R] boolean; the statistics of dropped rows are 0, with
      zero derivatives, whatever their logits hold.
    class_keep: optional [R, C] boolean classes of the softmax.
    weight: optional [C] class weights of the smoothing sums.

  Returns:
    ``(lse, label_x)``, plus ``(sx, wsum, count)`` with ``config.smoothing``:
    sums over the support (kept, not ``-inf``) of ``w x``, ``w`` and 1. Each
    is [R] in float32 (float64 for float64 logits). ``lse`` is ``-inf`` for a
    row without any possible class.
  """
  return _row_forward(config, x, labels, keep, class_keep, weight)[0]


def _row_forward(config, x, labels, keep, class_keep, weight):
  """The statistics, and ``(exp(x - shift), shift)`` for the gradient when
  ``config.keep_exponentials`` (else None)."""
  dtype = _reduction.stat_dtype(x.dtype)
  exps = None
  if config.pallas:
    stats = _pallas().statistics(
        x, class_keep, weight, smoothing=config.smoothing, dtype=dtype,
        interpret=config.interpret, block=config.block,
        num_warps=config.num_warps, num_stages=config.num_stages,
        lane_sums=config.lane_sums)
  else:
    stats, exps = xla_statistics(x, class_keep, weight, config.smoothing,
                                 dtype)
  label_x = jnp.take_along_axis(_upcast(x, x.dtype),
                                jnp.maximum(labels, 0)[:, None], axis=-1,
                                mode="promise_in_bounds")[:, 0]
  label_x = jnp.where(labels >= 0, label_x.astype(dtype), 0)
  stats = (stats[0], label_x) + tuple(stats[1:])
  if keep is not None:
    # Dropped rows may hold anything (inf, nan): zeros keep the zero
    # cotangents of their masked loss from meeting an inf downstream.
    stats = tuple(jnp.where(keep, s, 0) for s in stats)
  return stats, exps if config.keep_exponentials else None


def xla_statistics(x, class_keep, weight, smoothing, dtype):
  """``(lse,)`` or ``(lse, sx, wsum, count)`` of [R, C] logits, plain XLA,
  and ``(exp(x - shift), shift)``."""
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
  x = lax.optimization_barrier(x)
  if class_keep is not None or x.dtype != dtype:
    sums = _support_sums(x, weight, dtype)
  else:
    # On CPUs the plain sums over every class, which are the support's
    # wherever they are finite (a -inf logit makes ``sx`` infinite or NaN):
    # one fused sum, where the support's variadic reduction took XLA:CPU
    # twice the time of a pass of the library's (with every option the
    # cross entropy's value 2.25x optax's plain one, now 1.27x, and its
    # gradient 1.45x, now 1.09x: benchmarks/cross_entropy.py's CPU file).
    # Differentiated (by a derivative of higher order than the first), the
    # support's sums. Not for half-precision logits: XLA:CPU wrote their
    # float32 conversion out for the plain sum, weighted or not (512 MiB
    # at [4096, 32768]), where the variadic reduction converts as it reads.
    sums = _value_form.plain_value(
        lambda x, w: _plain_support_sums(x, w, dtype),
        lambda x, w: _support_sums(x, w, dtype), x, weight, finite=True)
  return (lse, *sums), (exps, shift)


def _support_sums(x, weight, dtype):
  """``(sx, wsum, count)``: the row sums of ``w x``, ``w`` and 1 over the
  support (the classes whose logit is not ``-inf``)."""
  # One variadic reduction, which XLA fuses with the masking (separate sums
  # each get a masked float32 copy of x on CPUs).
  support = x > -jnp.inf
  xs = jnp.where(support, x.astype(dtype), 0)
  ones = support.astype(dtype)
  if weight is None:
    terms = (xs, ones)
  else:
    w = jnp.broadcast_to(weight[None, :], x.shape)
    terms = (w * xs, w * ones, ones)
  sums = _row_sums(terms)
  sx, count = sums[0], sums[-1]
  wsum = sums[-2] if weight is not None else count
  return sx, wsum, count


def _plain_support_sums(x, weight, dtype):
  """:func:`_support_sums` over every class: the same numbers wherever
  ``sx`` is finite (every logit finite)."""
  xf = x.astype(dtype)
  num_classes = x.shape[-1]
  if weight is None:
    sx = jnp.sum(xf, axis=-1)
    wsum = jnp.full_like(sx, num_classes)
  else:
    sx = jnp.sum(xf * weight[None, :], axis=-1)
    # Typed like sx (inside shard_map, varying alike: the condition's two
    # forms must agree).
    wsum = jnp.zeros_like(sx) + jnp.sum(weight).astype(dtype)
  return sx, wsum, jnp.full_like(sx, num_classes)


def _row_statistics_jvp(config, primals, tangents):
  x, labels, keep, class_keep, weight = primals
  dx, _, _, _, dweight = tangents
  if config.pallas:
    # The kernel has no derivative: a second differentiation meets this
    # rule again through the call.
    stats, exps = row_statistics(config, *primals), None
  else:
    stats, exps = _row_forward(config, *primals)
  dx = None if _zero(dx) else dx
  dweight = None if _zero(dweight) or not config.smoothing else dweight
  tangents = _remat(functools.partial(_row_tangents, config.smoothing))(
      x, labels, keep, class_keep, weight, stats[0], exps, dx, dweight)
  return stats, tangents


row_statistics.defjvp(_jit.inlined(_row_statistics_jvp), symbolic_zeros=True)


def _row_tangents(smoothing, x, labels, keep, class_keep, weight, lse, exps,
                  dx, dweight):
  """The statistics' tangents, linear in ``dx`` and ``dweight``.

  Every coefficient is masked where it is made (dropped rows, classes out of
  the softmax or the support), so that its transpose, the gradient, is an
  exact 0 there whatever the logits hold.
  """
  dtype = lse.dtype
  # Zeros typed like the statistics (inside shard_map, varying alike).
  zeros = jnp.zeros_like(lse)
  kept = class_keep
  if keep is not None:
    kept = _rows.both(kept, keep[:, None])
  if dx is None:
    d_lse = d_label = zeros
  else:
    dxf = dx.astype(dtype)
    xf = None if exps is not None else _upcast(x, dtype)
    d_lse = jnp.sum(_softmax(xf, lse, exps, kept) * dxf, axis=-1)
    at_label = lax.broadcasted_iota(labels.dtype, x.shape, 1) == labels[:, None]
    if keep is not None:
      at_label = at_label & keep[:, None]
    d_label = jnp.sum(jnp.where(at_label, dxf, 0), axis=-1)
  out = (d_lse, d_label)
  if not smoothing:
    return out
  xf = _upcast(x, dtype)
  support = _rows.support(xf, kept)
  d_sx = d_wsum = zeros
  if dx is not None:
    w = 1 if weight is None else weight[None, :]
    d_sx = jnp.sum(jnp.where(support, w * dxf, 0), axis=-1)
  if dweight is not None:
    dw = jnp.broadcast_to(dweight[None, :].astype(dtype), x.shape)
    d_sx = d_sx + jnp.sum(jnp.where(support, xf, 0) * dw, axis=-1)
    d_wsum = jnp.sum(jnp.where(support, dw, 0), axis=-1)
  return out + (d_sx, d_wsum, zeros)


# ---------------------------------------------------------------------------
# Probability labels.
#
# Per row, with coefficients c = w y over the kept classes and s the support
# (kept, not -inf), the loss is (1 - eps) sum_j c_j (lse - x_j) plus eps
# times sum_j w_j s_j (lse - x_j) / |s|. Each sum is taken as sum_j c_j
# (log sum_k exp(x_k - m) + (m - x_j)) with m the row's maximum: both terms
# are non-negative, so a large common offset of the logits costs no
# precision. The tangents need lse and the row sums of c and of w s besides
# the logits and labels themselves: the function returns them too.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def label_statistics(config, x, y, keep, class_keep, weight):
  """Per-row cross entropies of [R, C] logits against [R, C] labels.

  Args:
    config: a :class:`Config` (``smoothing`` and ``value_chain``).
    x: [R, C] logits, any floating dtype (never upcast as a whole).
    y: [R, C] labels, any floating dtype.
    keep: optional [R] boolean; dropped rows give 0 with an exact zero
      gradient, whatever they hold.
    class_keep: optional [R, C] boolean classes of the softmax.
    weight: optional [C] class weights.

  Returns:
    ``(cross, lse, ysum)``: :math:`\\sum_j c_j (\\mathrm{lse} - x_j)` over
    the terms with :math:`c_j = w_j y_j \\neq 0`, the row's log-sum-exp and
    :math:`\\sum_j c_j`; with ``config.smoothing`` also ``(smooth, count,
    wsum)``: the same sum against the weights over the support, the
    support's size and the weights' sum there. Each is [R] in float32
    (float64 for float64 logits). On a row of ``-inf`` logits ``lse`` is
    the log of the smallest normal number (finite), so that a label's mass
    there costs ``inf`` and so does its derivative by that label (``lse -
    x``), as the plain formula's is, not ``-inf - -inf``.
  """
  if config.value_chain and not config.smoothing and class_keep is None:
    # Only the value is wanted when this runs (the derivative rule reads
    # the variadic form): XLA drops the totals' reductions, unused.
    return label_chain(x, y, keep, weight, statistics=True)
  return _label_forward(config, x, y, keep, class_keep, weight)[0]


def _coefficients(y, class_keep, weight, dtype):
  c = y.astype(dtype)
  if weight is not None:
    c = c * weight[None, :]
  if class_keep is not None:
    c = jnp.where(class_keep, c, 0)
  return c


def _label_forward(config, x, y, keep, class_keep, weight):
  """The statistics and their totals in one variadic reduction, and
  ``(exp(x - shift), shift)`` when ``config.keep_exponentials``."""
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
  # The sum of exponentials starts at the smallest normal number: at least
  # 1 where a logit is finite, which that leaves as it is, and on a row of
  # -inf logits a floor that keeps its log finite, so that a row whose terms
  # are all zero costs 0; one with mass there costs inf through its
  # below-sum (its logits are inf below the shift of 0). No operation at
  # all: a floor taken after the sum was one more loop for XLA:CPU to
  # compile (a broadcast of the floor that the library's fused sum reads).
  sums = _row_sums(tuple(terms), float(jnp.finfo(dtype).tiny))
  log_sum = jnp.log(sums[0])

  def cross(total, below_sum):
    return total * log_sum + below_sum

  out = (cross(sums[1], sums[2]), log_sum + shift, sums[1])
  if config.smoothing:
    out += (cross(sums[3], sums[4]), sums[5], sums[3])
  if keep is not None:
    out = tuple(jnp.where(keep, s, 0) for s in out)
  return out, (exps, shift, sums[0]) if config.keep_exponentials else None


def label_chain(x, y, keep, weight, statistics=False, poly_epsilon=None,
                total=False):
  r"""The cross sum alone as a chain maximum -> sum of exponentials -> sum
  of ``c (log_sum + m - x)`` with no select on [R, C] arrays, which XLA:CPU
  fuses into one pass: half the time of the variadic reduction of
  :func:`_label_forward` there. The value only: no derivative rule.

  With ``statistics``, :func:`label_statistics`' three (``cross, lse,
  ysum``), with no trace of the variadic form (half the tracing time).
  With ``poly_epsilon`` ([R]), PolyLoss's rows instead of the cross sum:
  :math:`\sum_j c_j (\log s + m - x_j + \epsilon (1 - \mathrm{softmax}
  (x)_j))`, both in the last pass.
  With ``total``, the cross sums' total over the rows (a scalar) in place
  of the rows: the last pass one sum of every term, fused as XLA folds the
  sum of row sums (``keep`` None; not with ``statistics``).

  A zero coefficient on a ``-inf`` logit (a class outside the support)
  makes the plain sum's term ``0 * inf``: the cross sum alone takes the
  guarded sum for such input (see :func:`jaxloss._value_form.unless_nan`),
  the plain one for any other. PolyLoss takes the guarded sum: a condition
  on its sum made XLA write the exponentials out.
  """
  if poly_epsilon is not None:
    return _chain(x, y, keep, weight, statistics, True, poly_epsilon)[0]

  def form(guarded):
    def chain(x, y, keep, weight):
      return _chain(x, y, keep, weight, statistics, guarded, total=total)
    return chain

  out = _value_form.unless_nan(form(False), form(True), x, y, keep, weight)
  return out if statistics else out[0]


def smoothed_chain(x, y, smoothing, keep, weight, total=False):
  r"""The label-smoothed cross entropy of each row, :math:`\sum_j w_j
  ((1 - \varepsilon) y_j + \varepsilon / C) (\mathrm{lse} - x_j)`, as
  :func:`label_chain`'s plain sums (one sum in the last pass), the value
  only: ``(1 - smoothing) * cross + smoothing * smooth / count`` of
  :func:`label_statistics` with ``config.smoothing``, wherever it is
  finite.

  That is wherever every logit of the row is finite: the smoothing mass
  belongs to the support (the finite logits), which is then every class; a
  ``-inf`` logit makes its term ``inf`` (or ``0 * inf``), never a finite
  number, so that a caller takes the exact form where this is not finite
  (:func:`jaxloss._value_form.unless_nan` with ``finite``). ``smoothing``
  is a scalar, traced or concrete. With ``total``, the rows' total (as
  :func:`label_chain`'s).
  """
  return _chain(x, y, keep, weight, False, False, smoothing=smoothing,
                total=total)[0]


def _chain(x, y, keep, weight, statistics, guarded, poly_epsilon=None,
           smoothing=None, total=False):
  """:func:`label_chain`'s sums, plain or ``guarded``, and
  :func:`smoothed_chain`'s (plain only).

  The plain sums are NaN on a row of ``-inf`` logits (``-inf - -inf``),
  where the guarded ones floor the maximum and the sum of exponentials
  (their reductions' initial values: no operation), and a zero coefficient
  on a ``-inf`` logit (``0 * inf``), where they cap each term: the cap
  takes XLA:CPU's fused pass a quarter to a third more time.
  """
  dtype = _reduction.stat_dtype(x.dtype)
  info = jnp.finfo(dtype)
  if guarded:
    # The floors start the reductions (-max, tiny), as _row_sums': a floor
    # taken after them was a loop of its own for XLA:CPU to compile, which
    # also kept it from fusing `x - shift` with the sums that read it.
    shift = lax.reduce(x, np.asarray(jnp.finfo(x.dtype).min, x.dtype),
                       lax.max, (1,)).astype(dtype)
  else:
    shift = jnp.max(x, axis=-1).astype(dtype)

  def shifted(x, shift):
    # x - m <= 0; -inf at -inf logits.
    gap = x.astype(dtype) - shift[:, None]
    return gap, jnp.exp(gap)

  gap, exps = shifted(x, shift)
  # At least 1 where a logit is finite; on a row of -inf logits the guarded
  # sum's floor keeps log_sum finite, so that zero terms stay 0.
  sum_exp = (_row_sums((exps,), float(info.tiny))[0] if guarded
             else jnp.sum(exps, axis=-1))
  log_sum = jnp.log(sum_exp)
  if smoothing is None:
    c = _coefficients(y, None, weight, dtype)
  else:
    # The smoothed labels, with the class weights: one sum in the last pass.
    smoothing = jnp.asarray(smoothing, dtype)
    mixed = y.astype(dtype) * (1 - smoothing) + smoothing / x.shape[-1]
    c = _coefficients(mixed, None, weight, dtype)
  if poly_epsilon is not None:
    # The last pass takes its own x - m and exponentials: the barrier keeps
    # XLA from sharing them (and the broadcast maximum) with the sum's pass,
    # which with few, long rows it wrote out for both (two [R, C]
    # temporaries, 2.5x the time at 128 x 32768).
    gap, exps = shifted(*lax.optimization_barrier((x, shift)))
  if guarded:
    # c (log_sum - gap), with 0 rather than 0 * inf where c is 0 on a -inf
    # logit: the floor on `gap` is finite there, -inf wherever c is not 0
    # (labels need not be non-negative: torch takes any real targets).
    floored = jnp.maximum(gap, -_rows.cap_unless_zero(c))
  else:
    floored = gap
  terms = log_sum[:, None] - floored
  if poly_epsilon is not None:
    # 1 - softmax: exps <= 1 and sum_exp >= its floor, finite throughout.
    terms = terms + poly_epsilon[:, None] * (1 - exps * (1 / sum_exp)[:, None])
  if total:
    if keep is not None or statistics:
      raise ValueError("_chain: total takes no keep and no statistics")
    # One sum over every term: XLA:CPU's row sums written out cost more than
    # the whole sum on short rows (1.15x optax's mean at rows of 10).
    return (jnp.sum(c * terms),)
  out = (jnp.sum(c * terms, axis=-1),)
  if statistics:
    # As _label_forward: the floored sum's log on a row of -inf logits, the
    # only row whose guarded sum is under 1 (the plain sums are NaN there,
    # and never taken).
    lse = log_sum + (jnp.where(sum_exp < 1, 0, shift) if guarded else shift)
    out += (lse, jnp.sum(c, axis=-1))
  if keep is not None:
    out = tuple(jnp.where(keep, s, 0) for s in out)
  return out


def _label_statistics_jvp(config, primals, tangents):
  x, y, keep, class_keep, weight = primals
  dx, dy, _, _, dweight = tangents
  stats, exps = _label_forward(config, x, y, keep, class_keep, weight)
  dx, dy, dweight = (None if _zero(t) else t for t in (dx, dy, dweight))
  tangents = _remat(functools.partial(_label_tangents, config.smoothing))(
      x, y, keep, class_keep, weight, stats, exps, dx, dy, dweight)
  return stats, tangents


label_statistics.defjvp(_jit.inlined(_label_statistics_jvp),
                        symbolic_zeros=True)


def _label_tangents(smoothing, x, y, keep, class_keep, weight, stats, exps,
                    dx, dy, dweight):
  """The tangents of :func:`label_statistics`, linear in ``dx``, ``dy`` and
  ``dweight``.

  ``d cross = ysum d lse - sum_j c_j dx_j + sum_j (lse - x_j) dc_j``, and
  alike for the smoothing sum with the weights over the support. The
  derivative by a coefficient is ``lse - x`` also where it is 0, as
  :func:`jaxloss._rows.cross_sum` has it, but 0 for a zero coefficient on
  a ``-inf`` logit. Coefficients are masked where they are made, so that
  the gradients are exact zeros on dropped rows and classes.
  """
  lse, ysum = stats[1], stats[2]
  dtype = lse.dtype
  # Zeros typed like the statistics (inside shard_map, varying alike).
  zeros = jnp.zeros_like(lse)
  xf = _upcast(x, dtype)
  masked = class_keep
  if keep is not None:
    masked = _rows.both(masked, keep[:, None])
  kept = jnp.ones(x.shape, bool) if masked is None else masked
  support = kept & (xf > -jnp.inf)
  c = _coefficients(y, class_keep, weight, dtype)
  # lse - x where a term has a derivative: finite wherever c may move.
  live = kept & ((c != 0) | (xf > -jnp.inf))
  gap = jnp.where(live, lse[:, None] - jnp.where(live, xf, 0), 0)
  w = None if weight is None else weight[None, :].astype(dtype)
  d_lse = d_cross = d_ysum = zeros
  d_smooth = d_wsum = zeros
  if dx is not None:
    dxf = dx.astype(dtype)
    d_lse = jnp.sum(_softmax(xf, lse, exps, masked) * dxf, axis=-1)
    d_cross = ysum * d_lse - jnp.sum(jnp.where(kept, c, 0) * dxf, axis=-1)
    if smoothing:
      d_smooth = (stats[5] * d_lse
                  - jnp.sum(jnp.where(support, 1 if w is None else w, 0)
                            * dxf, axis=-1))
  if dy is not None:
    dyf = dy.astype(dtype)
    # gap is finite wherever c is 0 (a zero weight or label), so no 0 * inf.
    scale = gap if w is None else w * gap
    d_cross = d_cross + jnp.sum(scale * dyf, axis=-1)
    dc = jnp.where(kept, dyf if w is None else w * dyf, 0)
    d_ysum = d_ysum + jnp.sum(dc, axis=-1)
  if dweight is not None:
    dw = jnp.broadcast_to(dweight[None, :].astype(dtype), x.shape)
    yf = y.astype(dtype)
    d_cross = d_cross + jnp.sum(jnp.where(kept, yf, 0) * gap * dw, axis=-1)
    d_ysum = d_ysum + jnp.sum(jnp.where(kept, yf, 0) * dw, axis=-1)
    if smoothing:
      d_smooth = d_smooth + jnp.sum(
          jnp.where(support, lse[:, None] - jnp.where(support, xf, 0), 0)
          * dw, axis=-1)
      d_wsum = d_wsum + jnp.sum(jnp.where(support, dw, 0), axis=-1)
  out = (d_cross, d_lse, d_ysum)
  if smoothing:
    out += (d_smooth, zeros, d_wsum)
  if keep is not None:
    out = tuple(jnp.where(keep, t, 0) for t in out)
  return out
