"""Kullback-Leibler divergences: optax's row-wise ones and torch's ``kl_div``."""

import functools
import math
import warnings

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp
import numpy as np

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss import _value_form


def _inputs(fn, log_predictions, targets, t_name, axis=None, summed=False,
            upcast=True):
  """Both arrays checked, ``targets`` conformed to ``log_predictions``.

  ``targets`` may broadcast to the shape of ``log_predictions`` but never
  enlarge it; with ``summed``, the axes ``axis`` summed over are class axes,
  which ``targets`` must match exactly. Returns both in float32 (float64 for
  float64 input; in their own dtypes unless ``upcast``) and the summed axes.
  """
  log_predictions = _checks.floating(fn, "log_predictions", log_predictions)
  targets = _checks.floating(fn, t_name, targets)
  axes = _summed_axes(fn, axis, log_predictions.ndim) if summed else ()
  targets = _checks.conform(fn, t_name, targets, "log_predictions",
                            log_predictions.shape, class_axes=axes)
  if not upcast:
    return log_predictions, targets, axes
  dtype = _reduction.stat_dtype(log_predictions.dtype)
  return log_predictions.astype(dtype), targets.astype(dtype), axes


def _summed_axes(fn, axis, ndim):
  if axis is None:
    return tuple(range(ndim))
  for a in (axis if isinstance(axis, (tuple, list)) else (axis,)):
    if isinstance(a, (int, np.integer)) and not -ndim <= a < ndim:
      _checks.fail(fn, f"axis {a} is out of bounds for log_predictions of "
                   f"rank {ndim}")
  return _checks.axes(fn, axis, ndim)


def _elementwise_kl(lp, t):
  r""":math:`t (\log t - \log p)` with :math:`0 \log 0 = 0` and :math:`0 \cdot
  (-\infty) = 0`: zero targets contribute 0 with zero gradients."""
  # Double where: zero targets never reach log or the product, so neither the
  # value nor the gradient sees log(0) or 0 * -inf.
  on = t != 0
  safe_t = jnp.where(on, t, 1)
  safe_lp = jnp.where(on, lp, 0)
  return jnp.where(on, safe_t * (jnp.log(safe_t) - safe_lp), 0)


@jax.custom_jvp
def _elementwise_kl_log_targets(lp, lt):
  r""":math:`e^{\log t} (\log t - \log p)`, 0 where :math:`e^{\log t} = 0`.

  One select on the value: the derivatives are written out, so no NaN of
  the branch not taken reaches them.
  """
  # The target is e^log t as the dtype holds it: where that is 0 (log t =
  # -inf, or so low that it underflows), the term is 0, as kl_divergence
  # gives for a zero target, also on a -inf log p (not 0 * inf).
  t = jnp.exp(lt)
  return jnp.where(t > 0, t * (lt - lp), 0)


def _kl_log_target_terms(lp, lt):
  """:func:`_elementwise_kl_log_targets`' numbers with no select.

  ``log t - log p`` is capped at the largest finite number where the target
  is 0, so that its term is ``0 * max``, not ``0 * inf``; ``log t`` is
  floored at ``-max`` (whose exponential is 0 as well), so that a ``-inf``
  one gives ``0 * (-max - log p)``. Elsewhere the cap is ``inf`` and the
  floor is below ``log t``. XLA:CPU fuses these terms with their sum and
  with the gradient, where a select makes it keep the terms in a temporary.
  """
  lt = jnp.maximum(lt, -jnp.finfo(lt.dtype).max)
  t = jnp.exp(lt)
  return t * jnp.minimum(lt - lp, _rows.cap_unless_zero(t, nonnegative=True))


