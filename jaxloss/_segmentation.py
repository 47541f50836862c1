"""Overlap losses for segmentation: Dice, generalized Dice, Tversky."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss import _value_form
from jaxloss._embedding import _axes
from jaxloss._regression import not_nan

# optax's tolerance on the class sums of probabilities (jnp.allclose's), or a
# rounding error of one ulp per class where the input's dtype is coarser.
_SUM_TOLERANCE = 1e-5 + 1e-8


def _sum_tolerance(dtype, num_classes):
  return max(_SUM_TOLERANCE, num_classes * float(jnp.finfo(dtype).eps))


def _values(fn, predictions, targets, probabilities):
  """Under ``checked``: targets in [0, 1]; predictions too when they are
  probabilities, else logits that are not NaN."""
  if probabilities:
    _checks.values(fn, "predictions", (predictions >= 0) & (predictions <= 1),
                   "must be probabilities in [0, 1]", predictions)
  else:
    not_nan(fn, "predictions", predictions)
  _checks.values(fn, "targets", (targets >= 0) & (targets <= 1),
                 "must be in [0, 1]", targets)


def _sums_to_one(fn, predictions):
  """Under ``checked``: probabilities over C > 1 classes sum to 1."""
  if predictions.shape[-1] > 1:
    sums = jnp.sum(predictions.astype(_reduction.stat_dtype(
        predictions.dtype)), axis=-1)
    tolerance = _sum_tolerance(predictions.dtype, predictions.shape[-1])
    _checks.values(fn, "predictions.sum(-1)", jnp.abs(sums - 1) <= tolerance,
                   "must be 1 with apply_softmax=False (probabilities over "
                   "the classes)", sums)


def _probabilities_sum_to_one(fn):
  """optax's check of ``apply_softmax=False`` probabilities, on concrete
  input, for :func:`jaxloss._jit.precheck`.

  optax raises ``ValueError`` when probabilities over C > 1 classes do not
  sum to 1; it can only do so on concrete arrays. So does this, before
  tracing: traced predictions are checked under :func:`jaxloss.checked`
  instead. A single channel holds sigmoid probabilities and is not checked.
  """
  def check(predictions=None, targets=None, apply_softmax=True, **_):
    # A traced switch is left to the jitted function's own message.
    if apply_softmax is not False or isinstance(predictions,
                                                jax.core.Tracer):
      return
    p = np.asarray(predictions)
    single = (p.ndim == np.ndim(targets) - 1 or p.ndim == 0
              or p.shape[-1] == 1)
    if p.dtype.kind == "f" and p.size and not single:
      sums = p.astype(np.float64).sum(-1)
      if not np.all(np.abs(sums - 1)
                    <= _sum_tolerance(p.dtype, p.shape[-1])):
        _checks.fail(fn, "predictions must be probabilities that sum to 1 "
                     "over the class axis with apply_softmax=False, got sums "
                     f"in [{np.min(sums):.6g}, {np.max(sums):.6g}]")
  return check


def _tversky_loss(probs, targets, alpha, beta, smooth, axes):
  r"""``1 - (I + s) / (I + alpha FP + beta FN + s)`` summed over ``axes``.

  A concrete zero ``alpha``, ``beta`` or ``smooth`` leaves its term out. An
  empty prediction against an empty target with ``smooth=0`` (0/0) is a
  perfect match: loss 0, gradient 0.
  """
  intersection = jnp.sum(probs * targets, axis=axes)
  predicted = None if _jit.is_zero(alpha) else jnp.sum(probs, axis=axes)
  return _tversky_ratio(intersection, predicted, targets, alpha, beta, smooth,
                        axes)


def _tversky_ratio(intersection, predicted, targets, alpha, beta, smooth,
                   axes):
  """:func:`_tversky_loss` from the sums ``I`` and ``P`` over ``axes``
  (``P`` may be None where ``alpha`` is a concrete zero); ``targets`` in
  the statistics' dtype or a floating dtype that converts to it exactly."""
  numerator = denominator = intersection
  if not _jit.is_zero(alpha):
    denominator = denominator + alpha * (predicted - intersection)
  if not _jit.is_zero(beta):
    target_total = jnp.sum(targets, axis=axes, dtype=intersection.dtype)
    denominator = denominator + beta * (target_total - intersection)
  if not _jit.is_zero(smooth):
    numerator = numerator + smooth
    denominator = denominator + smooth
  return _mismatch(numerator, denominator)


