"""Distillation of a linear layer's softmax into another's, never holding
either's logits."""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _linear
from jaxloss import _reduction

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
OPEN_UNIT = _jit.Hyper(0.0, 1.0, low_open=True, high_open=True)
# A chunk holds both sides' logits and, for the JSD, about six more arrays of
# their size (log-probabilities, probabilities, the mixture): by default a
# chunk's arrays take an eighth of the cross entropy's budget each, or
# _MIN_TOKENS tokens of whole rows where an eighth holds fewer and a half (both
# sides' logits alone in it) holds them: each chunk reads both kernels, and
# with few tokens the matmuls wait on that reading. On this CPU (N=4096, D=1024
# and 2048, V=32768) the forward KL's value took 1.93x the plain formula's time
# at 32 tokens, 0.90x at 128; the JSD's 1.91x and 0.71x; at V=1024, D=256, 1024
# tokens (an eighth) took 0.91x and 4096 (a half) 1.17x. The KL divergences'
# derivatives take the half: the forward KL's gradient took 1.26x at 4096 x 256
# and 1.07x at 4096 x 1024, 1.35x and 1.23x at 1024 and 4096 tokens of 1024
# classes. The JSD's, holding about twelve arrays, took 1.38x at 4096 x 256 and
# 1.43x at 4096 x 1024. (Those figures are the per-token tangent's, which
# "none" keeps.) The mean's and the sum's single pass takes the cross
# entropy's chunks for the KL divergences (three arrays of their size: its
# value and gradient took 0.93x the plain formula's time at 128 tokens of
# 32768 classes, 0.76x at 256, with 49 and 97 MiB of temporaries), and the
# value's for the JSD: about seven arrays a chunk (28, 56 and 113 MiB), it
# took 1.49x at 32 tokens, 0.77x at 64 and 0.70x at 128. It needs
# _MIN_TOKENS tokens a chunk, else the per-token tangent's class chunks
# serve: at V=262144 (N=512) the forward KL's single pass of 32 tokens took
# 2.42x, the class chunks 1.91x.
_CHUNK_ARRAYS = 8
_LOGITS_ARRAYS = 2
_MIN_TOKENS = 128
_NO_HYPERS = _linear._Hypers(None, None, None)


class _Chunk(NamedTuple):
  """One block of tokens by classes: where it is and both sides' logits."""
  start: int | jax.Array   # first token
  n: int                   # tokens
  col: int | jax.Array     # first class
  v: int                   # classes
  student: tuple           # (hidden, kernel) of the block, compute dtype
  teacher: tuple
  keep: jax.Array          # [n] kept tokens
  s: jax.Array             # [n, v] student logits over the temperature
  t: jax.Array             # [n, v] teacher logits over the temperature


def _relative(p, log_p, log_r):
  r""":math:`p (\log p - \log r)`, 0 wherever :math:`p = 0` whatever
  :math:`\log r` is (``-inf`` included), with no NaN in its derivatives."""
  on = p > 0
  gap = jnp.where(on, log_p, 0) - jnp.where(on, log_r, 0)
  return jnp.where(on, p * gap, 0)


def _log_mixture(log_p, log_q, p, q, beta):
  r""":math:`\log(\beta p + (1 - \beta) q)`, finite wherever either is
  positive.

  ``jnp.logaddexp`` differentiates a ``-inf`` argument as if it were 0;
  here a side with no mass has derivative 0.
  """
  either = (p > 0) | (q > 0)
  a = jnp.where(p > 0, jnp.log(beta) + jnp.where(p > 0, log_p, 0), -jnp.inf)
  b = jnp.where(q > 0, jnp.log1p(-beta) + jnp.where(q > 0, log_q, 0),
                -jnp.inf)
  a, b = jnp.where(either, a, 0), jnp.where(either, b, 0)
  hi, lo = jnp.maximum(a, b), jnp.minimum(a, b)
  return hi + jnp.log1p(jnp.exp(lo - hi))


