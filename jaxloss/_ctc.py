"""Connectionist temporal classification (CTC), with optax's interface."""

import math

import jax
import jax.numpy as jnp

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _value_form


def _logaddexp_primal(a, b):
  """``log(e^a + e^b)`` in differentiable operations, no select: the gap is
  taken from the larger term, floored at the most negative finite number,
  so that where both are ``-inf`` it is ``-inf`` (not NaN) and the sum
  ``-inf + log1p(0)``. Every derivative is finite there."""
  top = jnp.maximum(a, b)
  floor = jnp.asarray(jnp.finfo(top.dtype).min, top.dtype)
  gap = jnp.minimum(a, b) - jnp.maximum(top, floor)
  return top + jnp.log1p(jnp.exp(gap))


@jax.custom_jvp
def _logaddexp(a, b):
  """``log(e^a + e^b)``, with derivatives of every order 0 where both are
  ``-inf`` (a path that ``log_epsilon=-inf`` makes impossible).

  jnp.logaddexp's derivative is NaN there. The rule keeps two weights per
  element for reverse mode; the partial evaluation of ``lax.scan`` may
  differentiate the primal instead at the second order (grad of grad), so
  the primal is written in differentiable operations too.
  """
  return _logaddexp_primal(a, b)


@_logaddexp.defjvp
@_jit.inlined
def _logaddexp_jvp(primals, tangents):
  (a, b), (da, db) = primals, tangents
  out = _logaddexp_primal(a, b)
  finite = jnp.isfinite(out)
  safe = jnp.where(finite, out, 0)
  wa = jnp.where(finite, jnp.exp(a - safe), 0)
  wb = jnp.where(finite, jnp.exp(b - safe), 0)
  return out, wa * da + wb * db


def _clamp(x, sign):
  """``x`` clamped to 0 on the side of ``sign``, the identity in gradient.

  A log-probability is at most 0, but float32 rounding can push a sum over
  near-certain paths a few ulps above: the value is clamped (to +0, never
  -0), while the gradient stays that of the computed value: the clamp only
  hides rounding, which is no reason to stop learning.
  """
  past = x * sign >= 0
  return x + jax.lax.stop_gradient(jnp.where(past, -x, 0))


def _check(fn, logits, logit_paddings, labels, label_paddings, blank_id):
  logits = _checks.floating(fn, "logits", logits)
  if logits.ndim != 3:
    _checks.fail(fn, "logits must have shape (batch, time, classes), got "
                 f"shape {logits.shape}")
  batch, time, num_classes = logits.shape
  if time == 0:
    _checks.fail(fn, f"logits must have at least one time step, got shape "
                 f"{logits.shape}")
  # The contract: paddings and labels may broadcast along the batch (and
  # paddings along the labels' rows), never enlarge the logits' batch.
  logit_paddings = _checks.numeric(fn, "logit_paddings", logit_paddings)
  logit_paddings = _checks.conform(fn, "logit_paddings", logit_paddings,
                                   "the (batch, time) shape of logits",
                                   (batch, time))
  labels = _checks.integer(fn, "labels", labels)
  if labels.ndim != 2 or labels.shape[0] not in (1, batch):
    _checks.fail(fn, f"labels shape {labels.shape} does not match logits "
                 f"shape {logits.shape}: labels must be (batch, "
                 f"max_label_length) with the batch size {batch} of logits")
  labels = jnp.broadcast_to(labels, (batch, labels.shape[1]))
  label_paddings = _checks.numeric(fn, "label_paddings", label_paddings)
  label_paddings = _checks.conform(fn, "label_paddings", label_paddings,
                                   "labels", labels.shape)
  if (isinstance(blank_id, bool) or not isinstance(blank_id, int)
      or not 0 <= blank_id < num_classes):
    _checks.fail(fn, f"blank_id must be an int in [0, {num_classes}) (a "
                 f"class of logits), got {blank_id!r}")
  frame_pad, label_pad = logit_paddings != 0, label_paddings != 0
  _values(fn, logits, frame_pad, logit_paddings, labels, label_pad,
          label_paddings, blank_id)
  return logits, frame_pad, labels, label_pad


def _values(fn, logits, frame_pad, logit_paddings, labels, label_pad,
            label_paddings, blank_id):
  """Value checks, active only under ``checked``."""
  binary = "must be 0 (kept) or 1 (padded)"
  _checks.values(fn, "logit_paddings",
                 (logit_paddings == 0) | (logit_paddings == 1), binary,
                 logit_paddings)
  _checks.values(fn, "label_paddings",
                 (label_paddings == 0) | (label_paddings == 1), binary,
                 label_paddings)
  # Padded labels come last: a kept label after a padded one would be
  # silently dropped from the sequence.
  after_padding = jnp.cumsum(label_pad, axis=1) > 0
  _checks.values(fn, "label_paddings", ~(after_padding & ~label_pad),
                 "must pad only the end of each row (1s after the 0s)",
                 label_paddings)
  num_classes = logits.shape[-1]
  _checks.values(
      fn, "labels",
      label_pad | ((labels >= 0) & (labels < num_classes)
                   & (labels != blank_id)),
      f"must be in [0, {num_classes}) and not blank_id ({blank_id}) where "
      "not padded", labels)
  _checks.values(fn, "logits", ~jnp.isnan(logits) | frame_pad[..., None],
                 "must not be NaN on frames not padded", logits)


