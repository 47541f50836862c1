"""Classification losses beyond cross entropy: margins, poly, ranking, focal.

Three families of names live here: optax's (``hinge_loss``,
``multiclass_hinge_loss``, ``poly_loss_cross_entropy``, ...), torch's
(``multi_margin_loss``, ``soft_margin_loss``, ...) and Keras's
(``squared_hinge``, ``categorical_focal_cross_entropy``, ...). Each takes the
model output first and its target second.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _binary
from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _multiclass
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss import _value_form
from jaxloss._rows import classes_last
from jaxloss._rows import finish_rows
from jaxloss._rows import flag_label
from jaxloss._rows import integer_rows
from jaxloss._rows import split_where
from jaxloss._regression import not_nan
from jaxloss.kernels import cross_entropy as _fast_ce

# Keras's backend.epsilon(): its probability losses clip to [eps, 1 - eps].
_KERAS_EPSILON = 1e-7


def _keras_clip(p):
  """``p`` clipped to Keras's ``[1e-7, 1 - 1e-7]``, as ``lax.clamp``: its
  derivative is one select (``jnp.clip``'s, through a maximum and a minimum,
  has four, which made XLA:CPU keep ten [N, C] arrays for a softmax-sized
  gradient); at the bounds themselves it is 0 rather than 1/2."""
  return jax.lax.clamp(jnp.asarray(_KERAS_EPSILON, p.dtype), p,
                       jnp.asarray(1 - _KERAS_EPSILON, p.dtype))


def _keras_probabilities(x, dtype):
  """Keras's probabilities from ``x`` over the last axis, in ``dtype``:
  renormalised (``x / sum x``) and clipped (:func:`_keras_clip`).

  On CPUs, from rows of :data:`jaxloss._rows.SHORT_ROWS`, the value alone
  takes the row sums in a pass of their own (behind a barrier; else
  XLA:CPU fuses the division with them and writes the quotients out), the
  quotients from their own conversion of half-precision ``x``, and the clip
  as two maxima, ``-max(-max(p, lo), -hi)``: a clamp or a minimum has
  XLA:CPU write the quotients out for it, where these fuse with the
  caller's sum. ``categorical_focal_cross_entropy``'s value on [4096, 1024]
  bfloat16 probabilities kept 16 MiB of temporaries without this and none
  with it. Shorter rows pay the one fused loop's overhead per row, more
  than the written quotients cost. The derivatives are the clamp's.
  """
  def exact(x):
    x = x.astype(dtype)
    return _keras_clip(x / jnp.sum(x, axis=-1, keepdims=True))

  if jax.default_backend() != "cpu" or _rows.short_rows_on_cpu(x.shape[-1]):
    return exact(x)

  def fast(x):
    total = jax.lax.optimization_barrier(
        jnp.sum(x.astype(dtype), axis=-1, keepdims=True))
    return _keras_clip_value(_reduction.upcast_apart(x, dtype) / total)

  return _value_form.value_form(fast)(exact)(x)


def _keras_clip_value(p):
  """:func:`_keras_clip`'s value as two maxima, ``-max(-max(p, lo), -hi)``,
  for the value forms: XLA:CPU fuses them with a sum, where it writes a
  clamp's or a minimum's result out first. NaN stays NaN."""
  low = jnp.asarray(_KERAS_EPSILON, p.dtype)
  high = jnp.asarray(1 - _KERAS_EPSILON, p.dtype)
  return -jnp.maximum(-jnp.maximum(p, low), -high)


def _pair(fn, x_name, x, t_name, t, *, weight=None, where=None,
          class_axes=()):
  """Model output and target checked, the target, weight and mask brought to
  the model output's shape (never enlarging it), in float32/64.

  ``class_axes`` (ints, negative ones counted from the end) are the axes the
  target must match exactly.
  """
  x = _checks.floating(fn, x_name, x)
  t = _checks.numeric(fn, t_name, t)
  t = _checks.conform(fn, t_name, t, x_name, x.shape,
                      class_axes=tuple(a % x.ndim for a in class_axes))
  dtype = _reduction.stat_dtype(x.dtype)
  x, t = x.astype(dtype), t.astype(dtype)
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    weight = _checks.conform(fn, "weight", weight, x_name,
                             x.shape).astype(dtype)
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    where = _checks.conform(fn, "where", where, x_name, x.shape)
    x = jnp.where(where, x, 0)
  return x, t, weight, where


def _finish(fn, loss, weight, where, reduction):
  if weight is not None:
    loss = loss * weight
  loss = _reduction.mask(loss, where)
  return _reduction.reduce(fn, loss, reduction, keep=where)


def _signs(fn, x, t, where):
  """Value checks of the {-1, 1} margin losses, active under ``checked``."""
  if not _checks.checking():
    return
  _binary._value_check(fn, "predictor_outputs", ~jnp.isnan(x),
                       "must not be NaN", x, where)
  _binary._value_check(fn, "targets", (t == 1) | (t == -1),
                       "must be -1 or 1", t, where)


def _unit_interval(fn, x, y, from_logits):
  """Value checks of the Keras focal losses, active under ``checked``."""
  if not _checks.checking():
    return
  if from_logits:
    _checks.values(fn, "predictions", ~jnp.isnan(x), "must not be NaN", x)
  else:
    _checks.values(fn, "predictions", (x >= 0) & (x <= 1),
                   "must be in [0, 1]", x)
  _checks.values(fn, "targets", (y >= 0) & (y <= 1), "must be in [0, 1]", y)


def _probability_labels(fn, logits, labels, axis):
  """Probability labels brought to ``logits``' shape: the batch axes may
  broadcast, the class axes match exactly."""
  labels = _checks.numeric(fn, "labels", labels)
  return _checks.conform(fn, "labels", labels, "logits", logits.shape,
                         class_axes=_checks.axes(fn, axis, logits.ndim))


def _one_hot(labels, num_classes):
  """``labels`` one-hot over the last axis. A label out of range matches no
  class: the losses make its row NaN on their own."""
  classes = jnp.arange(num_classes).reshape((1,) * labels.ndim + (-1,))
  return labels[..., None] == classes


# ----------------------------------------------------------------------------
# Binary margins (optax names).


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart=True)
def hinge_loss(predictor_outputs, targets, *, weight=None, where=None,
               reduction="none"):
  r"""Binary hinge loss on decision values, with targets in {-1, 1}.

  .. math::
    \ell = \max(0, 1 - y x)

  Args:
    predictor_outputs: floating decision values, any shape.
    targets: targets in {-1, 1}, ``predictor_outputs``' shape or
      broadcasting to it (never enlarging it: [N] targets against [N, 1]
      outputs are an error, where optax broadcasts both to [N, N]).
    weight: optional per-element weights broadcasting to
      ``predictor_outputs``' shape.
    where: optional boolean mask broadcasting to ``predictor_outputs``'
      shape; dropped elements give loss 0 and gradient 0.
    reduction: ``"none"``, ``"mean"`` (over kept elements) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): ``predictor_outputs``' shape
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([2.0, 0.3, -0.5])
    >>> print(jaxloss.hinge_loss(x, jnp.array([1, 1, 1])))
    [0.  0.7 1.5]

  References:
    ``optax.losses.hinge_loss``; Keras's ``hinge`` is this averaged over the
    last axis.
  """
  fn = "hinge_loss"
  x, t, weight, where = _pair(fn, "predictor_outputs", predictor_outputs,
                              "targets", targets, weight=weight, where=where)
  _signs(fn, x, t, where)
  return _finish(fn, jnp.maximum(0, 1 - x * t), weight, where, reduction)


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart=True)
def perceptron_loss(predictor_outputs, targets, *, weight=None, where=None,
                    reduction="none"):
  r"""Binary perceptron loss on decision values, with targets in {-1, 1}.

  .. math::
    \ell = \max(0, -y x)

  Args:
    predictor_outputs: floating decision values, any shape.
    targets: targets in {-1, 1}, ``predictor_outputs``' shape or
      broadcasting to it, never enlarging it (optax requires equal shapes).
    weight: optional per-element weights broadcasting to
      ``predictor_outputs``' shape.
    where: optional boolean mask broadcasting to ``predictor_outputs``'
      shape.
    reduction: ``"none"``, ``"mean"`` (over kept elements) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): ``predictor_outputs``' shape
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([2.0, 0.3, -0.5])
    >>> print(jaxloss.perceptron_loss(x, jnp.array([1, -1, 1])))
    [0.  0.3 0.5]

  References:
    `Perceptron <https://en.wikipedia.org/wiki/Perceptron>`_;
    ``optax.losses.perceptron_loss``.
  """
  fn = "perceptron_loss"
  x, t, weight, where = _pair(fn, "predictor_outputs", predictor_outputs,
                              "targets", targets, weight=weight, where=where)
  _signs(fn, x, t, where)
  return _finish(fn, jnp.maximum(0, -x * t), weight, where, reduction)


# ----------------------------------------------------------------------------
# Multiclass margins on integer labels (optax names).


def _multiclass_rows(fn, scores, labels, axis, where):
  scores = _checks.floating(fn, "scores", scores)
  x, batch_shape, row_keep = _rows.masked_rows(fn, "scores", scores, axis,
                                               where)
  _rows.class_values(fn, [("scores", x, ~jnp.isnan(x),
                                 "must not be NaN")],
                           row_keep, None, scores.shape, axis)
  labels = _rows.row_labels(fn, "labels", labels, "scores", scores.shape,
                      batch_shape)
  x, label_x, _, keep, valid = integer_rows(
      fn, x, labels, batch_shape, ignore_index=None, row_keep=row_keep,
      weight=None)
  # A row whose label is out of range is NaN (flag_label) with a zero
  # gradient: its scores' tangents are closed.
  x = _rows.gate_rows(x, ~valid)
  # One-hot of a label in range (0 for one out of range: that row is NaN).
  safe = jnp.where(valid, labels, 0)
  return x, label_x, _one_hot(safe, x.shape[-1]), keep, valid


@_jit.jit("axis", "reduction")
def multiclass_hinge_loss(scores, labels, *, axis=-1, where=None,
                          reduction="none"):
  r"""Multiclass hinge loss (Crammer-Singer) against integer labels.

  .. math::
    \ell = \max_j \left(x_j + 1 - [j = y]\right) - x_y

  A label outside ``[0, C)`` gives NaN for its row (optax reads no class
  and returns a plausible number).

  Args:
    scores: floating [..., C, ...] scores.
    labels: integer labels with the batch shape (``scores``' shape without
      ``axis``) or broadcasting to it.
    axis: class axis or tuple of axes (optax: last axis only).
    where: optional boolean row mask with the batch shape; dropped rows give
      loss 0 and gradient 0.
    reduction: ``"none"``, ``"mean"`` (over kept rows) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 scores): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> scores = jnp.array([[2.0, 0.5, 1.5], [0.1, 0.2, 0.3]])
    >>> print(jaxloss.multiclass_hinge_loss(scores, jnp.array([0, 0])))
    [0.5 1.2]

  References:
    Crammer and Singer, `On the Algorithmic Implementation of Multiclass
    Kernel-based Vector Machines <https://jmlr.org/papers/v2/crammer01a.html>`_,
    JMLR 2001; ``optax.losses.multiclass_hinge_loss``.
  """
  fn = "multiclass_hinge_loss"
  x, label_x, one_hot, keep, valid = _multiclass_rows(fn, scores, labels,
                                                      axis, where)
  loss = _rows.row_max(x + 1 - one_hot) - flag_label(label_x, valid)
  return finish_rows(fn, loss, None, keep, valid, reduction, gated=True)


@_jit.jit("axis", "reduction")
def multiclass_perceptron_loss(scores, labels, *, axis=-1, where=None,
                               reduction="none"):
  r"""Multiclass perceptron loss against integer labels.

  .. math::
    \ell = \max_j x_j - x_y

  A label outside ``[0, C)`` gives NaN for its row.

  Args:
    scores: floating [..., C, ...] scores.
    labels: integer labels with the batch shape (``scores``' shape without
      ``axis``) or broadcasting to it.
    axis: class axis or tuple of axes (optax: last axis only).
    where: optional boolean row mask with the batch shape.
    reduction: ``"none"``, ``"mean"`` (over kept rows) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 scores): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> scores = jnp.array([[2.0, 0.5, 1.5], [0.1, 0.2, 0.3]])
    >>> print(jaxloss.multiclass_perceptron_loss(scores, jnp.array([0, 0])))
    [0.  0.2]

  References:
    Collins, `Discriminative Training Methods for Hidden Markov Models
    <https://aclanthology.org/W02-1001/>`_, EMNLP 2002;
    ``optax.losses.multiclass_perceptron_loss``.
  """
  fn = "multiclass_perceptron_loss"
  x, label_x, _, keep, valid = _multiclass_rows(fn, scores, labels, axis,
                                                where)
  loss = jnp.max(x, axis=-1) - flag_label(label_x, valid)
  return finish_rows(fn, loss, None, keep, valid, reduction, gated=True)


# ----------------------------------------------------------------------------
# Softmax-based (optax names).


@_jit.jit("axis", "reduction",
          epsilon=_jit.Hyper(low_open=True, high_open=True, array=True))
def poly_loss_cross_entropy(logits, labels, *, epsilon=2.0, axis=-1,
                            where=None, reduction="none"):
  r"""PolyLoss: softmax cross entropy plus a weighted first polynomial term.

  .. math::
    \ell = \mathrm{CE}(x, y) + \epsilon \sum_j y_j \left(1 - p_j\right),
    \qquad p = \mathrm{softmax}(x)

  The cross entropy is :func:`jaxloss.softmax_cross_entropy`, so ``-inf``
  logits mark impossible classes (optax returns NaN for them) and gradients
  stay finite.

  Args:
    logits: floating [..., C, ...] logits.
    labels: probabilities, ``logits``' shape or broadcasting to it over the
      batch axes (the class axes match exactly).
    epsilon: coefficient of the polynomial term, traced or concrete, any
      real number or an array broadcasting to the batch shape (2.0 for
      ImageNet, -1.0 for detection in the paper). An exact concrete 0 leaves
      the term out of the program: the softmax cross entropy alone.
    axis: class axis or tuple of axes.
    where: optional boolean mask: batch-shaped to drop rows, or
      ``logits``-shaped to restrict the softmax to some classes (as optax).
    reduction: ``"none"``, ``"mean"`` (over kept rows) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 logits): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> print(jaxloss.poly_loss_cross_entropy(logits, labels))
    [0.7587007 4.8473077]

  References:
    Leng et al., `PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions <https://arxiv.org/abs/2204.12511>`_, 2022;
    ``optax.losses.poly_loss_cross_entropy``.
  """
  fn = "poly_loss_cross_entropy"
  logits = _checks.floating(fn, "logits", logits)
  shape = logits.shape
  labels = _probability_labels(fn, logits, labels, axis)
  x, batch_shape, _ = classes_last(fn, logits, axis)
  x = x.astype(_reduction.stat_dtype(x.dtype))
  y, _, _ = classes_last(fn, labels, axis)
  y = y.astype(x.dtype)
  row_keep, class_keep = split_where(fn, where, shape, axis, batch_shape)
  _rows.probability_values(fn, x, y, row_keep, class_keep, shape, axis)
  if _jit.is_zero(epsilon):
    epsilon = None
  else:
    epsilon = _checks.conform(fn, "epsilon", jnp.asarray(epsilon, x.dtype),
                              "the batch shape of logits", batch_shape)
    epsilon = _rows.flat_rows(jnp.broadcast_to(epsilon, batch_shape),
                              batch_shape)
  if row_keep is not None:
    x = jnp.where(row_keep[..., None], x, 0)
  if class_keep is not None:
    # Excluded classes carry no label mass: a NaN there would otherwise reach
    # the logits' gradient through the polynomial term (0 * NaN).
    y = jnp.where(class_keep, y, 0)

  def flat(a):
    return _rows.flat_rows(a, batch_shape)

  loss = _poly_rows(_fast_ce.default_config(x), flat(x), flat(y), epsilon,
                    flat(row_keep), flat(class_keep)).reshape(batch_shape)
  loss = _reduction.mask(loss, row_keep)
  return _reduction.reduce(fn, loss, reduction, keep=row_keep)


def _poly_terms(config, x, y, epsilon, keep, class_keep, value):
  """PolyLoss of [R, C] rows: the cross entropies plus ``epsilon`` ([R], or
  None: the term left out) times ``sum_j y_j (1 - p_j)``.

  ``value``: the form for the value alone, on CPUs the cross entropy's
  chain with both terms in its last pass; else the one whose reverse mode
  keeps least, the softmax from the statistics' own log-sum-exp.
  """
  if value and config.value_chain and class_keep is None:
    return _fast_ce.label_chain(x, y, keep, None, poly_epsilon=epsilon)
  stats = _fast_ce.label_statistics(config, x, y, keep, class_keep, None)
  cross = stats[0]
  if class_keep is not None:
    # Excluded classes read -inf: probability 0 and an exact zero
    # gradient, whatever they held.
    x = jnp.where(class_keep, x, -jnp.inf)
  if value:
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    terms = y * (1 - jnp.exp(x - lse))
    if class_keep is not None:
      terms = jnp.where(class_keep, terms, 0)
    one_minus_pt = jnp.sum(terms, axis=-1)
  else:
    terms = y * _fast_ce.exp_below(x, stats[1][:, None])
    kept = _rows.both(class_keep, None if keep is None else keep[:, None])
    if kept is not None:
      terms = jnp.where(kept, terms, 0)
    one_minus_pt = stats[2] - jnp.sum(terms, axis=-1)
  return cross if epsilon is None else cross + epsilon * one_minus_pt


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _poly_rows(config, x, y, epsilon, keep, class_keep):
  """:func:`_poly_terms`'s value form, with its derivatives those of the
  statistics' form."""
  return _poly_terms(config, x, y, epsilon, keep, class_keep, True)