def _softmax_probabilities(logits, dtype):
  """The softmax over the last axis as ``exp(x - logsumexp(x))``, in
  ``dtype``: one exponential per element read again rather than written
  out. The maximum is taken before the upcast (exactly the same)."""
  top = jax.lax.stop_gradient(
      jnp.max(logits, axis=-1, keepdims=True)).astype(dtype)
  shifted = logits.astype(dtype) - top
  normalizer = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
  return jnp.exp(shifted - normalizer)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _softmax_overlap_sums(logits, targets, axes, dtype):
  """``(sum(p t), sum(p))`` over ``axes``, ``p`` the softmax of ``logits``
  over the last axis, in ``dtype``.

  Its value is :func:`jax.nn.softmax`'s; its derivatives (a custom JVP,
  differentiable again) take ``p = exp(x - logsumexp(x))`` and the
  softmax's tangent ``p (dx - sum(p dx))``, summed over ``axes`` at once.
  Through autodiff of ``jax.nn.softmax`` XLA:CPU wrote out the
  exponentials, the probabilities and their normalizer broadcast to the
  logits' shape: ``dice_loss``'s gradient took 0.93x optax's time with 38
  MiB of temporaries on [128, 64, 64, 8] logits (1.37x and 68 MiB in
  bfloat16, where the targets' conversion was written out too), against
  0.72x and 16 MiB (1.12x and 32 MiB) this way (``benchmarks/suite.py``,
  its files' ``--update`` rows). ``logits`` and floating ``targets`` come
  in their own dtype, converted inside each sum.
  """
  probs = jax.nn.softmax(logits.astype(dtype), axis=-1)
  return (jnp.sum(probs * targets.astype(dtype), axis=axes),
          jnp.sum(probs, axis=axes))


def _softmax_overlap_sums_jvp(axes, dtype, primals, tangents):
  logits, targets = primals
  d_logits, d_targets = tangents
  probs = _softmax_probabilities(logits, dtype)
  targets = targets.astype(dtype)
  intersection = jnp.sum(probs * targets, axis=axes)
  predicted = jnp.sum(probs, axis=axes)
  d_intersection = d_predicted = jnp.zeros_like(predicted)
  if not isinstance(d_logits, SymbolicZero):
    d_logits = d_logits.astype(dtype)
    d_probs = probs * (d_logits - jnp.sum(probs * d_logits, axis=-1,
                                          keepdims=True))
    d_intersection = jnp.sum(d_probs * targets, axis=axes)
    d_predicted = jnp.sum(d_probs, axis=axes)
  if not isinstance(d_targets, SymbolicZero):
    d_intersection = d_intersection + jnp.sum(
        probs * d_targets.astype(dtype), axis=axes)
  return (intersection, predicted), (d_intersection, d_predicted)


_softmax_overlap_sums.defjvp(_softmax_overlap_sums_jvp, symbolic_zeros=True)


def _mismatch_value(numerator, denominator):
  # 0/0 reads 1/1: ``empty`` is 1 there, 0 wherever the denominator is not 0
  # (which leaves the ratio exact), NaN at NaN.
  empty = _rows.zero_flag(denominator)
  kept = 1 - empty
  return 1 - (numerator * kept + empty) / (denominator * kept + empty)


@_value_form.value_form(_mismatch_value)
def _mismatch(numerator, denominator):
  """``1 - numerator / denominator``, and 0 with zero derivatives where the
  denominator is 0.

  The value in arithmetic: on XLA:CPU a select on these sums kept them from
  fusing with the softmax, which was then written out (16 MiB of
  temporaries on [8192, 16, 16, 2] logits, where optax's has none). The
  derivatives keep the selects, whose program compiled faster.
  """
  empty = denominator == 0
  ratio = numerator / jnp.where(empty, 1, denominator)
  return 1 - jnp.where(empty, 1, ratio)


