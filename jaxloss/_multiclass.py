"""Softmax cross entropy (probability and integer labels) and NLL."""

import functools
import math

import jax
import jax.numpy as jnp

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _parallel
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss import _value_form
from jaxloss.kernels import cross_entropy as _fast_ce


@_jit.jit("axis", "ignore_index", "reduction", "implementation", "axis_name",
          label_smoothing=_jit.UNIT, z_loss=_jit.NON_NEGATIVE)
def softmax_cross_entropy_with_integer_labels(
    logits, labels, axis=-1, where=None, *, ignore_index=None, weight=None,
    label_smoothing=0.0, z_loss=0.0, reduction="none", implementation="auto",
    axis_name=None):
  r"""Softmax cross entropy against integer class labels.

  With :math:`\mathrm{lse} = \log \sum_j e^{x_j}`, class weights :math:`w`
  and label smoothing :math:`\varepsilon` over :math:`C` classes:

  .. math::
    \ell = w_y \left[(1 - \varepsilon)(\mathrm{lse} - x_y)
      + \zeta\, \mathrm{lse}^2\right]
      + \frac{\varepsilon}{C} \sum_j w_j (\mathrm{lse} - x_j)

  which is torch's ``CrossEntropyLoss`` (including how it weights the
  smoothing term) plus PaLM's z-loss :math:`\zeta`.

  ``reduction="mean"`` divides by the sum of :math:`w_y` over kept rows, as
  torch does. Rows whose label is ``ignore_index``, or dropped by ``where``,
  give loss 0 and gradient 0; a mean over no kept row is 0 with zero gradient
  (torch returns NaN). A label outside ``[0, C)`` that is not ``ignore_index``
  gives NaN for its row (optax silently reads a wrapped-around class).

  ``-inf`` logits mark impossible classes: they are fine anywhere but at the
  label, and the smoothing mass spreads over the other classes only (torch
  gives ``inf`` there); gradients of finite-loss rows are never NaN.

  Args:
    logits: floating [..., C, ...] logits; half precision is upcast to
      float32 for the statistics.
    labels: integer labels with the shape of ``logits`` without ``axis``
      (the batch shape), or broadcastable to it without enlarging it.
    axis: class axis, or tuple of axes whose slice, flattened in the order
      given, is indexed by the label (as optax).
    where: optional boolean mask: batch-shaped to drop rows, or
      ``logits``-shaped to restrict the softmax to some classes (as optax).
    ignore_index: optional label value whose rows are dropped, as torch's
      (torch's default is -100; here None, no label is ignored).
    weight: optional [C] class weights.
    label_smoothing: :math:`\varepsilon` in [0, 1], a number or a traced
      scalar (differentiable); an exact 0 costs nothing.
    z_loss: :math:`\zeta \geq 0`, the weight of :math:`\mathrm{lse}^2`,
      a number or a traced scalar; an exact 0 costs nothing.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    implementation: how the statistics are computed, all to the same
      numbers and with every autodiff mode. ``"xla"``: per-row float32
      statistics under a custom JVP whose tangent is rematerialized, so
      that the gradient keeps no [N, C] residual and is written in one
      fused pass, in the logits' dtype; ``"pallas"``: the same with the
      statistics from a Pallas (Triton) kernel, in interpret mode off GPUs
      (for testing); ``"reference"``: plain autodiff of the formula.
      ``"auto"`` picks ``"pallas"`` on GPUs for 8192 classes or more, else
      ``"xla"``.
    axis_name: optional mesh axis name (or tuple of names) over which the
      classes are split, for a call inside ``jax.shard_map``
      (vocabulary-parallel cross entropy, as Megatron-LM's): ``logits`` is
      then this device's shard of the classes (device ``i`` of ``k`` holds
      classes ``[i C/k, (i + 1) C/k)``), ``weight`` and a ``logits``-shaped
      ``where`` its shards of the class weights and mask, while ``labels``
      hold global class ids in ``[0, C)``. Devices exchange per-row
      statistics only (a max and a sum of [N] arrays), never logits; the
      value and the logits' gradient equal the unsharded ones, and every
      device along the axis returns the same result (for ``"none"``, the
      same per-row losses). Rows sharded over another mesh axis are
      reduced on each device only: for a mean over all of them, take
      ``"sum"`` and ``jax.lax.psum`` it (and the count) over that axis, or
      return ``"none"`` and reduce outside ``shard_map``. With
      ``axis_name``, ``implementation`` is ignored (the ``"xla"``
      statistics) and no gradient flows to ``weight``.

  Returns:
    float32 loss (float64 for float64 logits): the batch shape for
    ``"none"``, else a scalar. Gradients come back in the logits' dtype.

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([0, 1])
    >>> print(jaxloss.softmax_cross_entropy_with_integer_labels(logits, labels))
    [0.2761 2.9518]
    >>> print(jaxloss.softmax_cross_entropy_with_integer_labels(
    ...     logits, jnp.array([0, -100]), ignore_index=-100, reduction="mean"))
    0.2761

    Vocabulary-parallel, classes split over the mesh axis ``"model"`` (one
    device here; the same code runs on any number):

    >>> from jax.sharding import PartitionSpec as P
    >>> def loss(x, y):
    ...   return jaxloss.softmax_cross_entropy_with_integer_labels(
    ...       x, y, axis_name="model")
    >>> with jax.set_mesh(jax.make_mesh((1,), ("model",))):
    ...   sharded = jax.shard_map(loss, in_specs=(P(None, "model"), P()),
    ...                           out_specs=P())
    ...   print(sharded(jax.device_put(logits, P(None, "model")), labels))
    [0.2761 2.9518]

  References:
    ``torch.nn.CrossEntropyLoss``;
    ``optax.losses.softmax_cross_entropy_with_integer_labels``; Chowdhery et
    al., `PaLM <https://arxiv.org/abs/2204.02311>`_ (z-loss), 2022.
  """
  fn = "softmax_cross_entropy_with_integer_labels"
  _checks.optional_int(fn, "ignore_index", ignore_index)
  logits = _checks.floating(fn, "logits", logits)
  implementation = _fast_ce.resolve(fn, implementation, logits, axis, where)
  if axis_name is not None:
    return _parallel.softmax_cross_entropy_with_integer_labels(
        fn, logits, labels, axis=axis, where=where, ignore_index=ignore_index,
        weight=weight, label_smoothing=label_smoothing, z_loss=z_loss,
        reduction=reduction, axis_name=axis_name)
  if implementation != "reference":
    return integer_cross_entropy(
        fn, logits, labels, axis=axis, where=where, ignore_index=ignore_index,
        weight=weight, label_smoothing=label_smoothing, z_loss=z_loss,
        reduction=reduction, implementation=implementation)
  shape = logits.shape
  x, batch_shape, _ = _rows.classes_last(fn, logits, axis)
  x = x.astype(_reduction.stat_dtype(x.dtype))
  row_keep, class_keep = _rows.split_where(fn, where, shape, axis, batch_shape)
  weight = _rows.class_weight(fn, weight, x.shape[-1], x.dtype)
  x, label_x, label_w, keep, valid = _rows.integer_rows(
      fn, x, labels, batch_shape, ignore_index=ignore_index,
      row_keep=row_keep, weight=weight)
  lse = jax.nn.logsumexp(x, axis=-1, where=class_keep)
  smoothing = None
  if not _jit.is_zero(label_smoothing):
    smoothing = _rows.smoothing_term(x, lse, weight, class_keep)
  loss = _rows.row_loss(lse, label_x, label_w, label_smoothing, z_loss,
                        smoothing)
  return _rows.finish_rows(fn, loss, label_w, keep, valid, reduction)