def _poly_rows_jvp(config, primals, tangents):
  # Only the arguments with a tangent are differentiated: a zero tangent of
  # the labels would meet their infinite derivative (lse - x) at a -inf
  # logit, 0 * inf.
  x, y, epsilon, keep, class_keep = primals
  args = [x, y, epsilon]
  live = [i for i, t in enumerate(tangents[:3])
          if not isinstance(t, SymbolicZero)]

  def rows(*values):
    full = list(args)
    for i, value in zip(live, values):
      full[i] = value
    return _poly_terms(config, *full, keep, class_keep, False)

  return jax.jvp(rows, tuple(args[i] for i in live),
                 tuple(tangents[i] for i in live))


_poly_rows.defjvp(_jit.inlined(_poly_rows_jvp), symbolic_zeros=True)


@_jit.jit("axis", "reduction", label_smoothing=_jit.UNIT)
def safe_softmax_cross_entropy(logits, labels, *, axis=-1, where=None,
                               weight=None, label_smoothing=0.0,
                               reduction="none"):
  r"""Softmax cross entropy with :math:`0 \log 0 = 0` at ``-inf`` logits.

  .. math::
    \ell = -\sum_j y_j \log \mathrm{softmax}(x)_j

  The same function as :func:`jaxloss.softmax_cross_entropy`, which already
  reads zero-label terms as 0 at ``-inf`` logits; the name is kept so that
  code calling ``optax.losses.safe_softmax_cross_entropy`` ports unchanged.

  Args:
    logits: floating [..., C, ...] logits.
    labels: probabilities, ``logits``' shape or broadcasting to it over the
      batch axes (the class axes match exactly).
    axis: class axis or tuple of axes (optax: last axis only).
    where: optional boolean mask, batch-shaped or ``logits``-shaped.
    weight: optional [C] class weights, as torch's.
    label_smoothing: in [0, 1], traced or concrete.
    reduction: ``"none"``, ``"mean"`` (over kept rows) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 logits): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[1.2, -0.8, -jnp.inf], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> print(jaxloss.safe_softmax_cross_entropy(logits, labels))
    [0.12692809 2.951799  ]

  References:
    ``optax.losses.safe_softmax_cross_entropy``.
  """
  fn = "safe_softmax_cross_entropy"
  logits = _checks.floating(fn, "logits", logits)
  labels = _probability_labels(fn, logits, labels, axis)
  return _multiclass.probability_cross_entropy(
      fn, logits, labels, axis=axis, where=where, weight=weight,
      label_smoothing=label_smoothing, reduction=reduction)