def _label_log_probs(logits, frame_pad, labels, blank_id):
  """Time-major log-probabilities of each label position and of the blank.

  Gathers from the logits and subtracts the log-normalizer, in the order
  ``jax.nn.log_softmax`` uses, rather than materializing the (B, T, K)
  log-softmax and contracting it with one-hot labels as optax does: the
  contraction costs B T N K multiply-adds, turns a ``-inf`` logit into
  ``0 * -inf = nan``, and runs as a TF32/bfloat16 matmul on GPUs and TPUs at
  default precision, which rounds the log-probabilities.
  """
  x = logits.astype(_reduction.stat_dtype(logits.dtype))
  # Padded frames never reach the loss; zeroing them keeps whatever they hold
  # (inf, nan) out of the gradient.
  x = jnp.where(frame_pad[..., None], 0, x)
  shift = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0)
  shifted = x - shift
  log_norm = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
  batch, time, num_classes = x.shape
  valid = (labels >= 0) & (labels < num_classes)
  emit = _take_labels(shifted, jnp.where(valid, labels, 0)) - log_norm
  blank = shifted[..., blank_id] - log_norm[..., 0]
  return jnp.transpose(emit, (1, 0, 2)), blank.T, valid


@jax.custom_jvp
def _take_labels(x, labels):
  """``x[b, t, labels[b, n]]``: [B, T, K] by [B, N] labels to [B, T, N].

  A gather, exact at ``-inf``; its tangent is the same selection as a
  contraction with the one-hot labels (exact: one nonzero term per sum),
  whose transpose, the gradient, is a batched matrix product rather than a
  scatter-add, several times faster on CPUs.
  """
  index = jnp.broadcast_to(labels[:, None, :], x.shape[:2] + labels.shape[1:])
  return jnp.take_along_axis(x, index, axis=-1)


@_take_labels.defjvp
@_jit.inlined
def _take_labels_jvp(primals, tangents):
  (x, labels), (dx, _) = primals, tangents
  classes = jax.lax.broadcasted_iota(labels.dtype,
                                     labels.shape + x.shape[-1:], 2)
  one_hot = (labels[..., None] == classes).astype(dx.dtype)
  d = jnp.einsum("btk,bnk->btn", dx, one_hot,
                 precision=jax.lax.Precision.HIGHEST)
  return _take_labels(x, labels), d


def _padded_value(pad, state, step):
  """:func:`_padded`'s value with no select of the states: the larger of
  the state and the step, the one not taken pushed to ``-inf`` (a
  log-probability is never ``+inf``; NaN stays NaN)."""
  off = jnp.where(pad, 0, -jnp.inf).astype(state.dtype)[:, None]
  on = jnp.where(pad, -jnp.inf, 0).astype(state.dtype)[:, None]
  return jnp.maximum(state + off, step + on)


@_value_form.value_form(_padded_value)
def _padded(pad, state, step):
  """The state where the frame is padded (``pad``, [B]), else the step.

  A select of the [B, N] states on the frame's flags took XLA:CPU's loop
  over the frames 1.6x the time per step on 64 sequences of 8 labels,
  where the value's form takes about optax's time. Under differentiation
  the select, whose derivatives keep only the flags (the maximum's kept
  comparisons: more temporaries than optax's gradient).
  """
  return jnp.where(pad[:, None], state, step)