def integer_cross_entropy(fn, logits, labels, *, axis, where, ignore_index,
                          weight, label_smoothing, z_loss, reduction,
                          implementation, config=None):
  """The integer-label cross entropy from :func:`_fast_ce.row_statistics`.

  Same arguments and numbers as the reference formulation above;
  ``implementation`` is ``"xla"`` or ``"pallas"``; ``config`` overrides the
  kernel configuration (tests and benchmarks).
  """
  x, batch_shape, _ = _rows.classes_last(fn, logits, axis)
  dtype = _reduction.stat_dtype(x.dtype)
  row_keep, class_keep = _rows.split_where(fn, where, logits.shape, axis,
                                           batch_shape)
  weight = _rows.class_weight(fn, weight, x.shape[-1], dtype)
  # The label checks, masks and label weights are exactly the reference's;
  # its label logit goes unused (XLA drops it): the statistics read their
  # own, so that its derivative lands in the same fused pass.
  _, _, label_w, keep, valid = _rows.integer_rows(
      fn, jax.lax.stop_gradient(x), labels, batch_shape,
      ignore_index=ignore_index, row_keep=row_keep, weight=weight)
  labels = jnp.broadcast_to(_checks.integer(fn, "labels", labels),
                            batch_shape)
  safe = jnp.where(valid, labels, 0)
  if keep is not None:
    safe = jnp.where(keep, safe, 0)
  smoothed = not _jit.is_zero(label_smoothing)
  if config is None:
    config = _fast_ce.default_config(x)
  config = config._replace(smoothing=smoothed,
                           pallas=implementation == "pallas" and x.size > 0)

  def flat(a):
    return _rows.flat_rows(a, batch_shape)

  stats = _fast_ce.row_statistics(
      config, flat(x), flat(safe).astype(jnp.int32), flat(keep),
      flat(class_keep), weight if smoothed else None)
  return _rows.loss_from_statistics(
      fn, stats, batch_shape, label_w, keep, valid, label_smoothing, z_loss,
      reduction)