_REDUCE_FNS = {"none": None, "mean": jnp.mean, "sum": jnp.sum}


@_jit.jit("reduce_fn", "reduction")
def ranking_softmax_loss(logits, labels, *, where=None, weights=None,
                         reduce_fn=jnp.mean, reduction=None):
  r"""Listwise softmax cross entropy for ranking.

  .. math::
    \ell = -\sum_i w_i y_i \log \frac{e^{s_i}}{\sum_{j \in \mathrm{valid}}
    e^{s_j}}

  Items dropped by ``where`` are out of the softmax and the sum; a list with
  no valid item costs 0 and is left out of a ``jnp.mean`` reduction (a mean
  over no list is 0). Zero-label items count 0 even at a ``-inf`` score (optax
  returns NaN there), a relevant one costs ``inf`` (even in a list of
  ``-inf`` scores), a list of ``-inf`` scores with no relevant item costs 0
  with zero gradient, and gradients of dropped items are exact zeros.

  Args:
    logits: floating [..., list_size] item scores.
    labels: relevance labels, ``logits``' shape or broadcasting to it over
      the leading axes (one label per item: the list axis matches).
    where: optional boolean [..., list_size] mask of valid items,
      broadcasting to ``logits``' shape.
    weights: optional per-item weights broadcasting to ``logits``' shape.
    reduce_fn: ``jnp.mean`` (default, as optax), ``jnp.sum``, None for the
      per-list losses, or any function called as ``reduce_fn(loss,
      where=valid_lists)``.
    reduction: alternative spelling of ``reduce_fn`` in jaxloss's terms:
      ``"none"``, ``"mean"`` or ``"sum"``; leave ``reduce_fn`` at its default
      when using it.

  Returns:
    float32 loss (float64 for float64 logits): a scalar, or [...] per list
    when not reduced.

  Example:
    >>> import jaxloss
    >>> scores = jnp.array([[2.0, 1.0, 0.5], [0.3, 0.2, 0.1]])
    >>> relevance = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    >>> print(jaxloss.ranking_softmax_loss(scores, relevance, reduce_fn=None))
    [2.4287376 1.2019428]

  References:
    Cao et al., `Learning to Rank: From Pairwise Approach to Listwise
    Approach <https://dl.acm.org/doi/10.1145/1273496.1273513>`_, ICML 2007;
    ``optax.losses.ranking_softmax_loss``.
  """
  fn = "ranking_softmax_loss"
  if reduction is not None:
    _checks.reduction(fn, reduction)
    if reduce_fn is not jnp.mean:
      _checks.fail(fn, "pass reduce_fn or reduction, not both, got "
                   f"reduce_fn={reduce_fn!r} and reduction={reduction!r}")
    reduce_fn = _REDUCE_FNS[reduction]
  elif reduce_fn is not None and not callable(reduce_fn):
    _checks.fail(fn, f"reduce_fn must be callable or None, got {reduce_fn!r}",
                 TypeError)
  logits = _checks.floating(fn, "logits", logits)
  _checks.at_least_rank(fn, "logits", logits, 1)
  shape = logits.shape
  _checks.has_classes(fn, shape, (len(shape) - 1,), -1)
  x = logits.astype(_reduction.stat_dtype(logits.dtype))
  labels = _checks.numeric(fn, "labels", labels)
  # The list axis is the class axis: one label per item, never spread.
  y = _checks.conform(fn, "labels", labels, "logits", shape,
                      class_axes=(len(shape) - 1,))
  y = y.astype(x.dtype)
  value_keep = None
  if where is not None:
    value_keep = _checks.conform(
        fn, "where", _checks.boolean(fn, "where", where), "logits", shape)
  not_nan(fn, "logits", x, value_keep)
  ok = y >= 0
  _checks.values(fn, "labels", ok if value_keep is None else ok | ~value_keep,
                 "must be non-negative (relevance)", y)
  if weights is not None:
    weights = _checks.numeric(fn, "weights", weights)
    y = y * _checks.conform(fn, "weights", weights, "logits",
                            shape).astype(x.dtype)
  keep = row_keep = None
  if where is not None:
    keep = value_keep
    row_keep = jnp.any(keep, axis=-1)
    x = jnp.where(keep, x, 0)
    y = jnp.where(keep, y, 0)
    # A list with no valid item normalises over all its (zeroed) items: a
    # finite lse, so nothing NaN reaches its masked-out gradient.
    keep = jnp.where(row_keep[..., None], keep, True)
  # Dropped items are out of the softmax: -inf logits.
  lse = _rows.logsumexp(x, keep)
  loss = _rows.cross_sum(y, lse, x)
  if reduce_fn is None:
    return _reduction.mask(loss, row_keep)
  if reduce_fn is jnp.mean:
    return _reduction.reduce(fn, loss, "mean", keep=row_keep)
  if reduce_fn is jnp.sum:
    return jnp.sum(loss)
  # The caller's function traced as the caller wrote it.
  return _jit.staged(reduce_fn)(loss, where=row_keep)