def _elementwise_kl_log_targets_jvp(primals, tangents):
  # d/dlog p = -t and d/dlog t = t (log t - log p) + t: both 0 at a zero
  # target, whatever log p is. A symbolic zero tangent is left out, so that
  # an infinite term's d/dlog t never meets it (inf * 0). The value is the
  # select-free form, which XLA:CPU fuses with the derivative's pass (the
  # primal's select is the faster for the value alone). The weight is
  # exp(log t) afresh: sharing the form's exponential made XLA:CPU keep two
  # [..., C] temporaries; the barrier keeps XLA from merging it with the
  # exponential of the value's sum (on CPUs the plain one, under a
  # condition), which it otherwise wrote out in a loop of its own for both.
  (lp, lt), (dlp, dlt) = primals, tangents
  out = _kl_log_target_terms(lp, lt)
  w = jnp.exp(jax.lax.optimization_barrier(lt))
  d = jnp.zeros_like(out)
  if not isinstance(dlt, SymbolicZero):
    d = d + (out + w) * dlt
  if not isinstance(dlp, SymbolicZero):
    d = d - w * dlp
  return out, d


_elementwise_kl_log_targets.defjvp(
    _jit.inlined(_elementwise_kl_log_targets_jvp), symbolic_zeros=True)


def _kl_log_target_rows(lp, lt, axes, total=False):
  """Row sums over ``axes`` of :func:`_elementwise_kl_log_targets` (with
  ``total``, their sum: one sum of every term, which XLA:CPU fuses as it
  folds optax's mean of row sums, where the condition on the rows kept it
  from folding them and on short rows their sums written out cost more than
  the whole sum).

  On CPUs the value is the plain sum of ``e^log t (log t - log p)`` unless
  that is NaN (a ``0 * inf`` term, or NaN input), then the guarded one:
  there a guard on every term costs the fused sum a fifth of its time.
  Elsewhere the guard costs nothing, and a condition a synchronization.
  Derivatives are the guarded terms' own. A dropped entry, fed ``log p =
  log t = 0``, adds ``1 * (0 - 0)``: no mask on the terms.

  ``lp`` and ``lt`` come in their own dtypes, each form upcasting them to
  ``lp``'s statistics dtype in its own sums: half-precision operands of the
  condition upcast before it were written out, two float32 copies (32 MiB
  of temporaries on bfloat16 [4096, 1024] against optax's none, 4.96x its
  time in ``benchmarks/suite.py --dtype bfloat16``; 1.02x now).
  """
  dtype = _reduction.stat_dtype(lp.dtype)
  if total:
    axes = None

  def up(f):
    return lambda lp, lt: f(lp.astype(dtype), lt.astype(dtype))

  @up
  def rows(lp, lt):
    return jnp.sum(_elementwise_kl_log_targets(lp, lt), axis=axes)

  @up
  def plain(lp, lt):
    return jnp.sum(jnp.exp(lt) * (lt - lp), axis=axes)

  @up
  def guarded(lp, lt):
    # The select-free form: the branch compiles in a fraction of the time.
    return jnp.sum(_kl_log_target_terms(lp, lt), axis=axes)

  return _value_form.plain_value(plain, rows, lp, lt, guarded=guarded)


def _target_checks(fn, lp, t, t_name, log_targets):
  """Value checks, active under ``checked``: no NaN, no negative mass."""
  if not _checks.checking():
    return
  _checks.values(fn, "log_predictions", ~jnp.isnan(lp), "must not be NaN", lp)
  if log_targets:
    _checks.values(fn, t_name, ~jnp.isnan(t), "must not be NaN", t)
  else:
    _checks.values(fn, t_name, t >= 0, "must be non-negative", t)