@_jit.jit("axis", "ignore_index", "reduction")
def nll_loss(log_probs, labels, *, axis=-1, where=None, ignore_index=None,
             weight=None, reduction="none"):
  r"""Negative log-likelihood of integer labels under given log-probabilities.

  .. math::
    \ell = -w_y \log p_y

  ``reduction="mean"`` divides by the sum of :math:`w_y` over kept rows, as
  torch's ``NLLLoss``; dropped rows give 0 and a mean over nothing is 0.
  A label outside ``[0, C)`` that is not ``ignore_index`` gives NaN.

  Args:
    log_probs: floating [..., C, ...] log-probabilities (from
      :func:`log_softmax`).
    labels: integer labels with the shape of ``log_probs`` without ``axis``.
    axis: class axis or tuple of axes.
    where: optional boolean row mask with the batch shape.
    ignore_index: optional label value whose rows are dropped.
    weight: optional [C] class weights.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> log_probs = jnp.log(jnp.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    >>> print(jaxloss.nll_loss(log_probs, jnp.array([0, 2])))
    [0.5108 0.5108]

  References:
    ``torch.nn.NLLLoss`` / ``torch.nn.functional.nll_loss``.
  """
  fn = "nll_loss"
  _checks.optional_int(fn, "ignore_index", ignore_index)
  log_probs = _checks.floating(fn, "log_probs", log_probs)
  x, batch_shape, row_keep = _rows.masked_rows(fn, "log_probs", log_probs,
                                               axis, where)
  weight = _rows.class_weight(fn, weight, x.shape[-1], x.dtype)
  _, label_x, label_w, keep, valid = _rows.integer_rows(
      fn, x, labels, batch_shape, ignore_index=ignore_index,
      row_keep=row_keep, weight=weight)
  _rows.class_values(fn, [("log_probs", x, x <= 0,
                     "must be log-probabilities (<= 0, not NaN)")],
               keep, None, log_probs.shape, axis)
  loss = -label_x if label_w is None else -label_w * label_x
  return _rows.finish_rows(fn, loss, label_w, keep, valid, reduction)


@_jit.jit("axis", "reduction", "implementation",
          label_smoothing=_jit.UNIT)