@_jit.jit("axis", alpha=_jit.Hyper(0.0, 1.0, array=True))
def smooth_labels(labels, alpha, *, axis=-1, where=None):
  r"""Label smoothing: mixes labels with the uniform distribution.

  .. math::
    y \leftarrow (1 - \alpha)\, y + \alpha / K

  over the :math:`K` classes along ``axis`` (the classes kept by ``where``
  when given). Classes dropped by ``where`` get no smoothing mass, so a
  smoothed row still sums to 1 over its kept classes and to nothing more
  (optax adds :math:`\alpha / K` to dropped classes too).

  Args:
    labels: one-hot or probability labels (floating, integer or boolean).
    alpha: smoothing factor in [0, 1], traced or concrete, a number or an
      array broadcasting to ``labels``' shape (a smoothing per row, say).
    axis: class axis or tuple of axes.
    where: optional boolean mask broadcasting to ``labels``' shape: the
      classes that take part.

  Returns:
    Smoothed labels, ``labels``' shape, in ``labels``' floating dtype
    (float32 for integer or boolean labels).

  Example:
    >>> import jaxloss
    >>> print(jaxloss.smooth_labels(jnp.array([0.0, 1.0, 0.0, 0.0]), 0.2))
    [0.05 0.85 0.05 0.05]

  References:
    Müller, Kornblith and Hinton, `When Does Label Smoothing Help?
    <https://arxiv.org/abs/1906.02629>`_, 2019; ``optax.smooth_labels``.
  """
  fn = "smooth_labels"
  labels = _checks.numeric(fn, "labels", labels)
  out_dtype = (labels.dtype if jnp.issubdtype(labels.dtype, jnp.floating)
               else jnp.float32)
  y = labels.astype(_reduction.stat_dtype(out_dtype))
  axes = _checks.axes(fn, axis, y.ndim)
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    where = _checks.conform(fn, "where", where, "labels", y.shape)
  if _jit.is_zero(alpha):
    return y.astype(out_dtype)
  alpha = _checks.conform(fn, "alpha", jnp.asarray(alpha, y.dtype), "labels",
                          y.shape)
  if where is None:
    count = float(np.prod([y.shape[a] for a in axes]))
    return ((1 - alpha) * y + alpha / count).astype(out_dtype)
  count = jnp.sum(where, axis=axes, keepdims=True, dtype=y.dtype)
  uniform = jnp.where(where, 1 / jnp.maximum(count, 1), 0)
  return ((1 - alpha) * y + alpha * uniform).astype(out_dtype)


# ----------------------------------------------------------------------------
# torch.nn.functional names.


def _torch_rows(fn, predictions):
  """torch's (N, C) or (C,) scores, in float32/64; a 0-d input is one row of
  one class, as torch reads it."""
  predictions = _checks.floating(fn, "predictions", predictions)
  if predictions.ndim == 0:
    predictions = predictions[None]
  if predictions.shape[-1] == 0:
    _checks.fail(fn, f"predictions must have at least one class, got shape "
                 f"{predictions.shape}")
  not_nan(fn, "predictions", predictions)
  return predictions.astype(_reduction.stat_dtype(predictions.dtype))


@_jit.jit("p", "reduction", margin=_jit.Hyper())
def multi_margin_loss(predictions, targets, *, p=1, margin=1.0, weight=None,
                      reduction="none"):
  r"""Multiclass margin loss against integer targets, as torch's.

  .. math::
    \ell = \frac{w_y}{C} \sum_{j \ne y} \max(0, m - x_y + x_j)^p

  ``reduction="mean"`` averages over rows without the class weights, as
  torch does. A target outside ``[0, C)`` gives NaN for its row (torch
  raises).

  torch's layouts are read as torch reads them: a 0-d ``predictions`` is
  one row of one class, and a (C,) ``predictions`` with a (1,) ``targets``
  is one row in a batch of one (the loss has shape (1,)).

  Args:
    predictions: floating [..., C] scores (torch: (N, C), (C,) or ()).
    targets: integer targets with the batch shape [...] or broadcasting to
      it (torch: (N,), () or (1,)).
    p: 1 or 2, as torch (a structural choice, fixed at trace time).
    margin: the margin :math:`m`, traced or concrete, any number (torch
      accepts negative margins too).
    weight: optional [C] class weights :math:`w`.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` (torch's default is
      ``"mean"``; here ``"none"``).

  Returns:
    float32 loss (float64 for float64 input): shape [...] for ``"none"``,
    else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([[0.1, 0.2, 0.4, 0.8]])
    >>> print(jaxloss.multi_margin_loss(x, jnp.array([3])))
    [0.325]

  References:
    ``torch.nn.functional.multi_margin_loss`` / ``torch.nn.MultiMarginLoss``.
  """
  fn = "multi_margin_loss"
  if isinstance(p, bool) or p not in (1, 2):
    _checks.fail(fn, f"p must be 1 or 2, got {p!r}")
  x = _torch_rows(fn, predictions)
  targets = _checks.integer(fn, "targets", targets)
  if x.ndim == 1 and targets.shape == (1,):
    x = x[None]
  num_classes = x.shape[-1]
  targets = _rows.row_labels(fn, "targets", targets, "predictions", x.shape,
                       x.shape[:-1])
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    _checks.shape_is(fn, "weight", weight, (num_classes,), "one per class")
    weight = weight.astype(x.dtype)
  _, label_x, label_w, _, valid = integer_rows(
      fn, x, targets, x.shape[:-1], ignore_index=None, row_keep=None,
      weight=weight, labels_name="targets", scatter=True)
  # A target out of range reads NaN: every term of its row is NaN, and
  # relu's derivative (a select) gives the row a zero gradient, so that
  # the NaN is a constant to autodiff.
  label_x = label_x + jax.lax.stop_gradient(jnp.where(valid, 0, jnp.nan))
  # relu, not maximum: its gradient at the kink is 0, as torch's strict >.
  h = jax.nn.relu(margin - label_x[..., None] + x)
  if p == 2:
    h = h * h
  h = jnp.where(_one_hot(targets, num_classes), 0, h)
  loss = jnp.sum(h, axis=-1) / num_classes
  if label_w is not None:
    loss = label_w * loss
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("reduction")
def multilabel_margin_loss(predictions, targets, *, reduction="none"):
  r"""Multilabel margin loss with torch's target layout.

  .. math::
    \ell = \frac{1}{C} \sum_{j \in T} \sum_{i \notin T}
      \max(0, 1 - (x_j - x_i))

  where the targets :math:`T` of a row are its leading non-negative entries
  of ``targets``, up to the first ``-1`` (torch's layout: ``[3, 0, -1, 1]``
  means classes 3 and 0). A target index ``>= C`` (or a terminator below
  -1) gives NaN for its row (torch raises). A 0-d ``predictions`` is one
  row of one class, as in torch.

  Args:
    predictions: floating [..., C] scores (torch: (N, C), (C,) or ()).
    targets: integer [..., C] class indices padded with -1: ``predictions``'
      shape, or broadcasting to it over the batch axes.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` (torch's default is
      ``"mean"``; here ``"none"``).

  Returns:
    float32 loss (float64 for float64 input): shape [...] for ``"none"``,
    else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([[0.1, 0.2, 0.4, 0.8]])
    >>> print(jaxloss.multilabel_margin_loss(x, jnp.array([[3, 0, -1, 1]])))
    [0.85]

  References:
    ``torch.nn.functional.multilabel_margin_loss`` /
    ``torch.nn.MultiLabelMarginLoss``.
  """
  fn = "multilabel_margin_loss"
  x = _torch_rows(fn, predictions)
  targets = _checks.integer(fn, "targets", targets)
  if x.shape == (1,) and targets.shape in ((), (1,)):
    targets = targets.reshape(1)
  targets = _checks.conform(fn, "targets", targets, "predictions", x.shape,
                            class_axes=(x.ndim - 1,))
  num_classes = x.shape[-1]
  # A row lists its targets up to its first negative entry, the terminator:
  # one minimum over the classes finds it. A cumulative sum of the
  # negatives compiled to windowed sums in five kernels on XLA:CPU, and the
  # value took 1.18x to 1.35x this form's time (benchmarks/suite.py's three
  # shapes).
  classes = jnp.arange(num_classes).reshape((1,) * (x.ndim - 1) + (-1,))
  first = jnp.min(jnp.where(targets < 0, classes, num_classes), axis=-1,
                  keepdims=True)
  listed = classes < first
  terminator = classes == first
  bad = (listed & (targets >= num_classes)) | (terminator & (targets < -1))
  _checks.values(fn, "targets", ~bad, f"must be class indices in [0, "
                 f"{num_classes}) ended by -1", targets)
  bad = jnp.any(bad, axis=-1)
  listed = listed & (targets < num_classes)
  safe = jnp.where(listed, targets, 0)
  target_x = jnp.take_along_axis(x, safe, axis=-1, mode="promise_in_bounds")
  if _slot_loop(num_classes):
    # Up to the last listed slot of any row, one slot at a time.
    slots = jnp.max(jnp.where(listed, classes + 1, 0), initial=0)
    is_target = _over_slots(slots, lambda s, acc: acc | (
        _slot(listed, s) & (_slot(safe, s) == classes)),
                            jnp.zeros(x.shape, bool))
    hinges = _slot_hinges
  else:
    is_target = jnp.any(listed[..., :, None]
                        & (safe[..., :, None] == classes[..., None, :]),
                        axis=-2)
    slots = None
    hinges = _pair_hinge
  loss = hinges(x, target_x, listed, is_target, slots) / num_classes
  loss = jnp.where(bad, jnp.nan, loss)
  return _reduction.reduce(fn, loss, reduction)