def _class_reduce(fn, loss, reduction):
  """optax's dice ``reduction``: over the class axis only."""
  _checks.reduction(fn, reduction)
  if reduction == "mean":
    return jnp.mean(loss, axis=-1)
  if reduction == "sum":
    return jnp.sum(loss, axis=-1)
  return loss


def _dice(fn, predictions, targets, *, class_weights=None, smooth,
          alpha=0.5, beta=0.5, apply_softmax, reduction="mean",
          ignore_background=False, axis=None, binary=False):
  """The Dice family's body: checks, channel rules, per-class Tversky loss.

  ``binary`` adds a channel axis to both arrays unless the last one already
  has size 1 (:func:`binary_dice_loss`'s layouts).
  """
  if not binary:
    apply_softmax = _checks.flag(fn, "apply_softmax", apply_softmax)
  ignore_background = _checks.flag(fn, "ignore_background",
                                   ignore_background)
  predictions = _checks.floating(fn, "predictions", predictions)
  targets = _checks.numeric(fn, "targets", targets)
  _values(fn, predictions, targets, not apply_softmax)
  if (binary and predictions.ndim == targets.ndim and predictions.ndim
      and predictions.shape[-1] != 1):
    predictions = predictions[..., None]
    targets = targets[..., None]
  # optax's channel rule: a missing class axis of size 1 is added.
  if predictions.ndim == targets.ndim - 1:
    predictions = predictions[..., None]
  if targets.ndim == predictions.ndim - 1:
    targets = targets[..., None]
  _checks.at_least_rank(fn, "predictions", predictions, 1)
  ndim = predictions.ndim
  targets = _checks.conform(fn, "targets", targets, "predictions",
                            predictions.shape, class_axes=(ndim - 1,))
  if not apply_softmax:
    _sums_to_one(fn, predictions)
  axes = (tuple(range(1, ndim - 1)) if axis is None
          else _axes(fn, axis, ndim, "predictions"))
  if ndim - 1 in axes:
    _checks.fail(fn, f"axis {axis!r} must leave out the class axis (the "
                 "last)")
  dtype = _reduction.stat_dtype(jnp.result_type(predictions, targets))
  alpha, beta, smooth = (_jit.cast(h, dtype) for h in (alpha, beta, smooth))
  single = predictions.shape[-1] == 1
  if apply_softmax and not single:
    if not jnp.issubdtype(targets.dtype, jnp.floating):
      targets = targets.astype(dtype)
    intersection, predicted = _softmax_overlap_sums(predictions, targets,
                                                    axes, dtype)
    loss = _tversky_ratio(intersection, predicted, targets, alpha, beta,
                          smooth, axes)
  else:
    probs = predictions.astype(dtype)
    targets = targets.astype(dtype)
    if single:
      # One class: computed without its axis, put back on the loss. Summed
      # with a trailing axis of size 1, XLA:CPU wrote the probabilities out
      # and copied them once more before its sums (3.5x the time).
      probs, targets = probs[..., 0], targets[..., 0]
    if apply_softmax:
      probs = jax.nn.sigmoid(probs)
    loss = _tversky_loss(probs, targets, alpha, beta, smooth, axes)
  if single:
    loss = loss[..., None]
  if class_weights is not None:
    class_weights = _checks.numeric(fn, "class_weights", class_weights)
    class_weights = _checks.conform(
        fn, "class_weights", class_weights, "the per-class loss", loss.shape,
        class_axes=(loss.ndim - 1,))
    loss = loss * class_weights.astype(dtype)
  if ignore_background and loss.shape[-1] > 1:
    loss = loss[..., 1:]
  return _class_reduce(fn, loss, reduction)