def softmax_cross_entropy(logits, labels, axis=-1, where=None, *, weight=None,
                          label_smoothing=0.0, reduction="none",
                          implementation="auto"):
  r"""Softmax cross entropy against probability labels.

  .. math::
    \ell = -\sum_j w_j\, y_j \log \mathrm{softmax}(x)_j,\qquad
    y \leftarrow (1 - \varepsilon)\, y + \varepsilon / C

  Terms with :math:`y_j w_j = 0` count 0 even where :math:`x_j = -\infty`
  (optax's function of the same name returns NaN there): ``-inf`` marks an
  impossible class, outside the support of the smoothing too. A row with
  probability on a ``-inf`` class costs ``inf``.

  ``reduction="mean"`` divides by the number of kept rows, as torch does for
  probability targets, whatever the class weights. Labels need not sum to 1
  over the classes (torch and optax accept any values in [0, 1]).

  Args:
    logits: floating [..., C, ...] logits.
    labels: probabilities of ``logits``' shape, or broadcastable to it along
      the batch axes (the class axes must match: [N, 1] labels against
      [N, C] logits are an error, not a spread).
    axis: class axis or tuple of axes (flattened in the order given).
    where: optional boolean mask: batch-shaped to drop rows, or
      ``logits``-shaped to restrict the softmax to some classes (as optax).
    weight: optional [C] class weights, as torch's.
    label_smoothing: :math:`\varepsilon` in [0, 1], a number or a traced
      scalar (differentiable); an exact 0 costs nothing.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    implementation: ``"xla"`` (``"auto"``): per-row float32 statistics,
      reading ``logits`` and ``labels`` in their own dtypes, under a custom
      JVP whose rematerialized tangent keeps no [N, C] residual, so that
      each gradient is one fused pass; ``"reference"``: plain autodiff of
      the formula. Both give the same numbers, in every autodiff mode.

  Returns:
    float32 loss (float64 for float64 logits): the batch shape for
    ``"none"``, else a scalar. The gradient by a label is
    :math:`w_j (\mathrm{lse} - x_j)`, zero labels included, and 0 on a
    ``-inf`` logit the label gives no mass.

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[1.2, -0.8, -jnp.inf], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> print(jaxloss.softmax_cross_entropy(logits, labels))
    [0.1269 2.9518]

  References:
    ``torch.nn.CrossEntropyLoss`` with probability targets;
    ``optax.losses.softmax_cross_entropy`` and
    ``optax.losses.safe_softmax_cross_entropy``.
  """
  return probability_cross_entropy(
      "softmax_cross_entropy", logits, labels, axis=axis, where=where,
      weight=weight, label_smoothing=label_smoothing, reduction=reduction,
      implementation=implementation)


def _smoothed_rows(config, smoothing, x, y, keep, class_keep, weight,
                   total=False):
  """Label-smoothed cross entropies of [R, C] rows from the statistics (with
  ``total``, their sum); on CPUs, for the value alone, the smoothed labels'
  chain of fused sums (:func:`jaxloss.kernels.cross_entropy.smoothed_chain`)
  wherever it is finite, this where it is not."""
  def exact(x, y, smoothing, keep, weight):
    cross, _, _, smooth, count, _ = _fast_ce.label_statistics(
        config, x, y, keep, class_keep, weight)
    rows = (1 - smoothing) * cross + smoothing * smooth / jnp.maximum(count,
                                                                      1)
    return jnp.sum(rows) if total else rows

  if not config.value_chain or class_keep is not None:
    return exact(x, y, smoothing, keep, weight)

  def fast(*args):
    return _value_form.unless_nan(
        functools.partial(_fast_ce.smoothed_chain, total=total), exact, *args,
        finite=True)

  smoothing = jnp.asarray(smoothing, _reduction.stat_dtype(x.dtype))
  return _value_form.value_form(fast)(exact)(x, y, smoothing, keep, weight)