def _slot_loop(num_classes):
  """Whether :func:`multilabel_margin_loss` loops over the target slots:
  from rows of :data:`jaxloss._rows.SHORT_ROWS` classes.

  Each listed slot pairs with every class, so that the pairs of all
  ``C`` slots are ``C`` times the row, whatever few targets it lists
  (torch's kernel stops at a row's first -1). The loop takes the slots up
  to the last listed one in any row, each a pass over the rows: on [4,
  1024] scores with up to 8 targets a row the value took 0.188x the time
  of the pairs' plain formula and the gradient 0.0279x, on [1024, 64]
  0.728x and 0.14x (``python benchmarks/suite.py --shapes wide --only
  multilabel_margin_loss``, and without ``--shapes``), and it compiles in
  about 1.6x their time. On shorter rows the pairs of every slot in one
  fused pass cost less than the loop's passes (8 classes).
  """
  return num_classes >= _rows.SHORT_ROWS


def _slot(a, s):
  """Slot ``s`` of ``a`` [..., S], kept as [..., 1]."""
  return lax.dynamic_index_in_dim(a, s, axis=-1, keepdims=True)


def _over_slots(slots, body, init):
  """``body(s, carry)`` for ``s`` in ``[0, slots)``, ``slots`` traced."""
  def step(state):
    s, carry = state
    return s + 1, body(s, carry)
  return _jit.while_loop(lambda state: state[0] < slots, step,
                         (jnp.zeros((), slots.dtype), init))[1]


def _pair_terms(x, target_x, listed, is_target):
  """[..., slots, classes] hinges of the pairs (listed target slot j,
  non-target class i); a class listed twice counts twice, as in torch's
  loop. [..., 1] ``target_x`` and ``listed`` give one slot's, [..., 1,
  classes]."""
  h = jax.nn.relu(1 - target_x[..., :, None] + x[..., None, :])
  return jnp.where(listed[..., :, None] & ~is_target[..., None, :], h, 0)


def _hinge_jvp(hinges, counts, primals, tangents):
  """The derivative of a hinge is 1 where it is positive (0 at the kink,
  as torch's strict >): each class's tangent counts its positive pairs,
  each slot's likewise (``counts``, of the primals held constant). Those
  two [..., C] counts are the only residuals of reverse mode, where
  autodiff of the pairs kept two [..., C, C] arrays (32 MiB at 4M pairs,
  which glibc hands out as fresh pages on every call)."""
  x, target_x, listed, is_target, slots = primals
  dx, dtarget = tangents[:2]
  out = hinges(x, target_x, listed, is_target, slots)
  per_class, per_slot = counts(*(lax.stop_gradient(a) for a in (
      x, target_x, listed, is_target)), slots)
  tangent = jnp.zeros_like(out)
  if not isinstance(dx, SymbolicZero):
    tangent = tangent + jnp.sum(per_class * dx, axis=-1)
  if not isinstance(dtarget, SymbolicZero):
    tangent = tangent - jnp.sum(per_slot * dtarget, axis=-1)
  return out, tangent


@jax.custom_jvp
def _pair_hinge(x, target_x, listed, is_target, slots):
  """Each row's sum of :func:`_pair_terms`, every slot at once."""
  del slots
  return jnp.sum(_pair_terms(x, target_x, listed, is_target), axis=(-2, -1))


def _pair_counts(x, target_x, listed, is_target, slots):
  del slots
  positive = _pair_terms(x, target_x, listed, is_target) > 0
  return (jnp.sum(positive, axis=-2, dtype=x.dtype),
          jnp.sum(positive, axis=-1, dtype=x.dtype))


@jax.custom_jvp
def _slot_hinges(x, target_x, listed, is_target, slots):
  """Each row's sum of :func:`_pair_terms`, one slot at a time."""
  return _over_slots(slots, lambda s, total: total + jnp.sum(
      _pair_terms(x, _slot(target_x, s), _slot(listed, s), is_target),
      axis=(-2, -1)), jnp.zeros(x.shape[:-1], x.dtype))


def _slot_counts(x, target_x, listed, is_target, slots):
  def body(s, counts):
    per_class, per_slot = counts
    positive = _pair_terms(x, _slot(target_x, s), _slot(listed, s),
                           is_target)[..., 0, :] > 0
    per_slot = lax.dynamic_update_index_in_dim(
        per_slot, jnp.sum(positive, axis=-1, dtype=x.dtype), s, axis=-1)
    return per_class + positive.astype(x.dtype), per_slot
  zeros = jnp.zeros(x.shape, x.dtype)
  return _over_slots(slots, body, (zeros, jnp.zeros(target_x.shape,
                                                     x.dtype)))


_pair_hinge.defjvp(_jit.inlined(functools.partial(
    _hinge_jvp, _pair_hinge, _pair_counts)), symbolic_zeros=True)
_slot_hinges.defjvp(_jit.inlined(functools.partial(
    _hinge_jvp, _slot_hinges, _slot_counts)), symbolic_zeros=True)


@_jit.jit("reduction")
@_reduction.elementwise
def soft_margin_loss(predictions, targets, *, reduction="none"):
  r"""Two-class logistic loss on decision values, targets in {-1, 1}.

  .. math::
    \ell = \log(1 + e^{-y x})

  computed as :math:`\mathrm{softplus}(-y x)`: exact at :math:`|x| = 10^4`.

  Args:
    predictions: floating decision values, any shape.
    targets: targets in {-1, 1}, ``predictions``' shape or broadcasting to
      it, never enlarging it (as torch).
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` (torch's default is
      ``"mean"``; here ``"none"``).

  Returns:
    float32 loss (float64 for float64 input): ``predictions``' shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([2.0, -1.0, 1e4])
    >>> print(jaxloss.soft_margin_loss(x, jnp.array([1, 1, -1])))
    [1.2692800e-01 1.3132617e+00 1.0000000e+04]

  References:
    ``torch.nn.functional.soft_margin_loss`` / ``torch.nn.SoftMarginLoss``.
  """
  fn = "soft_margin_loss"
  x, t, _, _ = _pair(fn, "predictions", predictions, "targets", targets)
  not_nan(fn, "predictions", x)
  _checks.values(fn, "targets", (t == 1) | (t == -1), "must be -1 or 1", t)
  return _reduction.reduce(fn, _binary.softplus(-t * x), reduction)


@_jit.jit("reduction")
def multilabel_soft_margin_loss(predictions, targets, *, weight=None,
                                reduction="none"):
  r"""Multilabel one-versus-all logistic loss, averaged over the classes.

  .. math::
    \ell = -\frac{1}{C} \sum_c w_c \left[y_c \log \sigma(x_c)
      + (1 - y_c) \log \sigma(-x_c)\right]

  per row, on :func:`jaxloss.sigmoid_binary_cross_entropy` (exact at
  saturated logits).

  Args:
    predictions: floating [..., C] logits (torch: (N, C) or (C,)).
    targets: targets in [0, 1], ``predictions``' shape or broadcasting to it
      over the batch axes; the class axis matches exactly (torch also
      spreads a (N, 1) target over the classes).
    weight: optional class weights broadcasting to ``predictions``' shape
      (torch: a [C] tensor).
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` (torch's default is
      ``"mean"``; here ``"none"``).

  Returns:
    float32 loss (float64 for float64 input): shape [...] for ``"none"``,
    else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([[2.0, -1.0, 0.0]])
    >>> print(jaxloss.multilabel_soft_margin_loss(x, jnp.array([[1, 0, 1]])))
    [0.37777898]

  References:
    ``torch.nn.functional.multilabel_soft_margin_loss`` /
    ``torch.nn.MultiLabelSoftMarginLoss``.
  """
  fn = "multilabel_soft_margin_loss"
  _checks.at_least_rank(fn, "predictions", jnp.asarray(predictions), 1)
  x, t, weight, _ = _pair(fn, "predictions", predictions, "targets", targets,
                          weight=weight, class_axes=(-1,))
  _unit_interval(fn, x, t, from_logits=True)
  loss = _binary.sigmoid_binary_cross_entropy(x, t, weight=weight)
  return _reduction.reduce(fn, jnp.mean(loss, axis=-1), reduction)