def _rowwise(fn, elementwise, log_predictions, targets, t_name, axis, where,
             reduction, extra=None, rows=None):
  """Sums ``elementwise`` over ``axis`` where kept, then reduces the rows;
  ``rows(lp, t, axes)`` instead gives the row sums where dropped entries'
  terms (of ``lp = t = 0``) are 0."""
  # ``rows`` upcasts in its own sums (see _kl_log_target_rows), and so
  # does ``extra``'s sum.
  lp, t, axes = _inputs(fn, log_predictions, targets, t_name, axis,
                        summed=True, upcast=False)
  dtype = _reduction.stat_dtype(lp.dtype)
  keep = None
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    # A mask may drop whole rows (length 1 on the summed axes), as optax's.
    where = _checks.conform(fn, "where", where, "log_predictions", lp.shape)
    # Dropped entries are fed safe values, so that whatever they held (NaN,
    # +inf) gives an exact zero gradient.
    lp = jnp.where(where, lp, 0)
    t = jnp.where(where, t, 0)
  _target_checks(fn, lp, t, t_name, t_name == "log_targets")

  def row_sums(terms):
    if where is not None:
      terms = jnp.where(where, terms, 0)
    return jnp.sum(terms, axis=axes)

  if where is not None:
    keep = jnp.any(where, axis=axes)
  if rows is not None and extra is None and reduction != "none":
    # The rows' total alone: ``rows`` sums every term at once.
    _checks.reduction(fn, reduction)
    num_rows = math.prod(n for i, n in enumerate(lp.shape) if i not in axes)
    return _reduction.reduce_total(rows(lp, t, axes, total=True), reduction,
                                   num_rows, keep=keep)
  loss = (row_sums(elementwise(lp.astype(dtype), t.astype(dtype)))
          if rows is None else rows(lp, t, axes))
  if extra is not None:
    # Summed apart, as optax does: XLA:CPU reduces two simple terms faster
    # than their sum (half the time at [128, 32768] with the gradient).
    loss = loss + row_sums(extra(_reduction.upcast_apart(lp, dtype),
                                 _reduction.upcast_apart(t, dtype)))
  return _reduction.reduce(fn, loss, reduction, keep=keep)


@_jit.jit("axis", "reduction")
def kl_divergence(log_predictions, targets, axis=-1, where=None, *,
                  reduction="none"):
  r"""Kullback-Leibler divergence of predictions from targets, per row.

  .. math::
    \mathrm{KL}(t \,\|\, p) = \sum_j t_j (\log t_j - \log p_j)

  with the convention :math:`0 \log 0 = 0 \cdot \log p = 0`: a zero target
  contributes 0 with zero gradients, also where :math:`\log p_j = -\infty`
  (optax returns NaN there, and NaN gradients for every zero target). A
  positive target on a ``-inf`` log-prediction costs ``inf`` with a finite
  gradient :math:`-t_j` for ``log_predictions``.

  Args:
    log_predictions: floating [..., C] log-probabilities of the prediction.
    targets: floating probabilities of ``log_predictions``' shape; batch
      axes of length 1 broadcast, the summed axes must match.
    axis: axis, tuple of axes or None (all axes) summed over.
    where: optional boolean mask broadcastable to ``log_predictions``: the
      entries summed (length 1 on the summed axes drops whole rows). Dropped
      entries give zero gradients.
    reduction: ``"none"``, ``"mean"`` (over rows with a kept entry) or
      ``"sum"``.

  Returns:
    float32 divergence (float64 for float64 input): the shape without
    ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> log_p = jnp.log(jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    >>> t = jnp.array([[0.8, 0.2, 0.0], [0.1, 0.1, 0.8]])
    >>> print(jaxloss.kl_divergence(log_p, t))
    [0.19274478 0.196827  ]

  References:
    Kullback and Leibler, `On Information and Sufficiency
    <https://www.jstor.org/stable/2236703>`_, 1951;
    ``optax.losses.kl_divergence``; ``torch.nn.functional.kl_div`` summed over
    the classes.
  """
  return _rowwise("kl_divergence", _elementwise_kl, log_predictions, targets,
                  "targets", axis, where, reduction)


@_jit.jit("axis", "reduction")
def kl_divergence_with_log_targets(log_predictions, log_targets, axis=-1,
                                   where=None, *, reduction="none"):
  r"""Kullback-Leibler divergence with targets given as log-probabilities.

  .. math::
    \mathrm{KL}(t \,\|\, p) = \sum_j e^{\log t_j} (\log t_j - \log p_j)

  A ``-inf`` log-target contributes 0 with zero gradients, whatever the
  log-prediction (optax returns NaN, as ``0 \cdot (-\infty)``).

  Args:
    log_predictions: floating [..., C] log-probabilities of the prediction.
    log_targets: floating log-probabilities of ``log_predictions``' shape;
      batch axes of length 1 broadcast, the summed axes must match.
    axis: axis, tuple of axes or None (all axes) summed over.
    where: optional boolean mask broadcastable to ``log_predictions``.
    reduction: ``"none"``, ``"mean"`` (over rows with a kept entry) or
      ``"sum"``.

  Returns:
    float32 divergence (float64 for float64 input): the shape without
    ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> log_p = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    >>> log_t = jnp.array([-jnp.inf, jnp.log(0.5), jnp.log(0.5)])
    >>> print(jaxloss.kl_divergence_with_log_targets(log_p, log_t))
    0.2554

  References:
    ``optax.losses.kl_divergence_with_log_targets``;
    ``torch.nn.functional.kl_div(..., log_target=True)`` summed over the
    classes.
  """
  return _rowwise("kl_divergence_with_log_targets",
                  _elementwise_kl_log_targets, log_predictions, log_targets,
                  "log_targets", axis, where, reduction,
                  rows=_kl_log_target_rows)