def _forward(emit, blank, frame_pad, repeat, log_epsilon, every_frame):
  """optax's forward recursion over time, safe for ``log_epsilon = -inf``.

  ``phi[b, n]``: log-probability of having emitted ``n`` labels and being free
  to emit label ``n`` next (last frame a blank, or an epsilon step after
  label ``n - 1``); ``lab[b, n]``: of having just emitted label ``n``. For
  ``every_frame``, [T, B, ...] arrays of them; otherwise the last frame's
  alone: the loop then writes no [T, ...] stacks, which ``ctc_loss`` would
  drop (half its value's temporaries).
  """
  batch, num_labels = repeat.shape
  dtype = emit.dtype
  phi = jnp.full((batch, num_labels + 1), log_epsilon, dtype).at[:, 0].set(0)
  lab = jnp.full((batch, num_labels), log_epsilon, dtype)
  # optax writes these as log_epsilon * repeat; with -inf that is 0 * -inf.
  skip_if_repeat = jnp.where(repeat, log_epsilon, 0).astype(dtype)
  skip_unless_repeat = jnp.where(repeat, 0, log_epsilon).astype(dtype)

  def with_tail(p, tail):
    return jnp.concatenate([p[:, :1], _logaddexp(p[:, 1:], tail)], axis=-1)

  def step(carry, inputs):
    phi, lab = carry
    emit_t, blank_t, pad_t = inputs
    blank_t = blank_t[:, None]
    phi_eps = with_tail(phi, lab + skip_if_repeat)
    next_lab = _logaddexp(phi_eps[:, :-1] + emit_t, lab + emit_t)
    next_phi = with_tail(phi_eps + blank_t, lab + blank_t + skip_unless_repeat)
    next_phi = _padded(pad_t, phi, next_phi)
    next_lab = _padded(pad_t, lab, next_lab)
    carry = (next_phi, next_lab)
    return carry, (carry if every_frame else None)

  # The loop staged as a loop (see _jit.inlined), its body inlined.
  last, frames = _jit.staged(jax.lax.scan)(
      _jit.inlined(step), (phi, lab), (emit, blank, frame_pad.T))
  # The last label can still take its epsilon step into the final state.
  if not every_frame:
    return with_tail(*last), last[1]
  phi, lab = frames
  return phi.at[-1].set(with_tail(phi[-1], lab[-1])), lab


def _ctc(fn, logits, logit_paddings, labels, label_paddings, blank_id,
         log_epsilon, reduction, every_frame=True):
  """(loss, phi, lab): the forward log-probabilities of every frame, [T, B,
  ...], or without ``every_frame`` the last frame's, [B, ...]."""
  _checks.reduction(fn, reduction)
  logits, frame_pad, labels, label_pad = _check(
      fn, logits, logit_paddings, labels, label_paddings, blank_id)
  emit, blank, valid = _label_log_probs(logits, frame_pad, labels, blank_id)
  log_epsilon = jnp.asarray(log_epsilon, emit.dtype)
  # repeat[b, n]: label n + 1 repeats label n, so a blank must separate them.
  repeat = jnp.concatenate([labels[:, :-1] == labels[:, 1:],
                            jnp.zeros_like(labels[:, :1], bool)], axis=1)
  phi, lab = _forward(emit, blank, frame_pad, repeat, log_epsilon,
                      every_frame)
  num_labels = jnp.sum(~label_pad, axis=1)
  final = phi[-1] if every_frame else phi
  loss = -jnp.take_along_axis(final, num_labels[:, None], axis=1)[:, 0]
  loss = _clamp(loss, -1)
  phi, lab = _clamp(phi, 1), _clamp(lab, 1)
  # A label outside [0, K) has no log-probability: NaN, not the certain
  # emission optax's one-hot of it gives.
  loss = jnp.where(jnp.any(~valid & ~label_pad, axis=1), jnp.nan, loss)
  return _reduction.reduce(fn, loss, reduction), phi, lab


# log(0) stands in for impossible transitions: -inf is exact, 0 (log 1) the
# largest value that still means a probability.
_LOG_EPSILON = _jit.Hyper(-math.inf, 0.0)