# ----------------------------------------------------------------------------
# Keras names.


@_jit.jit("reduction")
def squared_hinge(predictions, targets, *, reduction="none"):
  r"""Keras's squared hinge loss, averaged over the last axis.

  .. math::
    \ell = \frac{1}{C} \sum_c \max(0, 1 - y_c x_c)^2

  Targets are expected in {-1, 1}. As in Keras, when every entry of
  ``targets`` is 0 or 1 they are all mapped to -1 or 1 (``2 y - 1``); the
  test is over the whole array, so mix no -1 with 0 in one call.

  Args:
    predictions: floating [..., C] decision values (Keras's ``y_pred``).
    targets: targets (Keras's ``y_true``), ``predictions``' shape or
      broadcasting to it over the leading axes (the last axis matches).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): shape [...] for ``"none"``,
    else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([[0.6, -0.3], [2.0, 0.5]])
    >>> print(jaxloss.squared_hinge(x, jnp.array([[1, 0], [1, 0]])))
    [0.325 1.125]

  References:
    ``keras.losses.squared_hinge`` / ``keras.losses.SquaredHinge``; jaxloss
    takes the model output first (Keras: ``y_true, y_pred``).
  """
  fn = "squared_hinge"
  _checks.at_least_rank(fn, "predictions", jnp.asarray(predictions), 1)
  x, t, _, _ = _pair(fn, "predictions", predictions, "targets", targets,
                     class_axes=(-1,))
  # Every target 0 or 1, as a maximum and arithmetic: XLA:CPU fuses that
  # with its reduction, and the {0, 1} -> {-1, 1} map below with the loss's
  # sum. The `all` of two compares and a select wrote a mask, the mapped
  # targets and two broadcast constants out (48 MiB at 16384 x 256, 4.5x
  # the time).
  binary = jnp.max(jnp.abs(t * (t - 1)), initial=0) == 0
  not_nan(fn, "predictions", x)
  _checks.values(fn, "targets", (t == 1) | (t == -1) | binary,
                 "must be -1 or 1 (or all of them 0 or 1)", t)
  b = binary.astype(t.dtype)
  # 2 t - 1 where binary, else t itself (an infinite t stays infinite).
  t = t * (1 + b) - b
  loss = jnp.mean(jnp.square(jnp.maximum(1 - t * x, 0)), axis=-1)
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("reduction")
def categorical_hinge(predictions, targets, *, reduction="none"):
  r"""Keras's categorical hinge loss on one-hot targets.

  .. math::
    \ell = \max\left(0,\ 1 + \max_c (1 - y_c) x_c - \sum_c y_c x_c\right)

  Exactly Keras's formula: the true class enters the max as 0, so a row whose
  other scores are all negative reads 0 there.

  Args:
    predictions: floating [..., C] scores (Keras's ``y_pred``).
    targets: one-hot targets (Keras's ``y_true``), ``predictions``' shape or
      broadcasting to it over the leading axes (the class axis matches).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): shape [...] for ``"none"``,
    else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([[2.0, 0.5, 1.5], [0.1, 0.2, 0.3]])
    >>> print(jaxloss.categorical_hinge(x, jnp.array([[1, 0, 0], [1, 0, 0]])))
    [0.5 1.2]

  References:
    ``keras.losses.categorical_hinge`` / ``keras.losses.CategoricalHinge``.
  """
  fn = "categorical_hinge"
  _checks.at_least_rank(fn, "predictions", jnp.asarray(predictions), 1)
  x, t, _, _ = _pair(fn, "predictions", predictions, "targets", targets,
                     class_axes=(-1,))
  _checks.has_classes(fn, x.shape, (x.ndim - 1,), -1)
  not_nan(fn, "predictions", x)
  # Keras documents one-hot {0, 1} or {-1, 1} targets; soft ones in between
  # are read by the same formula.
  _checks.values(fn, "targets", (t >= -1) & (t <= 1), "must be in [-1, 1]",
                 t)
  positive = jnp.sum(t * x, axis=-1)
  negative = _rows.row_max((1 - t) * x)
  loss = jnp.maximum(negative - positive + 1, 0)
  return _reduction.reduce(fn, loss, reduction)


def _focal_targets(fn, predictions, targets, from_logits, axis):
  """The Keras focal losses' inputs: targets broadcast to the predictions'
  shape (the axes reduced over match exactly), value checks under
  ``checked``."""
  from_logits = _checks.flag(fn, "from_logits", from_logits)
  predictions = _checks.floating(fn, "predictions", predictions)
  _checks.at_least_rank(fn, "predictions", predictions, 1)
  axes = _checks.axes(fn, axis, predictions.ndim)
  x, y, _, _ = _pair(fn, "predictions", predictions, "targets", targets,
                     class_axes=axes)
  _unit_interval(fn, x, y, from_logits)
  return x, y, axes, from_logits


_FOCAL = dict(gamma=_jit.NON_NEGATIVE, label_smoothing=_jit.UNIT)


@_jit.jit("apply_class_balancing", "from_logits", "axis", "reduction",
          alpha=_jit.Hyper(0.0, 1.0, array=True), **_FOCAL)
def binary_focal_cross_entropy(predictions, targets, *,
                               apply_class_balancing=False, alpha=0.25,
                               gamma=2.0, from_logits=False,
                               label_smoothing=0.0, axis=-1,
                               reduction="none"):
  r"""Keras's binary focal cross entropy, averaged over ``axis``.

  .. math::
    \ell = \operatorname{mean}_{\text{axis}}\ \alpha_t (1 - p_t)^\gamma
      \,\mathrm{BCE}(p, y),\qquad 1 - p_t = y (1 - p) + (1 - y) p

  with :math:`y \leftarrow y (1 - \varepsilon) + \varepsilon / 2` under label
  smoothing and :math:`\alpha_t = y \alpha + (1 - y)(1 - \alpha)` only with
  ``apply_class_balancing``. With ``from_logits`` everything is computed in
  log space (:func:`jaxloss.sigmoid_focal_loss`): exact at any logit, with
  finite gradients at :math:`\pm 10^4`, where Keras, which takes the sigmoid
  then clips it to :math:`[10^{-7}, 1 - 10^{-7}]`, saturates near 16.1 with
  zero gradient. On probabilities (``from_logits=False``) this is Keras's
  formula, clip included.

  Arguments map to Keras's ``BinaryFocalCrossentropy`` one to one, under the
  same names (``apply_class_balancing``, ``alpha``, ``gamma``,
  ``from_logits``, ``label_smoothing``, ``axis``), except that the model
  output comes first: ``predictions`` is Keras's ``y_pred`` and ``targets``
  its ``y_true``.

  Args:
    predictions: floating logits or probabilities, [..., C].
    targets: targets in [0, 1], ``predictions``' shape or broadcasting to it
      over the axes not in ``axis`` (those match exactly).
    apply_class_balancing: whether to weight by :math:`\alpha_t`.
    alpha: weight of the positive class in [0, 1], traced or concrete, a
      number or an array broadcasting to ``predictions``' shape.
    gamma: focusing exponent :math:`\gamma \ge 0`, traced or concrete; an
      exact concrete 0 leaves the modulating factor out of the program.
    from_logits: whether ``predictions`` are logits.
    label_smoothing: :math:`\varepsilon` in [0, 1], traced or concrete.
    axis: axis or tuple of axes averaged over.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the remaining shape.

  Returns:
    float32 loss (float64 for float64 input): the shape without ``axis`` for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p = jnp.array([[0.6, 0.4], [0.4, 0.6]])
    >>> print(jaxloss.binary_focal_cross_entropy(p, jnp.array([[0, 1], [0, 0]])))
    [0.32986468 0.20579839]

  References:
    Lin et al., `Focal Loss for Dense Object Detection
    <https://arxiv.org/abs/1708.02002>`_, 2017;
    ``keras.losses.binary_focal_crossentropy`` /
    ``keras.losses.BinaryFocalCrossentropy``.
  """
  fn = "binary_focal_cross_entropy"
  balance = _checks.flag(fn, "apply_class_balancing", apply_class_balancing)
  x, y, axes, from_logits = _focal_targets(fn, predictions, targets,
                                           from_logits, axis)
  if balance:
    alpha = _checks.conform(fn, "alpha", jnp.asarray(alpha, x.dtype),
                            "predictions", x.shape)
  if not _jit.is_zero(label_smoothing):
    y = y * (1 - label_smoothing) + 0.5 * label_smoothing
  if from_logits:
    loss = _binary.sigmoid_focal_loss(x, y, alpha=alpha if balance else None,
                                      gamma=gamma)
  else:
    # The clip's own conversion of half-precision predictions, apart from
    # the rest's (one float32 copy written out for both, else). On CPUs the
    # value clips by maxima (_keras_clip_value), which fuse with the sum;
    # the derivatives are jnp.clip's.
    def clip(given):
      return jnp.clip(_reduction.upcast_apart(given, x.dtype),
                      _KERAS_EPSILON, 1 - _KERAS_EPSILON)

    given = jnp.asarray(predictions)
    if jax.default_backend() == "cpu":
      clipped = _value_form.value_form(
          lambda g: _keras_clip_value(_reduction.upcast_apart(g, x.dtype)))(
              clip)(given)
    else:
      clipped = clip(given)
    loss = -(y * jnp.log(clipped) + (1 - y) * jnp.log(1 - clipped))
    if not _jit.is_zero(gamma):
      # y (1 - p) + (1 - y) p is Keras's 1 - p_t, never rounded below 0.
      loss = loss * _modulation_of(y * (1 - x) + (1 - y) * x, gamma)
    if balance:
      loss = loss * (y * alpha + (1 - y) * (1 - alpha))
  return _reduction.reduce(fn, jnp.mean(loss, axis=axes), reduction)