def _terms(divergence, s, t, lse_s, lse_t, beta):
  """Per-class terms of each token's divergence, [n, v]; they sum to it."""
  log_q = s - lse_s[:, None]
  log_p = t - lse_t[:, None]
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  if divergence == "forward_kl":
    return _relative(p, log_p, log_q)
  if divergence == "reverse_kl":
    return _relative(q, log_q, log_p)
  log_m = _log_mixture(log_p, log_q, p, q, beta)
  return (beta * _relative(p, log_p, log_m)
          + (1 - beta) * _relative(q, log_q, log_m))


def _row_lse(x):
  """The log-sum-exp of whole rows: the statistics pass's numbers (its
  running sum starts at an exact 0), without its running state."""
  top = jnp.max(x, axis=1)
  shift = jnp.where(top == -jnp.inf, 0, top)
  return shift + jnp.log(jnp.sum(jnp.exp(x - shift[:, None]), axis=1))


def _sweep(cfg, student, teacher, keep, part, init, remat):
  """``init`` plus the sums of ``part(chunk)`` (a tuple of [n] arrays per
  token) over every class: a tuple of [N] arrays.

  Classes outermost, as ``_linear``'s gradient pass: transposed (reverse
  mode), each kernel chunk's gradient is summed over the tokens and
  written once. With ``remat`` every chunk is a ``jax.checkpoint``, so
  reverse mode computes its logits again instead of keeping them.
  """
  (h_s, w_s, b_s), (h_t, w_t, b_t) = student, teacher
  n_tokens, num_classes = h_s.shape[0], w_s.shape[1]
  take, put = _linear._take, _linear._put

  def class_chunk(col, v, out):
    ws_c = take(w_s, col, v, 1).astype(cfg.compute)
    wt_c = take(w_t, col, v, 1).astype(cfg.compute)
    bs_c, bt_c = take(b_s, col, v), take(b_t, col, v)

    def token_chunk(start, n, out):
      hs_c = take(h_s, start, n).astype(cfg.compute)
      ht_c = take(h_t, start, n).astype(cfg.compute)
      keep_c = take(keep, start, n)
      chunk = _Chunk(start, n, col, v, (hs_c, ws_c), (ht_c, wt_c), keep_c,
                     _linear._logits(cfg, hs_c, ws_c, bs_c, keep_c),
                     _linear._logits(cfg, ht_c, wt_c, bt_c, keep_c))
      return tuple(put(o, take(o, start, n) + p, start)
                   for o, p in zip(out, part(chunk), strict=True))

    return _linear._chunked(n_tokens, cfg.tokens, token_chunk, out,
                            remat=remat)

  return _linear._chunked(num_classes, cfg.classes, class_chunk, init,
                          remat=remat)