@_jit.precheck(_probabilities_sum_to_one("dice_loss"))
@_jit.jit("apply_softmax", "reduction", "ignore_background", "axis",
          smooth=_jit.NON_NEGATIVE, alpha=_jit.NON_NEGATIVE,
          beta=_jit.NON_NEGATIVE)
def dice_loss(predictions, targets, *, class_weights=None, smooth=1.0,
              alpha=0.5, beta=0.5, apply_softmax=True, reduction="mean",
              ignore_background=False, axis=None):
  r"""Soft Dice loss per class, with optax's Tversky weighting of errors.

  For class :math:`c`, with probabilities :math:`p`, targets :math:`t` and
  sums over the spatial axes:

  .. math::
    I_c = \sum_i p_{ic} t_{ic},\qquad
    \ell_c = 1 - \frac{I_c + s}{I_c + \alpha (P_c - I_c)
      + \beta (T_c - I_c) + s}

  where :math:`P_c = \sum_i p_{ic}` and :math:`T_c = \sum_i t_{ic}`; with
  :math:`\alpha = \beta = 1/2` the Dice loss :math:`1 - (2I + 2s)/(P + T +
  2s)`. Probabilities come from a softmax over the last axis, or a sigmoid
  when it has size 1.

  ``reduction`` is optax's: over the class axis only (the batch stays).
  With ``apply_softmax=False``, probabilities over C > 1 classes must sum
  to 1: like optax, a concrete input that does not raises ``ValueError``
  (within optax's tolerance 1e-5, or an ulp per class of a coarser dtype);
  a traced one is checked under :func:`jaxloss.checked`. Differences from
  ``optax.losses.dice_loss``: ``apply_softmax=False`` runs under
  ``jax.jit`` and accepts single-channel probabilities (optax checks with a
  Python ``if``, which fails under jit, and rejects valid binary input);
  targets may broadcast along the batch and spatial axes (optax: equal
  shapes); an empty class predicted empty with ``smooth=0`` is a perfect
  match, loss 0 (optax: NaN); half precision is computed in float32.

  Args:
    predictions: floating logits [..., C] (or probabilities with
      ``apply_softmax=False``); [...] when ``targets`` is [..., 1].
    targets: one-hot or soft targets of ``predictions``' shape (axes of
      length 1 broadcast, except the class axis); [...] when
      ``predictions`` is [..., 1].
    class_weights: optional [C] weights of the per-class losses (or any
      shape broadcasting to the per-class loss, with all C classes).
    smooth: :math:`s \ge 0`, added to numerator and denominator; traced or
      concrete (a concrete 0 adds nothing).
    alpha: :math:`\alpha \ge 0`, the weight of false positives; traced or
      concrete.
    beta: :math:`\beta \ge 0`, the weight of false negatives; traced or
      concrete.
    apply_softmax: turn logits into probabilities first.
    reduction: ``"mean"`` or ``"sum"`` over classes, or ``"none"``.
    ignore_background: drop class 0 (when there are several classes).
    axis: axes summed over, which must leave out the class axis; None for
      all but the first (batch) and the last (class).

  Returns:
    float32 loss (float64 for float64 input): the shape left after summing
    ``axis``, without the class axis unless ``reduction="none"``.

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[[2.0, -1.0], [0.0, 1.0], [-1.0, 3.0]]])
    >>> targets = jnp.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    >>> print(jaxloss.dice_loss(logits, targets))
    [0.0685]

  References:
    Milletari et al., `V-Net <https://arxiv.org/abs/1606.04797>`_, 2016;
    Salehi et al., `Tversky loss function for image segmentation
    <https://arxiv.org/abs/1706.05721>`_, 2017; ``optax.losses.dice_loss``.
  """
  return _dice("dice_loss", predictions, targets, class_weights=class_weights,
               smooth=smooth, alpha=alpha, beta=beta,
               apply_softmax=apply_softmax, reduction=reduction,
               ignore_background=ignore_background, axis=axis)


