"""Binary (sigmoid) losses: on probabilities, on logits, and focal."""

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _value_form


def _prepare(fn, x, x_name, labels, weight, where):
  """Checks and float32 casts shared by the binary losses.

  ``labels``, ``weight`` and ``where`` broadcast to ``x``'s shape, never
  enlarge it (:func:`jaxloss._checks.conform`).
  """
  x = _checks.floating(fn, x_name, x)
  labels = _checks.numeric(fn, "labels", labels)
  labels = _checks.conform(fn, "labels", labels, x_name, x.shape)
  dtype = _reduction.stat_dtype(x.dtype)
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    weight = _checks.conform(fn, "weight", weight, x_name, x.shape)
    weight = weight.astype(dtype)
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    where = _checks.conform(fn, "where", where, x_name, x.shape)
  x, labels = x.astype(dtype), labels.astype(dtype)
  if not _checks.checking():
    return x, labels, weight, where
  if x_name == "probs":
    _value_check(fn, "probs", (x >= 0) & (x <= 1), "must be in [0, 1]", x,
                 where)
  else:
    _value_check(fn, x_name, ~jnp.isnan(x), "must not be NaN", x, where)
  _value_check(fn, "labels", (labels >= 0) & (labels <= 1),
               "must be in [0, 1]", labels, where)
  return x, labels, weight, where


def _value_check(fn, name, ok, check, x, where):
  _checks.values(fn, name, ok if where is None else ok | ~where, check, x)


def _finish(fn, loss, weight, where, reduction):
  if weight is not None:
    loss = loss * weight
  loss = _reduction.mask(loss, where)
  return _reduction.reduce(fn, loss, reduction, keep=where)


def _clamped_logs(p):
  """torch's BCELoss logs, each clamped at -100: ``log p`` and ``log(1 - p)``.

  The clamp is a double where: at ``p`` in {0, 1} neither the value nor any
  derivative meets ``log 0``.
  """
  log_p = jnp.maximum(jnp.log(jnp.where(p > 0, p, 1)), -100.0)
  log_not_p = jnp.maximum(jnp.log1p(-jnp.where(p < 1, p, 0)), -100.0)
  return (jnp.where(p > 0, log_p, -100.0),
          jnp.where(p < 1, log_not_p, -100.0))


@jax.custom_jvp
def _bce_on_probs(p, y):
  # torch's BCELoss: each log is clamped at -100, so p=0 with y=1 gives 100.
  # The value alone needs no guard: log 0 = -inf meets the clamp, and a NaN
  # stays NaN. The rule below guards what its derivatives meet.
  return -(y * jnp.maximum(jnp.log(p), -100.0)
           + (1 - y) * jnp.maximum(jnp.log1p(-p), -100.0))


def _bce_on_probs_jvp(primals, tangents):
  p, y = primals
  dp, dy = tangents
  # The value is the primal's own (its derivatives are this rule again), so
  # that XLA fuses it with the derivative's pass; only the labels' derivative
  # needs the guarded logs.
  loss = _bce_on_probs(p, y)
  tangent = jnp.zeros_like(loss)
  if not isinstance(dp, SymbolicZero):
    # torch's backward: (p - y) / max(p (1 - p), 1e-12), finite at p in
    # {0, 1}.
    tangent = tangent + (p - y) / jnp.maximum(p * (1 - p), 1e-12) * dp
  if not isinstance(dy, SymbolicZero):
    log_p, log_not_p = _clamped_logs(p)
    tangent = tangent + (log_not_p - log_p) * dy
  return loss, tangent