@_jit.jit("blank_id", "reduction", log_epsilon=_LOG_EPSILON)
def ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings,
                                *, blank_id=0, log_epsilon=-1e5,
                                reduction="none"):
  r"""CTC loss and the forward log-probabilities behind it.

  With :math:`\mathcal{B}` the map that merges repeats and drops blanks, the
  loss of a sequence is the negative log-probability of all alignments
  :math:`\pi` (one class per unpadded frame) that reduce to its labels:

  .. math::
    \ell = -\log \sum_{\pi \in \mathcal{B}^{-1}(y)} \prod_t p_t(\pi_t),
    \qquad p_t = \mathrm{softmax}(\mathrm{logits}_t)

  computed by optax's forward recursion in log space: ``logalpha_blank[t, b,
  n]`` is the log-probability of having emitted ``n`` labels by frame ``t``
  and being free to emit label ``n`` next, ``logalpha_nonblank[t, b, n]`` of
  having just emitted label ``n``. ``log_epsilon`` stands for
  :math:`\log 0`; ``-inf`` is allowed and exact: a label sequence that cannot
  fit in its frames then costs ``inf`` (as in torch) instead of about
  ``-log_epsilon``.

  Differences from optax, all at the edges: the loss is never negative and
  the forward log-probabilities never positive (optax rounds slightly past
  0 in float32 on near-certain alignments: softmax rounded so its
  probabilities sum past 1, then summed over several paths); gradients are
  unchanged by that clamp and finite for ``-inf`` logits (optax: NaN), and
  whatever padded frames hold does not reach them; a label outside
  ``[0, K)`` that is not padding gives NaN.

  Args:
    logits: floating (B, T, K) logits, blank included; half precision is
      upcast to float32.
    logit_paddings: (B, T) padding indicators, 1 on padded frames and 0
      elsewhere (any nonzero value reads as padded; :func:`jaxloss.checked`
      rejects values other than 0 and 1, which optax would interpolate).
    labels: integer (B, N) labels in ``[0, K)``, never ``blank_id``.
    label_paddings: (B, N) padding indicators, nonzero (1.0) on padded
      labels, which must come after the real ones in each row.
    blank_id: class of the blank symbol, in ``[0, K)``.
    log_epsilon: traced or concrete scalar in ``[-inf, 0]`` standing for
      :math:`\log 0`.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the batch.

  Returns:
    ``(loss, logalpha_blank, logalpha_nonblank)``: the loss, (B,) for
    ``"none"``, else a scalar; (T, B, N + 1) and (T, B, N) forward
    log-probabilities, all float32 (float64 for float64 logits).

  Example:
    >>> import jaxloss
    >>> logits = jnp.array([[[0.0, 17.0], [0.0, 17.0]]])
    >>> loss, alpha_blank, alpha_label = jaxloss.ctc_loss_with_forward_probs(
    ...     logits, jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1)))
    >>> print(loss, alpha_blank.shape, alpha_label.shape)
    [0.] (2, 1, 2) (2, 1, 1)

  References:
    Graves et al., `Connectionist temporal classification
    <https://www.cs.toronto.edu/~graves/icml_2006.pdf>`_, 2006;
    ``optax.losses.ctc_loss_with_forward_probs`` (same arguments and
    outputs, which gives ``-8.3e-08`` for the example above).
  """
  return _ctc("ctc_loss_with_forward_probs", logits, logit_paddings, labels,
              label_paddings, blank_id, log_epsilon, reduction)


@_jit.jit("blank_id", "reduction", log_epsilon=_LOG_EPSILON)
def ctc_loss(logits, logit_paddings, labels, label_paddings, *, blank_id=0,
             log_epsilon=-1e5, reduction="none"):
  r"""Connectionist temporal classification loss, never negative.

  .. math::
    \ell = -\log \sum_{\pi \in \mathcal{B}^{-1}(y)} \prod_t p_t(\pi_t)

  over the alignments :math:`\pi` of the unpadded frames that reduce to the
  labels :math:`y` once repeats are merged and blanks dropped. Same
  arguments and values as ``optax.losses.ctc_loss``, except that it is
  clamped at 0 where float32 rounding takes optax below (gradients
  unchanged), its gradients stay finite for ``-inf`` logits, and a label
  outside ``[0, K)`` gives NaN; see :func:`ctc_loss_with_forward_probs`.
  :class:`jaxloss.nn.CTCLoss` gives torch's interface and normalization.

  Args:
    logits: floating (B, T, K) logits, blank included; half precision is
      upcast to float32.
    logit_paddings: (B, T) padding indicators, 1 on padded frames and 0
      elsewhere (any nonzero value reads as padded; :func:`jaxloss.checked`
      rejects values other than 0 and 1, which optax would interpolate).
    labels: integer (B, N) labels in ``[0, K)``, never ``blank_id``.
    label_paddings: (B, N) padding indicators, nonzero (1.0) on padded
      labels, which must come after the real ones in each row.
    blank_id: class of the blank symbol, in ``[0, K)``.
    log_epsilon: traced or concrete scalar in ``[-inf, 0]`` standing for
      :math:`\log 0`; ``-inf`` makes impossible alignments exact (an
      unreachable label sequence costs ``inf`` with zero gradient).
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the batch.

  Returns:
    float32 loss (float64 for float64 logits): (B,) for ``"none"``, else a
    scalar.

  Example:
    >>> import jaxloss
    >>> logits = jnp.log(jnp.array([[[0.2, 0.7, 0.1], [0.6, 0.1, 0.3],
    ...                              [0.1, 0.1, 0.8]]]))
    >>> print(jaxloss.ctc_loss(logits, jnp.zeros((1, 3)),
    ...                        jnp.array([[1, 2]]), jnp.zeros((1, 2))))
    [0.5158]

  References:
    Graves et al., `Connectionist temporal classification
    <https://www.cs.toronto.edu/~graves/icml_2006.pdf>`_, 2006;
    ``optax.losses.ctc_loss``; ``torch.nn.functional.ctc_loss`` (on
    ``log_softmax`` of the logits, time first, with lengths for paddings).
  """
  loss, _, _ = _ctc("ctc_loss", logits, logit_paddings, labels,
                    label_paddings, blank_id, log_epsilon, reduction,
                    every_frame=False)
  return loss