@_jit.jit("apply_sigmoid", smooth=_jit.NON_NEGATIVE)
def binary_dice_loss(predictions, targets, *, smooth=1.0, apply_sigmoid=True):
  r"""Dice loss of one foreground class: :func:`dice_loss` on a sigmoid.

  .. math::
    \ell = 1 - \frac{2 \sum_i p_i t_i + 2s}{\sum_i p_i + \sum_i t_i + 2s},
    \qquad p = \sigma(x)

  summed over all axes but the first (and a trailing channel axis of size
  1, added when missing).

  Args:
    predictions: floating logits [...] or [..., 1] (probabilities with
      ``apply_sigmoid=False``).
    targets: binary or soft targets, [...] or [..., 1].
    smooth: :math:`s \ge 0`; traced or concrete.
    apply_sigmoid: turn logits into probabilities first.

  Returns:
    float32 loss (float64 for float64 input) of shape
    ``predictions.shape[:1]``: one loss per sample, summed over every other
    axis (a 1-D input reads as that many one-pixel samples, as optax).

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[3.0, -2.0, 1.0], [-3.0, -3.0, 2.0]])
    >>> targets = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    >>> print(jaxloss.binary_dice_loss(logits, targets))
    [0.0751 0.0538]

  References:
    ``optax.losses.binary_dice_loss``, which (unlike this) rejects
    probabilities with ``apply_sigmoid=False`` and fails under ``jax.jit``.
  """
  fn = "binary_dice_loss"
  return _dice(fn, predictions, targets, smooth=smooth,
               apply_softmax=_checks.flag(fn, "apply_sigmoid", apply_sigmoid),
               binary=True)


_FREQUENCY_EPSILON = 1e-7


@_jit.precheck(
    _probabilities_sum_to_one("multiclass_generalized_dice_loss"))
@_jit.jit("apply_softmax", "ignore_background", smooth=_jit.NON_NEGATIVE)
def multiclass_generalized_dice_loss(predictions, targets, *, smooth=1.0,
                                     apply_softmax=True,
                                     ignore_background=False):
  r"""Dice loss averaged with inverse squared class frequencies, as optax.

  .. math::
    w_c \propto \frac{1}{F_c^2 + 10^{-7}},\quad \sum_c w_c = C,\qquad
    \ell = \operatorname{mean}_{b, c}\, w_c\, \ell^{\mathrm{dice}}_{bc}

  with :math:`F_c` the total target mass of class :math:`c` over the whole
  batch, and :math:`\ell^{\mathrm{dice}}` the per-class :func:`dice_loss`.
  Rare classes weigh more. Targets are counted in float32 (optax squares
  integer counts, which wrap around past 46341 pixels in int32).

  Args:
    predictions: floating logits [..., C] (probabilities with
      ``apply_softmax=False``, summing to 1 as in :func:`dice_loss`).
    targets: one-hot targets of the same shape (axes of length 1 broadcast,
      except the class axis).
    smooth: the Dice smoothing :math:`s \ge 0`; traced or concrete.
    apply_softmax: turn logits into probabilities first.
    ignore_background: leave class 0 out of the mean (its weight still
      counts in the normalisation, as optax).

  Returns:
    float32 scalar (float64 for float64 input); 0 with zero gradient for
    an empty batch (optax: NaN).

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[[2.0, -1.0], [0.0, 1.0], [-1.0, 3.0]]])
    >>> targets = jnp.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    >>> print(jaxloss.multiclass_generalized_dice_loss(logits, targets))
    0.0747

  References:
    Sudre et al., `Generalised Dice overlap as a deep learning loss function
    for highly unbalanced segmentations <https://arxiv.org/abs/1707.03237>`_,
    2017 (which pools the weighted overlaps into one ratio; optax, and this,
    average weighted per-class losses instead);
    ``optax.losses.multiclass_generalized_dice_loss``.
  """
  fn = "multiclass_generalized_dice_loss"
  predictions = _checks.floating(fn, "predictions", predictions)
  targets = _checks.numeric(fn, "targets", targets)
  _checks.at_least_rank(fn, "predictions", predictions, 1)
  targets = _checks.conform(fn, "targets", targets, "predictions",
                            predictions.shape,
                            class_axes=(predictions.ndim - 1,))
  dtype = _reduction.stat_dtype(jnp.result_type(predictions, targets))
  frequency = jnp.sum(targets.astype(dtype),
                      axis=tuple(range(targets.ndim - 1)))
  weights = 1 / (frequency**2 + _FREQUENCY_EPSILON)
  weights = weights / jnp.sum(weights) * weights.shape[0]
  loss = _dice(fn, predictions, targets, class_weights=weights, smooth=smooth,
               apply_softmax=apply_softmax, reduction="none",
               ignore_background=ignore_background)
  # The mean over an empty batch is 0, with zero gradient.
  return jnp.sum(loss) / max(loss.size, 1)