_bce_on_probs.defjvp(_jit.inlined(_bce_on_probs_jvp), symbolic_zeros=True)


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart=True)
def binary_cross_entropy(probs, labels, *, weight=None, where=None,
                         reduction="none"):
  r"""Binary cross entropy on probabilities, with torch's ``BCELoss`` numerics.

  .. math::
    \ell = -w \left[y \max(\log p, -100) + (1 - y) \max(\log(1 - p), -100)\right]

  The clamp makes ``p = 0, y = 1`` cost exactly 100 instead of ``inf``, and the
  gradient :math:`(p - y) / \max(p (1 - p), 10^{-12})` is finite at
  ``p`` in {0, 1}. Prefer :func:`sigmoid_binary_cross_entropy` on logits: once
  ``sigmoid`` has rounded to 0 or 1 the clamp is all that is left, and the
  gradient through the sigmoid vanishes.

  Args:
    probs: probabilities in [0, 1], floating, any shape.
    labels: targets in [0, 1], ``probs``' shape or broadcasting to it (never
      enlarging it; torch's ``BCELoss`` wants equal shapes).
    weight: optional per-element weights broadcasting to ``probs``' shape.
    where: optional boolean mask broadcasting to ``probs``' shape; dropped
      elements give loss 0 and gradient 0.
    reduction: ``"none"``, ``"mean"`` (over kept elements) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): ``probs``' shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p = jnp.array([0.9, 0.2, 0.0])
    >>> y = jnp.array([1.0, 0.0, 1.0])
    >>> print(jaxloss.binary_cross_entropy(p, y))
    [1.0536055e-01 2.2314355e-01 1.0000000e+02]

  References:
    ``torch.nn.BCELoss`` / ``torch.nn.functional.binary_cross_entropy``, whose
    clamp and gradient this matches.
  """
  fn = "binary_cross_entropy"
  probs, labels, weight, where = _prepare(fn, probs, "probs", labels, weight,
                                          where)
  if where is not None:
    probs = jnp.where(where, probs, 0.5)
  return _finish(fn, _bce_on_probs(probs, labels), weight, where, reduction)


def _smooth(labels, label_smoothing):
  if _jit.is_zero(label_smoothing):
    return labels
  return labels * (1 - label_smoothing) + 0.5 * label_smoothing


def _softplus_pair(x):
  """``softplus(x)`` and ``softplus(-x)``, with one exp and one log1p per
  element."""
  tail = jnp.log1p(jnp.exp(-jnp.abs(x)))
  return jnp.maximum(x, 0) + tail, jnp.maximum(-x, 0) + tail


def _softplus_value(x):
  return _softplus_pair(x)[0]


@_value_form.value_form(_softplus_value)
def softplus(x):
  """``jax.nn.softplus``, its value in arithmetic: ``max(x, 0) + log1p(e^-|x|)``
  (``inf`` at ``inf``, 0 at ``-inf``, NaN at NaN), which XLA:CPU fuses with a
  sum; ``jax.nn.softplus``'s value ends in a select, whose terms it writes
  out (``soft_margin_loss``'s mean: 16 MiB of temporaries on 4M elements,
  and 1.44x the plain formula's time on rows of 4 laid out flat). The
  derivatives are ``jax.nn.softplus``'s.
  """
  return jax.nn.softplus(x)


@jax.custom_jvp
def _logit_bce(x, neg, pos):
  r"""``neg softplus(x) + pos softplus(-x)``, the binary cross entropy on a
  logit with weights :math:`1 - y` and :math:`p_c y`, exact at ``x = \pm inf``.
  """
  # torch's form, (1 - y) x + (p_c y + 1 - y) softplus(-x), with one exp and
  # one log1p per element, on finite logits. At an infinite logit only the
  # term on its side is left: 0 if its weight is 0 (not 0 * inf), else inf.
  infinite = jnp.isinf(x)
  finite_x = jnp.where(infinite, 0, x)
  softplus_neg_x = (jnp.maximum(-finite_x, 0)
                    + jnp.log1p(jnp.exp(-jnp.abs(finite_x))))
  loss = neg * finite_x + (pos + neg) * softplus_neg_x
  side = jnp.where(x > 0, neg, pos)
  return jnp.where(infinite, jnp.where(side == 0, 0, jnp.inf), loss)


def _logit_bce_jvp(primals, tangents):
  # The derivatives written out: d/dx = neg sigmoid(x) - pos sigmoid(-x) is
  # finite at x = +-inf, where autodiff of the formula meets inf * 0. Symbolic
  # zero tangents keep an infinite d/dneg or d/dpos (the true derivative in the
  # labels at an infinite logit) away from the logits' gradient. Both
  # sigmoids come from one exponential of -|x|, written as a select of -x
  # and x: not the value's exp(-|x|), which XLA would share and write out
  # for the gradient's pass (twice the temporaries, and pages that fault on
  # every call past 32 MiB), and with a derivative of its own at x = 0
  # (|x|'s is 0 there). One exponential and one division where two
  # logistics took two of each, each sigmoid to a few ulps as theirs.
  x, neg, pos = primals
  dx, dneg, dpos = tangents
  out = _logit_bce(x, neg, pos)
  tangent = jnp.zeros_like(out)
  if not isinstance(dx, SymbolicZero):
    right = x > 0
    e = jnp.exp(jnp.where(right, -x, x))
    r = 1 / (1 + e)
    er = e * r
    tangent = tangent + (neg * jnp.where(right, r, er)
                         - pos * jnp.where(right, er, r)) * dx
  if not (isinstance(dneg, SymbolicZero) and isinstance(dpos, SymbolicZero)):
    softplus_x, softplus_neg_x = _softplus_pair(x)
    if not isinstance(dneg, SymbolicZero):
      tangent = tangent + softplus_x * dneg
    if not isinstance(dpos, SymbolicZero):
      tangent = tangent + softplus_neg_x * dpos
  return out, tangent