def _divergence_fn(cfg, value_cfg, divergence):
  r"""Each token's divergence, its tangent linear in the inputs'.

  Both sides' log-sum-exps first (a pass of statistics), then one pass over
  the chunks; chunks of whole rows (``value_cfg`` for the value, ``cfg``
  for the derivatives, each where it spans the vocabulary) take them from
  their own logits instead. The tangent of a token's loss
  :math:`L = \sum_j g_j(s_j, t_j, \ell_s, \ell_t)` is

  .. math::
    \sum_j (\partial_s g_j\, ds_j + \partial_t g_j\, dt_j)
    + G_s\, d\ell_s + G_t\, d\ell_t, \qquad
    G_s = \sum_j \partial_{\ell_s} g_j, \quad
    d\ell_s = \sum_j Q_j\, ds_j,

  every sum made in the same pass as the loss. The loss and the ``G`` are
  known in reverse mode (computed forward); the rest is linear, and its
  transpose computes each chunk's logits again. Reverse mode thus takes the
  statistics and the loss (two matmuls each: student and teacher), then
  one pass of four for the gradients (both sides' logits, then the
  student's two gradient matmuls).
  """

  def sums(s, t, lse_s, lse_t, beta):
    return jnp.sum(_terms(divergence, s, t, lse_s, lse_t, beta), axis=1)

  def lse(side, rows):
    h, w, b = side
    return _linear._statistics(cfg, _NO_HYPERS, h, w, b, rows, None)[0]

  # Opaque to partial evaluation (see _linear._whole): no chunk of the
  # statistics' loops is hoisted out of them, stacked.
  statistics = _linear._whole(lambda student, teacher, rows: (
      lse(student, rows), lse(teacher, rows)))

  def both_lse(c, student, teacher, rows):
    # A chunk that spans the vocabulary holds its rows' log-sum-exps: no
    # pass of statistics (two matmuls) before the loss's. (A value_cfg that
    # does not is cfg.)
    if c.classes >= student[1].shape[1]:
      return None
    return statistics(student, teacher, rows)

  def chunk_lse(chunk, lses):
    if lses is not None:
      return tuple(_linear._take(x, chunk.start, chunk.n) for x in lses)
    return _row_lse(chunk.s), _row_lse(chunk.t)

  def zeros(count, student, teacher, *refs):
    # Typed as varying over what the inputs vary over (inside shard_map);
    # the loss and the G from the primals alone, so they stay known.
    zero = jnp.zeros((student[0].shape[0],), cfg.stat)
    return _linear._varying((zero,) * count, *student[:2], *teacher[:2],
                            *refs)

  @jax.custom_jvp
  def per_token(student, teacher, rows, beta):
    lses = both_lse(value_cfg, student, teacher, rows)
    return _sweep(value_cfg, student, teacher, rows.keep, lambda c: (
        sums(c.s, c.t, *chunk_lse(c, lses), beta),),
                  zeros(1, student, teacher), False)[0]

  def jvp(primals, tangents):
    student, teacher, rows, beta = primals
    d_student, d_teacher, _, d_beta = _linear._tangents(tangents)
    sides = (_stat_tangents(cfg, d_student), _stat_tangents(cfg, d_teacher))
    moving = [x for side in sides for x in side if x is not None]
    if d_beta is not None:
      moving.append(d_beta)
    if not moving:
      out = per_token(*primals)
      return out, jnp.zeros_like(out)
    lses = both_lse(cfg, student, teacher, rows)
    on = [any(x is not None for x in side) for side in sides]

    def logits_tangent(chunk, side, params, tangents):
      dh, dw, db = tangents
      take = _linear._take
      return _linear._logits_tangent(
          cfg, None, side, side, params[0], params[1],
          (take(dh, chunk.start, chunk.n), take(dw, chunk.col, chunk.v, 1),
           take(db, chunk.col, chunk.v), None), chunk.keep)

    def part(chunk):
      ls, lt = chunk_lse(chunk, lses)
      # Each class's term reads its own logits only (and the row's lse):
      # one pullback gives every partial derivative of the chunk.
      value, pullback = jax.vjp(lambda s, t: sums(s, t, ls, lt, beta),
                                chunk.s, chunk.t)
      partials = pullback(jnp.ones_like(value))
      tangent = jnp.zeros_like(value)
      if d_beta is not None:
        tangent = jax.jvp(lambda b: sums(chunk.s, chunk.t, ls, lt, b),
                          (beta,), (d_beta,))[1]
      out = (value, tangent)
      for x, lse_x, g, side, params in (
          (chunk.s, ls, partials[0], sides[0], chunk.student),
          (chunk.t, lt, partials[1], sides[1], chunk.teacher)):
        if any(d is not None for d in side):
          dx = logits_tangent(chunk, x, params, side)
          # g depends on the lse as on -x: its derivative there is -sum g.
          out = (out[0], out[1] + jnp.sum(g * dx, axis=1), *out[2:],
                 -jnp.sum(g, axis=1),
                 jnp.sum(jnp.exp(x - lse_x[:, None]) * dx, axis=1))
      return out

    known = zeros(1 + sum(on), student, teacher)
    linear = zeros(1 + sum(on), student, teacher, *moving)
    init = (known[0], linear[0]) + tuple(
        x for pair in zip(known[1:], linear[1:]) for x in pair)
    out, tangent, *by_lse = _sweep(cfg, student, teacher, rows.keep, part,
                                   init, True)
    for g, d in zip(by_lse[::2], by_lse[1::2]):
      tangent = tangent + g * d
    return out, tangent

  per_token.defjvp(_jit.inlined(jvp), symbolic_zeros=True)
  return per_token