@jax.custom_jvp
def _modulation_of(base, gamma):
  r""":math:`b^\gamma` for :math:`b \ge 0`: ``0 ** gamma`` at :math:`b = 0`
  (1 at :math:`\gamma = 0`, else 0), with zero derivatives there
  (``jnp.power``'s derivative is ``inf`` at 0 for :math:`\gamma < 1`, and
  ``0 * inf`` through the chain).

  The power itself is exact at 0, with no select on the elements (which
  XLA:CPU would not fuse with the sum): only its derivatives need care.
  """
  return jnp.power(base, gamma)


@_modulation_of.defjvp
@_jit.inlined
def _modulation_of_jvp(primals, tangents):
  # d/db = gamma b^gamma / b and d/dgamma = b^gamma log b, with b read as 1
  # where it is 0: both are then 0 (b^gamma is 0 there, or gamma is).
  (base, gamma), (d_base, d_gamma) = primals, tangents
  power = _modulation_of(base, gamma)
  safe = base + (base == 0).astype(base.dtype)
  return power, power * (gamma * d_base / safe + jnp.log(safe) * d_gamma)


_LOG2 = float(np.log(2.0))


def _log_modulation(u):
  r""":math:`\log(1 - e^{-u})` for :math:`u > 0`, accurate at both ends
  (Mächler's log1mexp); each branch is fed only its own range, so neither
  derivative meets a ``log 0``."""
  small = jnp.where(u <= _LOG2, u, _LOG2)
  large = jnp.where(u > _LOG2, u, 1.0)
  return jnp.where(u <= _LOG2, jnp.log(-jnp.expm1(-small)),
                   jnp.log1p(-jnp.exp(-large)))


def _modulation(u, gamma):
  r""":math:`(1 - e^{-u})^\gamma` and its log for :math:`u \ge 0`: ``0 **
  gamma`` (1 at :math:`\gamma = 0`) at :math:`u = 0`, through a double
  where."""
  positive = u > 0
  log_m = _log_modulation(jnp.where(positive, u, 1.0))
  modulation = jnp.where(positive, jnp.exp(gamma * log_m),
                         jnp.asarray(gamma == 0, u.dtype))
  return modulation, log_m


def _exprel_inverse(u):
  r""":math:`u / (e^u - 1)` for :math:`u \ge 0`: 1 at 0, 0 at ``inf``, a
  series near 0 so that its own derivatives stay finite."""
  series = jnp.where(u < 1e-2, u, 0.0)
  middle = (u >= 1e-2) & (u < jnp.inf)
  safe = jnp.where(middle, u, 1.0)
  near_zero = 1 - series / 2 + series**2 / 12 - series**4 / 720
  return jnp.where(u < 1e-2, near_zero,
                   jnp.where(middle, safe / jnp.expm1(safe), 0.0))


@jax.custom_jvp
def _focal_term(u, gamma):
  r""":math:`g(u) = (1 - e^{-u})^\gamma\, u` for :math:`u = -\log p \ge 0`.

  The focal cross entropy of one class from its cross entropy :math:`u`.
  Autodiff through the power gives ``0 * inf`` at :math:`p = 1` for
  :math:`\gamma < 1`; the derivatives written out,
  :math:`\partial_u g = (1 - e^{-u})^\gamma (1 + \gamma u / (e^u - 1))` and
  :math:`\partial_\gamma g = g \log(1 - e^{-u})`, are finite for every
  :math:`u \in [0, \infty]` (0 at :math:`u = 0` and :math:`u = \infty` for
  the second), and made of differentiable operations.
  """
  u = jnp.maximum(u, 0)
  return _modulation(u, gamma)[0] * u


@_focal_term.defjvp
@_jit.inlined
def _focal_term_jvp(primals, tangents):
  (u, gamma), (du, dgamma) = primals, tangents
  u = jnp.maximum(u, 0)
  modulation, log_m = _modulation(u, gamma)
  value = modulation * u
  d_u = modulation * (1 + gamma * _exprel_inverse(u))
  finite = (u > 0) & (u < jnp.inf)
  d_gamma = jnp.where(finite, modulation * jnp.where(finite, u, 0) * log_m, 0)
  return value, d_u * du + d_gamma * dgamma


@_jit.jit("from_logits", "axis", "reduction",
          alpha=_jit.Hyper(0.0, high_open=True, array=True), **_FOCAL)
def categorical_focal_cross_entropy(predictions, targets, *, alpha=0.25,
                                    gamma=2.0, from_logits=False,
                                    label_smoothing=0.0, axis=-1,
                                    reduction="none"):
  r"""Keras's categorical focal cross entropy, summed over the classes.

  .. math::
    \ell = -\sum_c \alpha_c\, y_c (1 - p_c)^\gamma \log p_c

  with :math:`y \leftarrow (1 - \varepsilon)\, y + \varepsilon / C` under
  label smoothing. With ``from_logits`` it is computed from
  ``log_softmax`` with a hand-written derivative: exact at any logit,
  gradients finite at :math:`\pm 10^4` and at :math:`p_c = 1` for every
  :math:`\gamma \ge 0` (in the logits and in :math:`\gamma`), where Keras
  clips :math:`p` to :math:`[10^{-7}, 1 - 10^{-7}]`. ``-inf`` logits mark
  impossible classes: they cost nothing with a zero target and the
  smoothing mass spreads over the other classes only. On probabilities
  (``from_logits=False``) this is Keras's formula: renormalised over
  ``axis`` and clipped.

  Arguments map to Keras's ``CategoricalFocalCrossentropy`` one to one, under
  the same names, with the model output first (``predictions`` is Keras's
  ``y_pred``, ``targets`` its ``y_true``). Keras smooths with the size of the
  last axis whatever ``axis`` is; here with the size of ``axis``.

  Args:
    predictions: floating logits or probabilities [..., C, ...].
    targets: one-hot or probability targets, ``predictions``' shape or
      broadcasting to it over the batch axes (the class axis matches).
    alpha: class weight :math:`\ge 0`, traced or concrete, a number or a
      [C] array.
    gamma: focusing exponent :math:`\gamma \ge 0`, traced or concrete; an
      exact concrete 0 leaves the modulating factor out of the program.
    from_logits: whether ``predictions`` are logits.
    label_smoothing: :math:`\varepsilon` in [0, 1], traced or concrete.
    axis: the class axis.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the remaining shape.

  Returns:
    float32 loss (float64 for float64 input): the shape without ``axis`` for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p = jnp.array([[0.05, 0.9, 0.05], [0.1, 0.85, 0.05]])
    >>> y = jnp.array([[0, 1, 0], [0, 0, 1]])
    >>> print(jaxloss.categorical_focal_cross_entropy(p, y))
    [2.6340e-04 6.7591e-01]

  References:
    Lin et al., `Focal Loss for Dense Object Detection
    <https://arxiv.org/abs/1708.02002>`_, 2017;
    ``keras.losses.categorical_focal_crossentropy`` /
    ``keras.losses.CategoricalFocalCrossentropy``.
  """
  fn = "categorical_focal_cross_entropy"
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    _checks.fail(fn, f"axis must be an int, got {axis!r}", TypeError)
  x, y, _, from_logits = _focal_targets(fn, predictions, targets,
                                        from_logits, axis)
  x, _, _ = classes_last(fn, x, axis)
  y, _, _ = classes_last(fn, y, axis)
  num_classes = x.shape[-1]
  alpha = jnp.asarray(alpha, x.dtype)
  if alpha.ndim:
    _checks.shape_is(fn, "alpha", alpha, (num_classes,), "one per class")
  smoothing = not _jit.is_zero(label_smoothing)
  if from_logits:
    if smoothing:
      support = x > -jnp.inf
      count = jnp.sum(support, axis=-1, keepdims=True, dtype=x.dtype)
      y = (1 - label_smoothing) * y + label_smoothing * support / jnp.maximum(
          count, 1)
    cross_entropy = -jax.nn.log_softmax(x, axis=-1)
    # A zero target on a -inf logit (cross entropy inf) contributes 0 with a
    # zero gradient, rather than 0 * inf; on any other class the target's
    # derivative is the class's focal term, zero target or not.
    on = (y != 0) | (cross_entropy < jnp.inf)
    cross_entropy = jnp.where(on, cross_entropy, 0)
    focal = (cross_entropy if _jit.is_zero(gamma)
             else _focal_term(cross_entropy, gamma))
    terms = jnp.where(on, y * focal, 0)
  else:
    if smoothing:
      y = (1 - label_smoothing) * y + label_smoothing / num_classes
    # From the predictions as given: the value converts half precision in
    # a pass of its own (_keras_probabilities).
    given, _, _ = classes_last(fn, jnp.asarray(predictions), axis)
    p = _keras_probabilities(given, x.dtype)
    factor = -y
    if not _jit.is_zero(gamma):
      # The factor before the log: the other order kept one more [N, C]
      # array for the gradient.
      factor = jnp.power(1 - p, gamma) * factor
    terms = factor * jnp.log(p)
  loss = jnp.sum(jnp.broadcast_to(alpha, terms.shape) * terms, axis=-1)
  return _reduction.reduce(fn, loss, reduction)