@_jit.jit("axis", "reduction", alpha=_jit.NON_NEGATIVE,
          beta=_jit.NON_NEGATIVE, smooth=_jit.NON_NEGATIVE)
def tversky_loss(predictions, targets, *, alpha=0.5, beta=0.5, smooth=0.0,
                 axis=None, reduction="none"):
  r"""Tversky loss on probabilities: Dice with separate weights on FP and FN.

  .. math::
    \ell = 1 - \frac{TP + s}{TP + \alpha\, FP + \beta\, FN + s},\quad
    TP = \sum p\,t,\ FP = \sum p\,(1 - t),\ FN = \sum (1 - p)\, t

  with sums over ``axis``. :math:`\alpha = \beta = 1/2` is the Dice loss,
  :func:`dice_loss` with ``apply_softmax=False`` on one channel;
  :math:`\beta > \alpha` favours recall. An empty prediction against an
  empty target (0/0) is a perfect match, loss 0.

  Keras's ``tversky(y_true, y_pred, alpha, beta)`` documents ``alpha`` as
  the weight of false positives but its code applies it to
  :math:`\sum y_\mathrm{true} (1 - y_\mathrm{pred})`, the false negatives,
  and adds ``1e-7`` to the denominator only: it equals
  ``tversky_loss(y_pred, y_true, alpha=beta, beta=alpha)`` up to that
  ``1e-7`` (and gives 1 for an empty pair). This follows the paper.

  Args:
    predictions: floating probabilities of any shape.
    targets: binary or soft targets broadcastable to ``predictions``
      (never enlarging it).
    alpha: :math:`\alpha \ge 0`, the weight of false positives; traced or
      concrete.
    beta: :math:`\beta \ge 0`, the weight of false negatives; traced or
      concrete.
    smooth: :math:`s \ge 0`; traced or concrete.
    axis: axes summed into one Tversky index; None (Keras's default) for
      all, so that ``"none"`` is a scalar; ``tuple(range(1, ndim))`` for one
      loss per sample.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over what ``axis``
      leaves.

  Returns:
    float32 loss (float64 for float64 input): the shape left after summing
    ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p = jnp.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.7]])
    >>> t = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> print(jaxloss.tversky_loss(p, t, alpha=0.3, beta=0.7, axis=1))
    [0.1237 0.3   ]

  References:
    Salehi et al., `Tversky loss function for image segmentation using 3D
    fully convolutional deep networks <https://arxiv.org/abs/1706.05721>`_,
    2017; ``keras.losses.Tversky`` (see above).
  """
  fn = "tversky_loss"
  predictions = _checks.floating(fn, "predictions", predictions)
  targets = _checks.numeric(fn, "targets", targets)
  _values(fn, predictions, targets, True)
  targets = _checks.conform(fn, "targets", targets, "predictions",
                            predictions.shape)
  axes = _axes(fn, axis, predictions.ndim, "predictions")
  dtype = _reduction.stat_dtype(jnp.result_type(predictions, targets))
  loss = _tversky_loss(predictions.astype(dtype), targets.astype(dtype),
                       _jit.cast(alpha, dtype), _jit.cast(beta, dtype),
                       _jit.cast(smooth, dtype), axes)
  return _reduction.reduce(fn, loss, reduction)