def _logit_grads(divergence, s, t, lse_s, lse_t, beta, scale, want):
  r"""A chunk's per-token divergences, and the derivatives of
  ``sum(scale * loss)`` in the student's and the teacher's logits and in
  ``beta``, for the sides ``want`` flags (None for the others).

  Written out rather than by a pullback of :func:`_terms`, whose
  residuals (the guards' masks and the terms' factors) XLA:CPU wrote out
  as as many chunk-sized arrays (about twelve for the JSD). With the
  log-sum-exps fixed, the derivative in a side's logits is a term
  :math:`g_j` per class: the student's :math:`-P_j` for the forward KL,
  :math:`Q_j (\log Q_j - \log P_j)` for the reverse KL and
  :math:`(1 - \beta) Q_j (\log Q_j - \log M_j)` for the JSD, the
  teacher's by symmetry, each up to a multiple of the side's softmax,
  which the log-sum-exp's share cancels (the probabilities sum to 1). That
  share, the log-sum-exp read as :math:`-x` is, is :math:`-\sum_k g_k`,
  spread over the classes as the softmax: :math:`g_j - Q_j \sum_k g_k`.
  """
  log_q, log_p = s - lse_s[:, None], t - lse_t[:, None]
  q, p = jnp.exp(log_q), jnp.exp(log_p)
  if divergence == "forward_kl":
    terms = _relative(p, log_p, log_q)
    g_s, g_t = -p, terms
  elif divergence == "reverse_kl":
    terms = _relative(q, log_q, log_p)
    g_s, g_t = terms, -q
  else:
    log_m = _log_mixture(log_p, log_q, p, q, beta)
    to_p, to_q = _relative(p, log_p, log_m), _relative(q, log_q, log_m)
    terms = beta * to_p + (1 - beta) * to_q
    g_s, g_t = (1 - beta) * to_q, beta * to_p
  scale = scale[:, None]
  out = [jnp.sum(terms, axis=1)]
  for wanted, g, prob in zip(want[:2], (g_s, g_t), (q, p)):
    out.append(scale * (g - prob * jnp.sum(g, axis=1, keepdims=True))
               if wanted else None)
  d_beta = None
  if want[2]:
    # KL(P || M) - KL(Q || M); M's own share, -(sum P - sum Q), is 0.
    d_beta = jnp.sum(scale * (to_p - to_q))
  return (*out, d_beta)


def _single_pass(cfg, divergence, want, student, teacher, keep, beta, scale):
  """Each token's divergence and the gradients of ``sum(scale * loss)``, in
  one pass over chunks of whole rows: each side's logits once, then the
  matmuls of the gradients ``want`` names.

  ``want`` flags the student's hidden states, kernel and bias, the
  teacher's, and ``beta``. Returns the [N] losses and those seven
  gradients, None where not wanted. ``scale`` is each token's share of
  the scalar loss (0 for dropped tokens), so the gradients are final: a
  chunk's logits are made once, where reverse mode through the per-token
  losses' tangent made them three times (statistics, loss, gradients).
  """
  sides = (student, teacher)
  take, put = _linear._take, _linear._put
  ws = [w.astype(cfg.compute) for _, w, _ in sides]

  def token_chunk(start, n, carry):
    losses, grads = carry
    keep_c = take(keep, start, n)
    hs = [take(h, start, n).astype(cfg.compute) for h, _, _ in sides]
    s, t = (_linear._logits(cfg, h, w, side[2], keep_c)
            for h, w, side in zip(hs, ws, sides))
    ls, lt = _row_lse(s), _row_lse(t)
    value, d_s, d_t, d_beta = _logit_grads(
        divergence, s, t, ls, lt, beta, take(scale, start, n),
        (any(want[:3]), any(want[3:6]), want[6]))
    grads = list(grads)
    for i, (d, h_c, w_c) in enumerate(zip((d_s, d_t), hs, ws)):
      if d is None:
        continue
      dz = d.astype(cfg.compute)
      dh, dw, db = grads[3 * i:3 * i + 3]
      if want[3 * i]:
        dh = put(dh, _linear._dot(dz, w_c, ((1,), (1,)),
                                  cfg.stat).astype(dh.dtype), start)
      if want[3 * i + 1]:
        dw = _linear._add_outer(dw, h_c, dz, cfg.stat)
      if want[3 * i + 2]:
        db = db + jnp.sum(d, axis=0)
      grads[3 * i:3 * i + 3] = dh, dw, db
    if want[6]:
      grads[6] = grads[6] + d_beta
    return put(losses, value, start), tuple(grads)

  grads = []
  for (h, w, b), wanted in zip(sides, (want[:3], want[3:6])):
    grads += [jnp.zeros(h.shape, h.dtype) if wanted[0] else None,
              jnp.zeros(w.shape, cfg.stat) if wanted[1] else None,
              jnp.zeros(b.shape, cfg.stat) if wanted[2] else None]
  grads.append(jnp.zeros((), cfg.stat) if want[6] else None)
  n_tokens = student[0].shape[0]
  losses, grads = _linear._chunked(n_tokens, cfg.tokens, token_chunk,
                                   _linear._varying(
                                       (jnp.zeros((n_tokens,), cfg.stat),
                                        tuple(grads)),
                                       *student[:2], *teacher[:2]))
  given = (*student, *teacher, beta)
  return losses, tuple(None if g is None else g.astype(x.dtype)
                       for g, x in zip(grads, given))