@jax.custom_jvp
def _mass_difference(lp, t):
  """:math:`p - t`, the generalized divergence's mass terms."""
  return jnp.exp(lp) - t


def _mass_difference_jvp(primals, tangents):
  # d/dlog p = p. The derivative's exponential is its own (the barrier stops
  # XLA from merging it with the value's): shared, XLA:CPU wrote p out for
  # the gradient's pass, a [..., C] temporary of its own (32 MiB of
  # temporaries at 4096 x 1024 against 16, and twice the time, glibc handing
  # the block out as fresh pages on every call).
  (lp, t), (dlp, dt) = primals, tangents
  p = jnp.exp(jax.lax.optimization_barrier(lp))
  return _mass_difference(lp, t), p * dlp - dt


_mass_difference.defjvp(_jit.inlined(_mass_difference_jvp))


@_jit.jit("axis", "reduction")
def generalized_kl_divergence(log_predictions, targets, axis=-1, where=None,
                              *, reduction="none"):
  r"""Generalized Kullback-Leibler divergence, for unnormalized measures.

  .. math::
    D(t \,\|\, p) = \sum_j t_j (\log t_j - \log p_j) + p_j - t_j

  the Bregman divergence of :math:`x \log x - x`; it equals
  :func:`kl_divergence` when both sum to 1. Zero targets follow
  :func:`kl_divergence`'s convention (optax gives NaN values or gradients).

  Args:
    log_predictions: floating [..., C] log of the predicted measure.
    targets: floating non-negative target measure of
      ``log_predictions``' shape; batch axes of length 1 broadcast, the
      summed axes must match.
    axis: axis, tuple of axes or None (all axes) summed over.
    where: optional boolean mask broadcastable to ``log_predictions``.
    reduction: ``"none"``, ``"mean"`` (over rows with a kept entry) or
      ``"sum"``.

  Returns:
    float32 divergence (float64 for float64 input): the shape without
    ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> log_p = jnp.log(jnp.array([1.0, 2.0, 0.5]))
    >>> print(jaxloss.generalized_kl_divergence(log_p, jnp.array([2.0, 2.0, 0.0])))
    0.8863

  References:
    Boyd and Vandenberghe, `Convex Optimization
    <https://stanford.edu/~boyd/cvxbook/bv_cvxbook.pdf>`_, p. 90;
    ``optax.losses.generalized_kl_divergence``.
  """
  return _rowwise("generalized_kl_divergence", _elementwise_kl,
                  log_predictions, targets, "targets", axis, where, reduction,
                  extra=_mass_difference)


def _deprecated(replacement):
  """Warns at each call, with optax's ``DeprecationWarning`` and message."""
  def wrap(jitted):
    message = (f"The function {jitted.__name__} is deprecated. Please use "
               f"{replacement} instead.")

    @functools.wraps(jitted)
    def public(*args, **kwargs):
      warnings.warn(message, DeprecationWarning, stacklevel=2)
      return jitted(*args, **kwargs)
    return public
  return wrap