# Taylor coefficients of (1 + (z - 1) e^z) / z^2 = sum_n (n + 1) z^n / (n + 2)!
_GAP_SERIES = tuple((n + 1) / math.factorial(n + 2) for n in range(12))


def _exp_gap(z):
  r""":math:`1 + (z - 1) e^z` for :math:`z \le 0` (``-inf`` included),
  without the cancellation near 0: a series for :math:`|z| < 1/2`."""
  small = jnp.where(jnp.abs(z) < 0.5, z, 0.0)
  series = _GAP_SERIES[-1]
  for c in _GAP_SERIES[-2::-1]:
    series = series * small + c
  large = jnp.where(jnp.abs(z) < 0.5, -1.0, jnp.maximum(z, -1e4))
  return jnp.where(jnp.abs(z) < 0.5, small * small * series,
                   1 + (large - 1) * jnp.exp(large))


@jax.custom_jvp
def _generalized_cross_entropy(p, q):
  r""":math:`(1 - p^q) / q` for :math:`p \in [0, 1]`, :math:`q > 0`.

  Computed as :math:`-\mathrm{expm1}(q \log p) / q`: exact as :math:`q \to
  0` (where it tends to :math:`-\log p`), and :math:`1 / q` at
  :math:`p = 0`. The derivatives are written out: in :math:`p`,
  :math:`-p^{q - 1}` (``-inf`` at :math:`p = 0` for :math:`q < 1`); in
  :math:`q`, :math:`-(1 + (z - 1) e^z) / q^2` with :math:`z = q \log p`,
  which autodiff of the formula would compute as the difference of two
  terms of size :math:`1 / q`, all digits lost at small :math:`q`.
  """
  positive = p > 0
  z = q * jnp.log(jnp.where(positive, p, 1.0))
  return jnp.where(positive, -jnp.expm1(z), 1.0) / q


@_generalized_cross_entropy.defjvp
@_jit.inlined
def _generalized_cross_entropy_jvp(primals, tangents):
  (p, q), (dp, dq) = primals, tangents
  positive = p > 0
  z = q * jnp.log(jnp.where(positive, p, 1.0))
  value = jnp.where(positive, -jnp.expm1(z), 1.0) / q
  d_p = -jnp.power(p, q - 1)
  d_q = -jnp.where(positive, _exp_gap(z), 1.0) / (q * q)
  return value, d_p * dp + d_q * dq


@_jit.jit("axis", "reduction", q=_jit.Hyper(0.0, 1.0, low_open=True))
def categorical_generalized_cross_entropy(probs, labels, *, q=0.5, axis=-1,
                                          where=None, weight=None,
                                          reduction="none"):
  r"""Generalized cross entropy on probabilities against integer labels.

  .. math::
    \ell = w_y\, \frac{1 - p_y^{\,q}}{q}

  the Box-Cox transform of the cross entropy: :math:`-\log p_y` as
  :math:`q \to 0`, the mean absolute error :math:`1 - p_y` at :math:`q = 1`;
  smaller :math:`q` weighs confident mistakes more, larger :math:`q` is more
  robust to noisy labels. ``reduction="mean"`` divides by the sum of
  :math:`w_y` over kept rows (by their number without ``weight``). A label
  outside ``[0, C)`` gives NaN for its row (Keras reads a zero
  probability).

  The value is :math:`-\mathrm{expm1}(q \log p_y) / q`, exact for small
  :math:`q`, with derivatives written out: the gradient in ``q`` is right to
  float rounding down to :math:`q \to 0` (autodiff of the formula loses
  every digit there). At :math:`p_y = 0` the loss is :math:`1 / q` and its
  gradient in :math:`p_y` is ``-inf`` for :math:`q < 1` (-1 at
  :math:`q = 1`); Keras does not clip :math:`p` either.

  Arguments map to Keras 3's ``categorical_generalized_cross_entropy``
  (``y_true, y_pred, q``) with the model output first: ``probs`` is Keras's
  ``y_pred`` and ``labels`` its ``y_true``. Keras takes the class axis last
  and squeezes [N, 1] labels; here labels have the batch shape exactly (or
  broadcast to it), so [N, 1] labels against [N, C] probabilities are an
  error. Keras's ``CategoricalGeneralizedCrossEntropy`` class takes
  :math:`q \in (0, 1)`; :math:`q = 1` is allowed here, as in the paper.

  Args:
    probs: floating [..., C, ...] class probabilities (softmax outputs).
    labels: integer labels with the batch shape (``probs``' shape without
      ``axis``) or broadcasting to it.
    q: :math:`q \in (0, 1]`, traced or concrete.
    axis: class axis or tuple of axes.
    where: optional boolean row mask broadcasting to the batch shape;
      dropped rows give loss 0 and gradient 0.
    weight: optional [C] class weights :math:`w`.
    reduction: ``"none"``, ``"mean"`` (over kept rows, weighted) or
      ``"sum"``.

  Returns:
    float32 loss (float64 for float64 probabilities): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> probs = jnp.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    >>> print(jaxloss.categorical_generalized_cross_entropy(
    ...     probs, jnp.array([0, 1, 1])))
    [0.3267 0.2111 0.7351]

  References:
    Zhang and Sabuncu, `Generalized Cross Entropy Loss for Training Deep
    Neural Networks with Noisy Labels <https://arxiv.org/abs/1805.07836>`_,
    NeurIPS 2018; ``keras.losses.categorical_generalized_cross_entropy`` /
    ``keras.losses.CategoricalGeneralizedCrossEntropy``.
  """
  fn = "categorical_generalized_cross_entropy"
  probs = _checks.floating(fn, "probs", probs)
  x, batch_shape, row_keep = _rows.masked_rows(fn, "probs", probs, axis,
                                               where)
  _rows.class_values(fn, [("probs", x, (x >= 0) & (x <= 1),
                           "must be in [0, 1]")],
                     row_keep, None, probs.shape, axis)
  labels = _rows.row_labels(fn, "labels", labels, "probs", probs.shape,
                      batch_shape)
  weight = _rows.class_weight(fn, weight, x.shape[-1], x.dtype)
  _, label_p, label_w, keep, valid = integer_rows(
      fn, x, labels, batch_shape, ignore_index=None, row_keep=row_keep,
      weight=weight)
  # Dropped rows read p = 1: loss 0, and a finite slope for their zero
  # cotangent (never -inf * 0).
  if keep is not None:
    label_p = jnp.where(keep, label_p, 1.0)
  loss = _generalized_cross_entropy(label_p, jnp.asarray(q, x.dtype))
  if label_w is not None:
    loss = label_w * loss
  return finish_rows(fn, loss, label_w, keep, valid, reduction)