_logit_bce.defjvp(_jit.inlined(_logit_bce_jvp), symbolic_zeros=True)


@_jit.jit("reduction", label_smoothing=_jit.UNIT)
@_reduction.elementwise
def sigmoid_binary_cross_entropy(logits, labels, *, pos_weight=None,
                                 weight=None, label_smoothing=0.0, where=None,
                                 reduction="none"):
  r"""Binary cross entropy on logits, in the stable ``log_sigmoid`` form.

  .. math::
    \ell = -w \left[p_c\, y \log \sigma(x) + (1 - y) \log \sigma(-x)\right]

  with :math:`\log\sigma(x) = -\mathrm{softplus}(-x)`, exact at saturation:
  logit 40 with label 0 costs 40, logit 1e4 costs 1e4. With label smoothing
  :math:`\varepsilon`, :math:`y \leftarrow y (1 - \varepsilon) + \varepsilon/2`.

  Infinite logits are exact too: logit ``-inf`` with label 0 (or ``+inf``
  with label 1) costs 0 with gradient 0, where torch and optax return NaN; a
  wrong infinite logit costs ``inf`` with its finite gradient
  (:math:`-p_c y` at ``-inf``, :math:`1 - y` at ``+inf``). The gradient in
  the labels is :math:`p_c\,\mathrm{softplus}(-x) - \mathrm{softplus}(x)`,
  infinite at infinite logits.

  Args:
    logits: floating array of any shape.
    labels: targets in [0, 1] (binary or soft), ``logits``' shape or
      broadcasting to it (never enlarging it: [N] labels against [N, 1]
      logits are an error).
    pos_weight: optional weight :math:`p_c` of the positive term, broadcast
      to ``logits``' shape from the right (one per class on the last axis),
      as torch's ``BCEWithLogitsLoss(pos_weight=...)``.
    weight: optional per-element weights broadcasting to ``logits``' shape.
    label_smoothing: :math:`\varepsilon` in [0, 1], traced or concrete;
      an exact 0 leaves the smoothing out of the program.
    where: optional boolean mask broadcasting to ``logits``' shape; dropped
      elements give loss 0 and gradient 0.
    reduction: ``"none"``, ``"mean"`` (over kept elements) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): ``logits``' shape for
    ``"none"``, else a scalar. With default options equal to
    ``optax.losses.sigmoid_binary_cross_entropy``.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([40.0, 1e4, 0.0])
    >>> y = jnp.array([0.0, 0.0, 1.0])
    >>> print(jaxloss.sigmoid_binary_cross_entropy(x, y))
    [4.0000000e+01 1.0000000e+04 6.9314718e-01]

  References:
    ``torch.nn.BCEWithLogitsLoss``; ``optax.losses.sigmoid_binary_cross_entropy``.
  """
  fn = "sigmoid_binary_cross_entropy"
  logits, labels, weight, where = _prepare(fn, logits, "logits", labels,
                                           weight, where)
  labels = _smooth(labels, label_smoothing)
  if where is not None:
    logits = jnp.where(where, logits, 0)
  positive = labels
  if pos_weight is not None:
    pos_weight = _checks.numeric(fn, "pos_weight", pos_weight)
    pos_weight = _checks.conform(fn, "pos_weight", pos_weight, "logits",
                                 logits.shape)
    positive = labels * pos_weight.astype(logits.dtype)
  loss = _logit_bce(logits, 1 - labels, positive)
  return _finish(fn, loss, weight, where, reduction)


def _log_one_minus_pt(x, y):
  r""":math:`\log(1 - p_t) = \log((1 - y)\,\sigma(x) + y\,\sigma(-x))` at a
  finite logit, with one exp and one log1p per element.

  With :math:`e = e^{-|x|}` and :math:`t = \mathrm{log1p}(e)`, it is
  :math:`\log s - t` where :math:`s` is :math:`y + (1 - y) e` for
  :math:`x < 0` and :math:`1 - y + y e` otherwise. Where :math:`s` rounds
  to 0 (a label of 0 or 1 on its own side, :math:`|x| \gtrsim 87`), it is
  :math:`-|x| + \log(\text{the weight of } e)` (double where: no
  ``log 0`` in any derivative).
  """
  a = jnp.abs(x)
  e = jnp.exp(-a)
  tail = jnp.log1p(e)
  # The weight of e^{-|x|}: that of the class the logit points away from.
  w_small = jnp.where(x < 0, 1 - y, y)
  s = (1 - w_small) + w_small * e
  positive = s > 0
  log_s = jnp.where(positive, jnp.log(jnp.where(positive, s, 1)),
                    jnp.log(jnp.where(positive, 1, w_small)) - a)
  return log_s - tail