def _scalar_fn(cfg, per_token, divergence):
  """``sum(scale * loss)`` over the tokens, its tangent a dot with the
  gradients (see :func:`_single_pass`).

  As the cross entropy's scalar loss (``_linear._scalar``): reverse mode
  transposes the tangent into scaling the gradients, its residuals the
  gradients themselves, :math:`O(N D + V D)`; the matmuls are the forward
  pass's, two per side and two per gradient of hidden states and kernel.
  The value alone is ``per_token``'s.
  """

  def total_of(losses, scale):
    return jnp.sum(jnp.where(scale != 0, scale * losses, 0))

  @jax.custom_jvp
  def total(student, teacher, rows, beta, scale):
    return total_of(per_token(student, teacher, rows, beta), scale)

  def jvp(primals, tangents):
    student, teacher, rows, beta, scale = primals
    d_student, d_teacher, _, d_beta, _ = _linear._tangents(tangents)
    moving = (*d_student, *d_teacher, d_beta)
    want = tuple(t is not None for t in moving)
    if not any(want):
      out = total(*primals)
      return out, jnp.zeros_like(out)

    def passes(cfg, student, teacher, keep, beta, scale):
      return _single_pass(cfg, divergence, want, student, teacher, keep,
                          beta, scale)

    # Second order reads float32, as the cross entropy's (_linear._scalar).
    derivative = None
    if jnp.finfo(cfg.compute).bits < jnp.finfo(cfg.stat).bits:
      derivative = functools.partial(passes, cfg._replace(compute=cfg.stat))
    losses, grads = _linear._whole(functools.partial(passes, cfg),
                                   derivative)(student, teacher, rows.keep,
                                               beta, scale)
    tangent = sum(jnp.sum(g.astype(cfg.stat) * t.astype(cfg.stat))
                  for g, t in zip(grads, moving) if g is not None)
    return total_of(losses, scale), tangent

  total.defjvp(_jit.inlined(jvp), symbolic_zeros=True)
  return total


def _stat_tangents(cfg, tangents):
  """A side's ``(dh, dw, db)`` read in the statistics' dtype (None for 0)."""
  return tuple(None if x is None else x.astype(cfg.stat) for x in tangents)


def _scaled(x, temperature):
  """``x / T``: a ``-inf`` (an impossible class's bias) stays ``-inf`` with
  derivative 0 in ``T``; the result keeps ``x``'s dtype."""
  if x is None or (isinstance(temperature, float) and temperature == 1.0):
    return x
  impossible = x == -jnp.inf
  scaled = jnp.where(impossible, 0, x) / temperature
  return jnp.where(impossible, -jnp.inf, scaled).astype(x.dtype)


def _kernel(fn, name, kernel, hidden_name, hidden, classes=None):
  kernel = _checks.floating(fn, name, kernel)
  dim = hidden.shape[-1]
  want = f"({dim}, {'V' if classes is None else classes})"
  if (kernel.ndim != 2 or kernel.shape[0] != dim
      or (classes is not None and kernel.shape[1] != classes)):
    what = ("features by classes" if classes is None else
            "features by the student's classes")
    _checks.fail(fn, f"{name} must have shape {want} ({hidden_name} "
                 f"{what}; {hidden_name} has shape {hidden.shape}), got "
                 f"shape {kernel.shape}")
  return kernel