@_deprecated("generalized_kl_divergence")
@_jit.jit("axis", "reduction")
def convex_kl_divergence(log_predictions, targets, axis=-1, where=None, *,
                         reduction="none"):
  r"""The generalized KL divergence under its older optax name.

  .. math::
    D(t \,\|\, p) = \sum_j t_j (\log t_j - \log p_j) + p_j - t_j

  Same function as :func:`generalized_kl_divergence`, kept so that code
  calling ``optax.losses.convex_kl_divergence`` ports unchanged. Deprecated,
  as in optax: each call warns with optax's ``DeprecationWarning``.

  Args:
    log_predictions: floating [..., C] log of the predicted measure.
    targets: floating non-negative target measure of
      ``log_predictions``' shape; batch axes of length 1 broadcast, the
      summed axes must match.
    axis: axis, tuple of axes or None (all axes) summed over.
    where: optional boolean mask broadcastable to ``log_predictions``.
    reduction: ``"none"``, ``"mean"`` (over rows with a kept entry) or
      ``"sum"``.

  Returns:
    float32 divergence (float64 for float64 input): the shape without
    ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> import warnings
    >>> log_p = jnp.log(jnp.array([1.0, 2.0, 0.5]))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...   warnings.simplefilter("always")
    ...   print(jaxloss.convex_kl_divergence(log_p, jnp.array([2.0, 2.0, 0.0])))
    0.8863
    >>> print(caught[0].category.__name__, caught[0].message)
    DeprecationWarning The function convex_kl_divergence is deprecated. ...

  References:
    ``optax.losses.convex_kl_divergence``.
  """
  return _rowwise("convex_kl_divergence", _elementwise_kl, log_predictions,
                  targets, "targets", axis, where, reduction,
                  extra=_mass_difference)


_KL_DIV_REDUCTIONS = ("none", "mean", "sum", "batchmean")


@_jit.jit("log_target", "reduction")
@_reduction.elementwise(flat_derivatives=_reduction.FLAT_BELOW)
def kl_div(log_predictions, targets, *, log_target=False, reduction="none"):
  r"""Pointwise Kullback-Leibler divergence with torch's conventions.

  .. math::
    \ell = t (\log t - x)\quad\text{or, with } \texttt{log\_target},\quad
    \ell = e^{t} (t - x)

  where :math:`x` is the log-prediction. Unlike :func:`kl_divergence`
  nothing is summed per row: ``"none"`` gives one term per element,
  ``"mean"`` averages every element, ``"batchmean"`` divides the sum by
  ``log_predictions.shape[0]`` (the mathematical KL per sample, what torch
  recommends), ``"sum"`` sums. A zero target (``-inf`` with ``log_target``)
  contributes 0 with zero gradients, also against a ``-inf`` log-prediction,
  where torch gives NaN, and torch's gradient for a zero target is NaN too.

  Args:
    log_predictions: floating log-probabilities (torch's ``input``).
    targets: probabilities, or log-probabilities with ``log_target``
      (torch's ``target``), floating, broadcastable to the shape of
      ``log_predictions`` (never enlarging it: torch broadcasts both ways).
    log_target: whether ``targets`` are log-probabilities.
    reduction: ``"none"``, ``"mean"``, ``"sum"`` or ``"batchmean"``
      (torch's default is ``"mean"``; here ``"none"``).

  Returns:
    float32 loss (float64 for float64 input): ``log_predictions``' shape
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> log_p = jnp.log(jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    >>> t = jnp.array([[0.8, 0.2, 0.0], [0.1, 0.1, 0.8]])
    >>> print(jaxloss.kl_div(log_p, t, reduction="batchmean"))
    0.19478588

  References:
    ``torch.nn.functional.kl_div`` / ``torch.nn.KLDivLoss`` (same arguments,
    ``input, target`` named ``log_predictions, targets`` as in
    :func:`kl_divergence`).
  """
  fn = "kl_div"
  _checks.reduction(fn, reduction, _KL_DIV_REDUCTIONS)
  log_target = _checks.flag(fn, "log_target", log_target)
  lp, t, _ = _inputs(fn, log_predictions, targets, "targets")
  _target_checks(fn, lp, t, "targets", log_target)
  loss = (_elementwise_kl_log_targets if log_target else _elementwise_kl)(
      lp, t)
  if reduction == "batchmean":
    batch = jnp.shape(log_predictions)[0] if jnp.ndim(log_predictions) else 1
    return jnp.sum(loss) / max(batch, 1)
  return _reduction.reduce(fn, loss, reduction)