# A logit beyond which sigmoid is exactly 0 or 1 in float32 and float64.
_SATURATED = 1e4


@_jit.jit("reduction", gamma=_jit.NON_NEGATIVE,
          alpha=_jit.Hyper(0.0, 1.0, optional=True, array=True))
@_reduction.elementwise
def sigmoid_focal_loss(logits, labels, *, alpha=None, gamma=2.0, weight=None,
                       where=None, reduction="none"):
  r"""Focal loss on logits, with finite gradients at any finite logit.

  .. math::
    \ell = -\alpha_t (1 - p_t)^\gamma \log p_t,\qquad
    1 - p_t = (1 - y)\,\sigma(x) + y\,\sigma(-x)

  :math:`\log(1 - p_t)` is computed in log space, from one :math:`e^{-|x|}`
  and its ``log1p``, so the modulating factor never rounds to
  ``0 ** gamma``: gradients stay finite at logits of :math:`\pm 10^4` for
  every ``gamma >= 0``, including
  ``gamma < 1`` where the naive form gives ``inf * 0``. As in
  :func:`sigmoid_binary_cross_entropy`, logit ``-inf`` with label 0 (or
  ``+inf`` with label 1) costs 0 with gradient 0, and a wrong infinite logit
  costs ``inf`` with a finite gradient in the logits (torch and optax: NaN
  for both); gradients in the labels are not defined at infinite logits.

  Args:
    logits: floating array of any shape.
    labels: targets in [0, 1], ``logits``' shape or broadcasting to it.
    alpha: optional balance in [0, 1], traced or concrete, a number or an
      array broadcasting to ``logits``' shape: weight ``alpha`` on
      positives, ``1 - alpha`` on negatives. None weighs both by 1.
    gamma: focusing exponent :math:`\gamma \ge 0`, traced or concrete (0
      gives binary cross entropy; an exact concrete 0 leaves the modulating
      factor out of the program). The gradient in ``gamma`` is finite at
      any finite logit.
    weight: optional per-element weights broadcasting to ``logits``' shape.
    where: optional boolean mask broadcasting to ``logits``' shape.
    reduction: ``"none"``, ``"mean"`` (over kept elements) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input), ``logits``' shape for
    ``"none"``, else a scalar. Equal to ``optax.losses.sigmoid_focal_loss``
    with the same ``alpha`` and ``gamma``.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([2.0, -1.0])
    >>> y = jnp.array([1.0, 1.0])
    >>> print(jaxloss.sigmoid_focal_loss(x, y, gamma=2.0))
    [0.0018 0.7019]

  References:
    Lin et al., `Focal Loss for Dense Object Detection
    <https://arxiv.org/abs/1708.02002>`_, 2017;
    ``torchvision.ops.sigmoid_focal_loss``; ``optax.losses.sigmoid_focal_loss``.
  """
  fn = "sigmoid_focal_loss"
  logits, labels, weight, where = _prepare(fn, logits, "logits", labels,
                                           weight, where)
  if where is not None:
    # Labels too: the modulating factor reads them, and a NaN in a dropped
    # entry would reach their gradient (0 * NaN).
    logits = jnp.where(where, logits, 0)
    labels = jnp.where(where, labels, 0)
  loss = _logit_bce(logits, 1 - labels, labels)
  if not _jit.is_zero(gamma):
    # At an infinite logit the modulating factor is its value at a saturated
    # finite logit (0 or 1) and is held constant: the cross entropy alone
    # carries the 0 or inf, and its finite gradient.
    saturated = jnp.isinf(logits)
    logits = jnp.where(saturated, jnp.sign(logits) * _SATURATED, logits)
    log_one_minus_pt = _log_one_minus_pt(logits, labels)
    factor = jnp.exp(gamma * log_one_minus_pt)
    loss = jnp.where(saturated, loss * lax.stop_gradient(factor),
                     jnp.where(saturated, 0, loss) * factor)
  if alpha is not None:
    alpha = _checks.conform(fn, "alpha", jnp.asarray(alpha, logits.dtype),
                            "logits", logits.shape)
    loss = loss * (alpha * labels + (1 - alpha) * (1 - labels))
  return _finish(fn, loss, weight, where, reduction)