@_jit.jit("divergence", "reduction", "chunk_size", "dtype",
          beta=OPEN_UNIT, temperature=_jit.POSITIVE)
def linear_distillation_loss(
    student_hidden, student_kernel, teacher_hidden, teacher_kernel, *,
    divergence="forward_kl", beta=0.5, temperature=1.0, student_bias=None,
    teacher_bias=None, where=None, reduction="mean", chunk_size=None,
    dtype=None):
  r"""Divergence of a student's softmax from a teacher's, logits never held.

  With :math:`P = \mathrm{softmax}((h_t W_t + b_t) / T)` the teacher's
  distribution and :math:`Q = \mathrm{softmax}((h_s W_s + b_s) / T)` the
  student's, each token's loss is, for ``"forward_kl"``, ``"reverse_kl"``
  and ``"jsd"`` in turn,

  .. math::
    \mathrm{KL}(P \,\|\, Q) = \sum_j P_j (\log P_j - \log Q_j), \qquad
    \mathrm{KL}(Q \,\|\, P), \qquad
    \beta\, \mathrm{KL}(P \,\|\, M) + (1 - \beta)\, \mathrm{KL}(Q \,\|\, M)
    \ \text{ with } M = \beta P + (1 - \beta) Q,

  the last the generalized Jensen-Shannon divergence of GKD, with
  Liger-Kernel's convention for ``LigerFusedLinearJSD``: its ``jsd_beta``
  weighs the teacher, :math:`P` (:math:`\beta = 1/2` is the symmetric
  Jensen-Shannon divergence; Liger's limits :math:`\beta = 0` and 1, the
  two KL divergences, are the other two choices here). There is no
  :math:`T^2` factor. The teacher is a constant: no gradient reaches
  ``teacher_hidden``, ``teacher_kernel`` or ``teacher_bias``
  (``stop_gradient``), while ``temperature`` is differentiated through
  both sides.

  Neither [N, V] logits array is made: a first pass computes each token's
  log-sum-exp of both sides by chunks of tokens and classes, a second the
  divergence from them, each chunk's logits computed again; where chunks
  of whole rows fit (as the cross entropy's single pass), they hold their
  own log-sum-exps, and the first pass is left out (of the value always,
  of the derivatives where a [D, V] float32 kernel gradient is no larger
  than one of a chunk's arrays, since whole rows sum it over token
  chunks). Every autodiff mode applies (``jax.grad``, ``jax.jvp``,
  ``jax.jacfwd``, ``jax.hessian``,
  ...). For ``"mean"`` and ``"sum"``, where whole rows fit (128 tokens
  a chunk), the derivatives take one pass, as the cross entropy's: each chunk's logits
  once, then its gradients (a custom JVP whose tangent is a dot with them;
  reverse mode scales them, its residuals the gradients themselves). Else
  a custom JVP whose tangent is made in the second pass, linear in the
  inputs' tangents, each chunk under ``jax.checkpoint``; JAX transposes it
  for reverse mode, whose residuals are then the inputs and per-token
  statistics, :math:`O(N D + V D)`, and which computes each chunk's logits
  once more for the gradients. A class whose teacher probability is 0 adds
  0 to the forward KL (one whose student probability is 0, to the reverse
  KL), ``-inf`` biases included; ``-inf`` on both sides marks an impossible
  class. The temperature divides the hidden states and the biases before
  the matmuls (the same logits up to rounding).

  Args:
    student_hidden: floating [..., D] hidden states; the leading axes are
      the batch.
    student_kernel: floating [D, V] weights, a JAX dense kernel.
    teacher_hidden: floating [..., D'] hidden states of the teacher, with
      the batch shape of ``student_hidden`` (or broadcastable to it without
      enlarging it); D' may differ from D.
    teacher_kernel: floating [D', V] weights (the same V).
    divergence: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
    beta: :math:`\beta` in (0, 1), the teacher's weight in ``"jsd"``
      (unused by the KL divergences).
    temperature: :math:`T > 0`, dividing both sides' logits.
    student_bias, teacher_bias: optional floating [V] biases.
    where: optional boolean token mask, broadcastable to the batch shape
      without enlarging it; dropped tokens cost 0 with zero gradients.
    reduction: ``"mean"`` (over the kept tokens; 0 over none), ``"sum"``
      or ``"none"``.
    chunk_size: optional tokens per chunk (an int) or a pair
      ``(tokens, classes)``; by default chosen as for
      :func:`linear_softmax_cross_entropy` (see above for whole rows),
      with each of a chunk's arrays given an eighth of its budget, or 128
      tokens of whole rows where an eighth holds fewer and a half (both
      sides' logits alone) holds them; the KL divergences' derivatives
      take a half, or for ``"mean"`` and ``"sum"`` the whole budget (the
      cross entropy's chunks) where it holds 128 tokens of whole rows:
      each chunk reads both kernels, and a chunk of few tokens waits on
      that reading.
    dtype: optional dtype of the matmuls, as in
      :func:`linear_softmax_cross_entropy`: both sides' hidden states and
      kernels are read in it and the logits rounded to it, while the
      parameters keep their own dtype (a float32 ``student_kernel`` gets
      the float32 sum of the products as its gradient). By default, the
      inputs' common dtype.

  Returns:
    float32 loss (float64 for float64 input): the batch shape for
    ``"none"``, else a scalar. Statistics are float32 for half-precision
    inputs, whose matmuls read their own dtype; gradients come back in the
    inputs' dtypes.

  Example:
    >>> import jaxloss
    >>> h = jnp.array([[1.0, -0.5], [0.2, 0.7]])
    >>> w = jnp.array([[0.5, -1.0, 0.3], [1.5, 0.2, -0.4]])
    >>> h_t = jnp.array([[0.8, 0.1, 1.0], [-0.3, 0.4, 0.2]])
    >>> w_t = jnp.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, 2.0, 0.0]])
    >>> print(jaxloss.linear_distillation_loss(h, w, h_t, w_t,
    ...                                        reduction="none"))
    [1.1566 0.4013]
    >>> print(jaxloss.linear_distillation_loss(h, w, h_t, w_t,
    ...                                        divergence="jsd"))
    0.1837

  References:
    Hinton, Vinyals and Dean, `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015. Agarwal et al.,
    `On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes <https://arxiv.org/abs/2306.13649>`_, 2024 (GKD, the
    generalized JSD). Liger Kernel's ``LigerFusedLinearJSD``, which holds
    ``torch.nn.Linear``'s [V, D] weights: the kernels here are their
    transposes.
  """
  fn = "linear_distillation_loss"
  if not isinstance(divergence, str) or divergence not in DIVERGENCES:
    _checks.fail(fn, "divergence must be one of "
                 f"{', '.join(map(repr, DIVERGENCES))}, got {divergence!r}")
  _checks.reduction(fn, reduction)
  _linear._check_chunk_size(fn, chunk_size)
  if dtype is not None:
    dtype = _linear._computation_dtype(fn, dtype)

  h_s = _checks.floating(fn, "student_hidden", student_hidden)
  h_t = _checks.floating(fn, "teacher_hidden", teacher_hidden)
  _checks.at_least_rank(fn, "student_hidden", h_s, 1)
  _checks.at_least_rank(fn, "teacher_hidden", h_t, 1)
  w_s = _kernel(fn, "student_kernel", student_kernel, "student_hidden", h_s)
  width = w_s.shape[1]
  if width == 0:
    _checks.fail(fn, "student_kernel must have at least one class, got "
                 f"shape {w_s.shape}")
  w_t = _kernel(fn, "teacher_kernel", teacher_kernel, "teacher_hidden", h_t,
                width)
  batch_shape = h_s.shape[:-1]
  h_t = _checks.conform(fn, "teacher_hidden", h_t,
                        "the student's batch shape by the teacher's features",
                        batch_shape + h_t.shape[-1:])
  biases = []
  for name, b in (("student_bias", student_bias),
                  ("teacher_bias", teacher_bias)):
    if b is not None:
      b = _checks.floating(fn, name, b)
      _checks.shape_is(fn, name, b, (width,), "one per class")
    biases.append(b)
  b_s, b_t = biases
  keep = None
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    keep = _checks.conform(fn, "where", where, "the batch shape of "
                           "student_hidden", batch_shape)

  compute = jnp.result_type(h_s, w_s, h_t, w_t) if dtype is None else dtype
  stat = _reduction.stat_dtype(compute if dtype is not None else (
      jnp.result_type(compute, *(b for b in biases if b is not None))))
  n_tokens = math.prod(batch_shape)
  for name, h in (("student_hidden", h_s), ("teacher_hidden", h_t)):
    finite = jnp.isfinite(h)
    if keep is not None:
      finite = finite | jnp.broadcast_to(~keep[..., None], h.shape)
    if h.size:
      _checks.values(fn, name, finite, "must be finite (no NaN or inf) in "
                     "kept rows", h)

  # Chunks that span the vocabulary (whole rows, where enough fit, as the
  # cross entropy's single pass) need no pass of statistics. The value takes
  # them, and so does the single pass of a mean or a sum; the per-token
  # tangent only where its kernel gradient, summed over token chunks in a
  # [D, V] float32 accumulator, is no larger than one of a chunk's arrays:
  # at [256, 32768] (32 MiB on CPUs) whole rows took 1.09x the time of
  # class chunks, and more memory.
  budget = (_linear._CHUNK_BYTES if jax.default_backend() == "cpu"
            else _linear._CHUNK_BYTES_ACCELERATOR)

  def config_of(tokens, classes):
    return _linear._Config(tokens, classes, False, False, False, stat,
                           compute, True)

  def sizes(whole_rows, arrays):
    # (tokens, classes, single pass) with ``arrays`` a chunk, or, where
    # that holds fewer than _MIN_TOKENS tokens of whole rows, _MIN_TOKENS
    # where the half holds them.
    tokens, classes, single = _linear._chunk_sizes(
        chunk_size, n_tokens, width, compute, whole_rows, arrays=arrays)
    if (chunk_size is None and arrays > _LOGITS_ARRAYS
        and tokens < min(_MIN_TOKENS, n_tokens)):
      tokens, classes, single = _linear._chunk_sizes(
          None, n_tokens, width, compute, whole_rows, arrays=_LOGITS_ARRAYS)
      if classes == width:
        tokens = _linear._balanced(n_tokens, min(tokens, _MIN_TOKENS))
    return tokens, classes, single

  value_cfg = config_of(*sizes(True, _CHUNK_ARRAYS)[:2])
  arrays = _CHUNK_ARRAYS if divergence == "jsd" else _LOGITS_ARRAYS
  cfg = config_of(*_linear._chunk_sizes(
      chunk_size, n_tokens, width, compute,
      w_s.shape[0] * width * 4 <= budget // arrays, arrays=arrays)[:2])
  flat_keep = (jnp.ones(n_tokens, bool) if keep is None
               else keep.reshape(-1))

  def rows(h):
    # Dropped rows read 0: whatever they hold, every gradient stays finite.
    h = h.reshape(n_tokens, h.shape[-1])
    return h if keep is None else jnp.where(flat_keep[:, None], h, 0)

  stop = lax.stop_gradient
  student = (_scaled(rows(h_s), temperature), w_s,
             _scaled(b_s, temperature))
  teacher = (_scaled(rows(stop(h_t)), temperature), stop(w_t),
             _scaled(None if b_t is None else stop(b_t), temperature))
  rows = _linear._Rows(jnp.zeros(n_tokens, jnp.int32), flat_keep, None)
  beta = jnp.asarray(beta, stat) if divergence == "jsd" else None
  per_token = _divergence_fn(cfg, value_cfg, divergence)
  tokens, classes, single = sizes(reduction != "none", _CHUNK_ARRAYS
                                  if divergence == "jsd" else 1)
  if single and (chunk_size is not None
                 or tokens >= min(_MIN_TOKENS, n_tokens)):
    # The scalar loss's derivatives in one pass of whole rows.
    kept = flat_keep.astype(stat)
    scale = kept if reduction == "sum" else kept / jnp.maximum(
        jnp.sum(kept), 1)
    return _scalar_fn(config_of(tokens, classes), per_token, divergence)(
        student, teacher, rows, beta, scale)
  loss = per_token(student, teacher, rows, beta)
  loss = _reduction.mask(loss.reshape(batch_shape), keep)
  return _reduction.reduce(fn, loss, reduction, keep=keep)