def _total(config, smoothing, x, y, weight):
  """The sum of the cross entropies of [R, C] rows (``smoothing``: None, or
  a scalar), for ``"sum"`` and ``"mean"`` on CPUs: for the value alone one
  chain whose last pass sums every term, as optax's mean of row sums is
  folded into one sum (a condition on the rows kept XLA:CPU from folding
  them, and on short rows their sums written out cost more than the whole
  sum: 1.15x optax's time at rows of 10). The total is the plain chain's
  unless that is NaN (with ``smoothing``: not finite), then the guarded
  form's; under differentiation the rows' own (the same program as before,
  summed)."""
  if smoothing is not None:
    return _smoothed_rows(config, smoothing, x, y, None, None, weight,
                          total=True)

  def exact(x, y, weight):
    return jnp.sum(_fast_ce.label_statistics(config, x, y, None, None,
                                             weight)[0])

  def fast(x, y, weight):
    return _fast_ce.label_chain(x, y, None, weight, total=True)

  return _value_form.value_form(fast)(exact)(x, y, weight)


def probability_cross_entropy(fn, logits, labels, *, axis, where, weight,
                              label_smoothing, reduction,
                              implementation="auto", config=None):
  """:func:`softmax_cross_entropy` under the name ``fn`` in its messages.

  ``label_smoothing`` is a checked hyperparameter (an exact zero as the
  Python ``0.0``, see :func:`jaxloss._jit.is_zero`); ``config`` overrides
  the statistics' configuration (tests and benchmarks).
  """
  logits = _checks.floating(fn, "logits", logits)
  labels = _checks.numeric(fn, "labels", labels)
  shape = logits.shape
  axes = _checks.axes(fn, axis, logits.ndim)
  labels = _checks.conform(fn, "labels", labels, "logits", shape,
                           class_axes=axes)
  x, batch_shape, _ = _rows.classes_last(fn, logits, axis)
  dtype = _reduction.stat_dtype(x.dtype)
  y, _, _ = _rows.classes_last(fn, labels, axis)
  row_keep, class_keep = _rows.split_where(fn, where, shape, axis, batch_shape)
  _rows.probability_values(fn, x, y, row_keep, class_keep, shape, axis)
  weight = _rows.class_weight(fn, weight, x.shape[-1], dtype)
  smoothed = not _jit.is_zero(label_smoothing)
  if _fast_ce.resolve(fn, implementation, logits, axis, where,
                      probabilities=True) != "reference":
    if not jnp.issubdtype(y.dtype, jnp.floating):
      y = y.astype(dtype)
    if config is None:
      config = _fast_ce.default_config(x)
    config = config._replace(smoothing=smoothed, pallas=False)

    def flat(a):
      return _rows.flat_rows(a, batch_shape)

    args = (flat(x), flat(y), flat(row_keep), flat(class_keep), weight)
    if (config.value_chain and reduction != "none" and row_keep is None
        and class_keep is None):
      _checks.reduction(fn, reduction)
      total = _total(config, label_smoothing if smoothed else None,
                     args[0], args[1], weight)
      return _reduction.reduce_total(total, reduction, math.prod(batch_shape))
    if smoothed:
      loss = _smoothed_rows(config, label_smoothing, *args)
    else:
      loss = _fast_ce.label_statistics(config, *args)[0]
    loss = loss.reshape(batch_shape)
  else:
    x = x.astype(dtype)
    y = y.astype(dtype)
    if row_keep is not None:
      x = jnp.where(row_keep[..., None], x, 0)
    lse = jax.nn.logsumexp(x, axis=-1, where=class_keep)
    if smoothed:
      s = _rows.support(x, class_keep)
      count = jnp.maximum(jnp.sum(s, axis=-1, keepdims=True, dtype=dtype), 1)
      y = (1 - label_smoothing) * y + label_smoothing * s / count
    coef = y if weight is None else y * jnp.broadcast_to(weight, y.shape)
    if class_keep is not None:
      coef = jnp.where(class_keep, coef, 0)
    loss = _rows.cross_sum(coef, lse[..., None], x)
  loss = _reduction.mask(loss, row_keep)
  return _reduction.reduce(fn, loss, reduction, keep=row_keep)
