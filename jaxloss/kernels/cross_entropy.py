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
from jaxloss import _multiclass
from jaxloss import _reduction

IMPLEMENTATIONS = ("auto", "xla", "pallas", "reference")
# "auto" takes the Pallas kernels on GPUs from this many classes on.
PALLAS_MIN_CLASSES = 8192


def resolve(fn, implementation, logits, axis, where):
  """``implementation`` made concrete: ``"xla"``, ``"pallas"``, ``"reference"``.

  ``"auto"`` takes the Pallas kernels on GPUs for many classes (not for
  float64, nor for a ``where`` that masks classes, nor past 2**31 logits,
  where 32-bit offsets would not do), the XLA path elsewhere.
  """
  if (not isinstance(implementation, str)
      or implementation not in IMPLEMENTATIONS):
    _checks.fail(fn, "implementation must be one of "
                 f"{', '.join(map(repr, IMPLEMENTATIONS))}, "
                 f"got {implementation!r}")
  if implementation != "auto":
    return implementation
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
  lane_sums: bool = False   # per-lane sums in the statistics kernel
  # Keep exp(x - max) from the forward for the backward instead of computing
  # it again: on CPUs, where the exponentials rather than the memory traffic
  # set the pace, and only when the logits are already float32 (or float64),
  # so that XLA writes them into the gradient's buffer: no temporary.
  keep_exponentials: bool = False


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
    stats, exps = _xla_statistics(x, class_keep, weight, config.smoothing,
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


def _xla_statistics(x, class_keep, weight, smoothing, dtype):
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
      "softmax_cross_entropy_with_integer_labels: the \"xla\" and \"pallas\" "
      "implementations give first-order gradients only (jax.grad, jax.vjp); "
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
    dx = _xla_gradient(x, labels, keep, class_keep, weight, lse, ct_lse,
                       ct_label, ct_sx, exps)
  dweight = None
  if weight is not None:
    # Only with smoothing do class weights reach these statistics; XLA drops
    # this reduction when nobody asks for the weights' gradient.
    xf = x.astype(lse.dtype)
    support = _multiclass.support(xf, class_keep)
    if keep is not None:
      support = support & keep[:, None]
    ct_wsum = cotangents[3]
    dweight = jnp.sum(jnp.where(
        support, ct_sx[:, None] * xf + ct_wsum[:, None], 0), axis=0)
  return dx, None, None, None, dweight


row_statistics.defvjp(_row_statistics_fwd, _row_statistics_bwd)


def _xla_gradient(x, labels, keep, class_keep, weight, lse, ct_lse, ct_label,
                  ct_sx, exps=None):
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
  cols = lax.broadcasted_iota(labels.dtype, x.shape, 1)
  dx = ct_lse[:, None] * p + jnp.where(cols == labels[:, None],
                                       ct_label[:, None], 0)
  if ct_sx is not None:
    support = _multiclass.support(xf, class_keep)
    c = ct_sx[:, None] if weight is None else ct_sx[:, None] * weight[None, :]
    dx = dx + jnp.where(support, c, 0)
  if keep is not None:
    dx = jnp.where(keep[:, None], dx, 0)
  return dx.astype(x.dtype)


def softmax_cross_entropy_with_integer_labels(
    fn, logits, labels, *, axis, where, ignore_index, weight, label_smoothing,
    z_loss, reduction, implementation, config=None):
  """The body of the public function on the custom-VJP path.

  Same arguments and numbers as the reference formulation in
  :mod:`jaxloss._multiclass`; ``implementation`` is ``"xla"`` or
  ``"pallas"``; ``config`` overrides the kernel configuration (benchmarks).
  """
  x, batch_shape, _ = _multiclass.classes_last(fn, logits, axis)
  dtype = _reduction.stat_dtype(x.dtype)
  num_classes = x.shape[-1]
  row_keep, class_keep = _multiclass.split_where(fn, where, logits.shape, axis,
                                                 batch_shape)
  weight = _multiclass._class_weight(  # noqa: SLF001
      fn, weight, num_classes, dtype)
  # The label checks, masks and label weights are exactly the reference's;
  # its label logit goes unused (XLA drops it): the kernel reads its own, so
  # that the label's gradient lands in the same fused pass.
  _, _, label_w, keep, valid = _multiclass.integer_rows(
      fn, lax.stop_gradient(x), labels, batch_shape,
      ignore_index=ignore_index, row_keep=row_keep, weight=weight)
  safe = jnp.where(valid, labels, 0)
  if keep is not None:
    safe = jnp.where(keep, safe, 0)
  rows = math.prod(batch_shape)
  if config is None:
    backend = jax.default_backend()
    config = Config(interpret=backend != "gpu",
                    keep_exponentials=backend == "cpu" and x.dtype == dtype)
  config = config._replace(smoothing=bool(label_smoothing),
                           pallas=implementation == "pallas" and rows > 0)

  def flat(a):
    return _multiclass.flat_rows(a, batch_shape)

  stats = row_statistics(
      config, flat(x), flat(safe).astype(jnp.int32), flat(keep),
      flat(class_keep), weight if label_smoothing else None)
  return _multiclass.loss_from_statistics(
      fn, stats, batch_shape, label_w, keep, valid, label_smoothing, z_loss,
      reduction)
