"""Fused linear layer and softmax cross entropy that never holds the logits."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _parallel
from jaxloss import _reduction
from jaxloss._rows import finish_rows

# Bytes of one chunk's logits. A chunk holds a few such arrays (logits, their
# gradient, its cast for the matmuls) at once. On an H200 (bfloat16, N=8192,
# D=4096, V=128256) chunks of 8192 x 4096 logits took 60.8 ms against 69.6 ms
# for 8192 x 1024, with 286 MiB of temporaries against 262 MiB
# (benchmarks/results/linear_cross_entropy-nvidia-h200.json).
_CHUNK_BYTES = 32 << 20
_CHUNK_BYTES_ACCELERATOR = 64 << 20
# Fewest tokens per chunk worth a single pass over the whole vocabulary: each
# token chunk reads and writes the [D, V] float32 kernel gradient once more.
# Cheap next to the matmuls on a CPU; on accelerators, whose memory is slow
# next to their matmul units, a chunk must be large for it to pay.
_MIN_SINGLE_PASS_TOKENS = {"cpu": 32}
_MIN_SINGLE_PASS_TOKENS_ACCELERATOR = 2048
_MIN_VOCAB_CHUNK = 256


class _Config(NamedTuple):
  """Everything static about one call."""
  tokens: int        # tokens per chunk
  classes: int       # classes per chunk
  smoothing: float
  z_loss: float
  softcap: float | None
  stat: jnp.dtype    # float32, or float64 for float64 input
  compute: jnp.dtype  # dtype the matmuls read
  full_support: bool  # no -inf logit is possible: every class in the support


def _chunked(total, size, body, carry):
  """``carry = body(start, length, carry)`` over ``[0, total)`` in chunks.

  Full chunks run under one ``lax.scan`` (one compiled body); a shorter last
  chunk runs once after it, so nothing is padded and no work is repeated.
  """
  full, rest = divmod(total, size)
  if full == 1:
    carry = body(0, size, carry)
  elif full:
    carry, _ = lax.scan(lambda c, i: (body(i * size, size, c), None), carry,
                        jnp.arange(full))
  if rest:
    carry = body(full * size, rest, carry)
  return carry


def _varying(tree, *refs):
  """``tree`` typed as device-varying over the mesh axes ``refs`` vary over.

  Inside ``jax.shard_map``, a scan's carry must vary over the same mesh axes
  as what its body makes of it, and zeros made here vary over none. Adding
  the sum of an empty slice of each ref (an exact 0, which XLA folds away)
  gives them the refs' type without naming an axis, in any JAX version;
  outside ``shard_map`` it changes nothing.
  """
  zero = sum(r.reshape(-1)[:0].sum() for r in refs if r is not None)
  return jax.tree.map(lambda a: a + zero.astype(a.dtype), tree)


def _take(x, start, length, axis=0):
  if isinstance(start, int) and start == 0 and length == x.shape[axis]:
    return x
  return lax.dynamic_slice_in_dim(x, start, length, axis)


def _put(x, update, start, axis=0):
  if isinstance(start, int) and start == 0 and update.shape == x.shape:
    return update
  return lax.dynamic_update_slice_in_dim(x, update, start, axis)


def _dot(a, b, contract, dtype):
  return lax.dot_general(a, b, (contract, ((), ())),
                         preferred_element_type=dtype)


def _add_outer(acc, h, dz, dtype):
  """``acc + h^T dz`` for a [D, V] ``acc``, by blocks of columns on CPUs.

  On CPUs the product of a whole chunk would be one more [D, V] temporary
  (the compiler does not fuse the sum into the matmul there): blocks bound
  it. GPU compilers add into the matmul's output, where column blocks would
  only make the matmuls narrower.
  """
  dim, width = acc.shape
  block = max(128, _CHUNK_BYTES // 2 // (jnp.dtype(dtype).itemsize
                                         * max(dim, 1)))
  if block >= width or jax.default_backend() != "cpu":
    return acc + _dot(h, dz, ((0,), (0,)), dtype)

  def columns(col, v, acc):
    part = _take(acc, col, v, 1) + _dot(h, _take(dz, col, v, 1),
                                        ((0,), (0,)), dtype)
    return _put(acc, part, col, 1)

  return _chunked(width, _balanced(width, block), columns, acc)


def _logits(cfg, h, w, b, keep):
  """Logits of a [n, D] token chunk against a [D, v] kernel chunk, in float32.

  The matmul accumulates in float32 and its result is rounded to the inputs'
  dtype, as the unfused ``hidden @ kernel`` is: for half-precision inputs the
  same logits, and half the memory traffic of float32 ones. Dropped rows
  read 0, as the unfused loss does, so whatever their hidden states hold
  their statistics are finite and their gradient exactly 0.
  """
  x = _dot(h, w, ((1,), (0,)), cfg.stat).astype(cfg.compute).astype(cfg.stat)
  if b is not None:
    x = x + jnp.broadcast_to(b[None, :], x.shape)
  if cfg.softcap is not None:
    x = cfg.softcap * jnp.tanh(x / cfg.softcap)
  return jnp.where(keep[:, None], x, 0)


def _class_terms(cfg, x, weight):
  """``w_j`` over the support (0 outside it) of a chunk, as [1, v] or [n, v]."""
  w = jnp.ones((1, x.shape[1]), x.dtype) if weight is None else weight[None]
  if cfg.full_support:
    return w
  return jnp.where(x > -jnp.inf, w, 0)


def _is_label(x, labels, start):
  cols = lax.broadcasted_iota(jnp.int32, x.shape, 1) + start
  return cols == labels[:, None]


class _Stats(NamedTuple):
  """Running per-token statistics over the classes seen so far."""
  max: jax.Array         # running max of the logits
  sum_exp: jax.Array     # sum of exp(x - max)
  label: jax.Array       # logit of the label
  weighted: jax.Array    # sum of w_j x_j over the support (smoothing only)


def _empty_stats(n, dtype):
  zeros = jnp.zeros((n,), dtype)
  return _Stats(jnp.full((n,), -jnp.inf, dtype), zeros, zeros, zeros)


def _update_stats(cfg, stats, x, labels, start, weight):
  """Online log-sum-exp: folds the logits of one chunk of classes in."""
  new_max = jnp.maximum(stats.max, jnp.max(x, axis=1))
  # An all -inf row so far has max -inf: shift by 0 instead (exp gives 0).
  shift = jnp.where(new_max == -jnp.inf, 0, new_max)
  sum_exp = (stats.sum_exp * jnp.exp(stats.max - shift)
             + jnp.sum(jnp.exp(x - shift[:, None]), axis=1))
  label = stats.label + jnp.sum(
      jnp.where(_is_label(x, labels, start), x, 0), axis=1)
  weighted = stats.weighted
  if cfg.smoothing:
    w = _class_terms(cfg, x, weight)
    weighted = weighted + jnp.sum(jnp.where(w != 0, w * x, 0), axis=1)
  return _Stats(new_max, sum_exp, label, weighted)


def _lse(stats):
  shift = jnp.where(stats.max == -jnp.inf, 0, stats.max)
  return shift + jnp.log(stats.sum_exp)


class _Rows(NamedTuple):
  """Per-token inputs: labels, kept rows and each row's label weight."""
  labels: jax.Array
  keep: jax.Array
  label_weight: jax.Array | None


def _row_loss(cfg, lse, stats, label_weight, support):
  r"""The loss of each row from its statistics, as the unfused loss has it."""
  loss = (1 - cfg.smoothing) * (lse - stats.label)
  if cfg.z_loss:
    loss = loss + cfg.z_loss * lse**2
  if label_weight is not None:
    loss = label_weight * loss
  if cfg.smoothing:
    total_weight, count = support
    loss = loss + cfg.smoothing * (
        (lse * total_weight - stats.weighted) / jnp.maximum(count, 1))
  return loss


def _coefficients(cfg, g, lse, label_weight, support):
  """Per-row ``(a, b, e)`` with ``dloss/dx_j = a p_j - b [j = y] - e w_j``."""
  w_y = 1 if label_weight is None else label_weight
  b = g * w_y * (1 - cfg.smoothing)
  a = b
  if cfg.z_loss:
    a = a + g * w_y * (2 * cfg.z_loss) * lse
  e = None
  if cfg.smoothing:
    total_weight, count = support
    e = g * (cfg.smoothing / jnp.maximum(count, 1))
    a = a + e * total_weight
  return a, b, e


def _logit_grad(cfg, x, lse, labels, start, coef, weight):
  """Gradient of the chunk's loss with respect to its pre-softcap logits."""
  a, b, e = coef
  p = jnp.exp(x - lse[:, None])
  d = a[:, None] * p - jnp.where(_is_label(x, labels, start), b[:, None], 0)
  if e is not None:
    d = d - e[:, None] * _class_terms(cfg, x, weight)
  if cfg.softcap is not None:
    d = d * (1 - jnp.square(x / cfg.softcap))
  return d


def _support(cfg, bias, weight, num_classes, dtype):
  """Total class weight and class count over the support, shared by all rows.

  Logits are ``-inf`` only where the bias is (a softcap maps ``-inf`` to a
  finite value), so the support of a kept row is the same for every row.
  """
  if cfg.full_support:
    total = (jnp.asarray(num_classes, dtype) if weight is None
             else jnp.sum(weight))
    return total, jnp.asarray(num_classes, dtype)
  s = bias > -jnp.inf
  w = jnp.ones_like(bias) if weight is None else weight
  return jnp.sum(jnp.where(s, w, 0)), jnp.sum(s, dtype=dtype)


def _statistics(cfg, h, kernel, bias, rows, weight):
  """Per-token ``(lse, stats)`` over token chunks, each over class chunks."""
  n_tokens, num_classes = h.shape[0], kernel.shape[1]

  def token_chunk(start, n, out):
    h_c = _take(h, start, n)
    labels, keep = _take(rows.labels, start, n), _take(rows.keep, start, n)

    def class_chunk(col, v, stats):
      x = _logits(cfg, h_c, _take(kernel, col, v, 1),
                  None if bias is None else _take(bias, col, v), keep)
      w = None if weight is None else _take(weight, col, v)
      return _update_stats(cfg, stats, x, labels, col, w)

    stats = _chunked(num_classes, cfg.classes, class_chunk,
                     _varying(_empty_stats(n, cfg.stat), h_c, kernel))
    return jax.tree.map(lambda o, s: _put(o, s, start), out, stats)

  stats = _chunked(n_tokens, cfg.tokens, token_chunk,
                   _varying(_empty_stats(n_tokens, cfg.stat), h, kernel))
  return _lse(stats), stats


def _gradients(cfg, h, kernel, bias, rows, weight, lse, coef):
  """Gradients with respect to hidden, kernel and bias, given the statistics.

  Classes outermost: each kernel chunk's gradient is summed over the tokens
  in float32 and written once; the hidden gradient is summed over class
  chunks in a float32 [N, D] buffer.
  """
  n_tokens, dim = h.shape
  num_classes = kernel.shape[1]

  def class_chunk(col, v, carry):
    dh, dkernel, dbias = carry
    w_c = _take(kernel, col, v, 1)
    b_c = None if bias is None else _take(bias, col, v)
    weight_c = None if weight is None else _take(weight, col, v)

    def token_chunk(start, n, inner):
      dh, dw_c, db_c = inner
      h_c = _take(h, start, n)
      labels, keep = _take(rows.labels, start, n), _take(rows.keep, start, n)
      x = _logits(cfg, h_c, w_c, b_c, keep)
      coef_c = jax.tree.map(lambda c: _take(c, start, n), coef)
      d = _logit_grad(cfg, x, _take(lse, start, n), labels, col, coef_c,
                      weight_c)
      dz = d.astype(cfg.compute)
      dh_c = _take(dh, start, n) + _dot(dz, w_c, ((1,), (1,)), cfg.stat)
      dh = _put(dh, dh_c, start)
      dw_c = _add_outer(dw_c, h_c, dz, cfg.stat)
      if db_c is not None:
        db_c = db_c + jnp.sum(d, axis=0)
      return dh, dw_c, db_c

    dw_c = jnp.zeros((dim, v), cfg.stat)
    db_c = None if bias is None else jnp.zeros((v,), cfg.stat)
    dh, dw_c, db_c = _chunked(n_tokens, cfg.tokens, token_chunk,
                              _varying((dh, dw_c, db_c), h, kernel))
    dkernel = _put(dkernel, dw_c.astype(kernel.dtype), col, 1)
    if dbias is not None:
      dbias = _put(dbias, db_c.astype(bias.dtype), col)
    return dh, dkernel, dbias

  carry = (jnp.zeros((n_tokens, dim), cfg.stat),
           jnp.zeros_like(kernel),
           None if bias is None else jnp.zeros_like(bias))
  dh, dkernel, dbias = _chunked(num_classes, cfg.classes, class_chunk,
                                _varying(carry, h, kernel))
  return dh, dkernel, dbias


def _single_pass(cfg, h, kernel, bias, rows, weight, support, scale):
  """Loss and gradients in one pass over token chunks, whole vocabulary each.

  ``scale`` is each row's share of the scalar loss (0 for dropped rows), so
  the gradients are final: three matmuls per chunk, the logits computed
  once. Returns ``(sum of scale * loss, (dh, dkernel, dbias))``.
  """
  n_tokens, dim = h.shape

  def token_chunk(start, n, carry):
    total, dh, dkernel, dbias = carry
    h_c = _take(h, start, n)
    labels, keep = _take(rows.labels, start, n), _take(rows.keep, start, n)
    w_y = (None if rows.label_weight is None
           else _take(rows.label_weight, start, n))
    x = _logits(cfg, h_c, kernel, bias, keep)
    stats = _update_stats(cfg, _empty_stats(n, cfg.stat), x, labels, 0,
                          weight)
    lse = _lse(stats)
    g = _take(scale, start, n)
    loss = _row_loss(cfg, lse, stats, w_y, support)
    total = total + jnp.sum(jnp.where(g != 0, g * loss, 0))
    coef = _coefficients(cfg, g, lse, w_y, support)
    d = _logit_grad(cfg, x, lse, labels, 0, coef, weight)
    dz = d.astype(cfg.compute)
    dh = _put(dh, _dot(dz, kernel, ((1,), (1,)), cfg.stat).astype(h.dtype),
              start)
    dkernel = _add_outer(dkernel, h_c, dz, cfg.stat)
    if dbias is not None:
      dbias = dbias + jnp.sum(d, axis=0)
    return total, dh, dkernel, dbias

  carry = (jnp.zeros((), cfg.stat), jnp.zeros((n_tokens, dim), h.dtype),
           jnp.zeros(kernel.shape, cfg.stat),
           None if bias is None else jnp.zeros(bias.shape, cfg.stat))
  total, dh, dkernel, dbias = _chunked(n_tokens, cfg.tokens, token_chunk,
                                       _varying(carry, h, kernel))
  return total, (dh, dkernel, dbias)


def _row_losses(cfg, h, kernel, bias, rows, weight, support):
  lse, stats = _statistics(cfg, h, kernel, bias, rows, weight)
  return _row_loss(cfg, lse, stats, rows.label_weight, support), lse


def _in_dtypes(grads, h, kernel, bias):
  dh, dkernel, dbias = grads
  return (dh.astype(h.dtype), dkernel.astype(kernel.dtype),
          None if bias is None else dbias.astype(bias.dtype))


def _per_token(cfg):
  """Per-token losses; the backward pass recomputes the logits by chunks."""

  @jax.custom_vjp
  def losses(h, kernel, bias, rows, weight, support):
    return _row_losses(cfg, h, kernel, bias, rows, weight, support)[0]

  def fwd(h, kernel, bias, rows, weight, support):
    loss, lse = _row_losses(cfg, h, kernel, bias, rows, weight, support)
    return loss, (h, kernel, bias, rows, weight, support, lse)

  def bwd(res, ct):
    h, kernel, bias, rows, weight, support, lse = res
    coef = _coefficients(cfg, ct.astype(cfg.stat), lse, rows.label_weight,
                         support)
    grads = _gradients(cfg, h, kernel, bias, rows, weight, lse, coef)
    return (*_in_dtypes(grads, h, kernel, bias), None, None, None)

  losses.defvjp(fwd, bwd)
  return losses


def _shard_statistics(cfg):
  """Per-token ``(lse, label, weighted)`` over this shard's classes.

  For the classes split over a mesh axis: the shards' statistics are
  combined outside, where JAX differentiates the collectives. The backward
  pass recomputes the logits by chunks, as :func:`_per_token` does, with
  ``dx_j = g_lse p_j + g_label [j = y] + g_weighted w_j`` and ``p`` the
  shard's own softmax.
  """

  @jax.custom_vjp
  def statistics(h, kernel, bias, rows, weight):
    lse, stats = _statistics(cfg, h, kernel, bias, rows, weight)
    return lse, stats.label, stats.weighted

  def fwd(h, kernel, bias, rows, weight):
    out = statistics(h, kernel, bias, rows, weight)
    return out, (h, kernel, bias, rows, weight, out[0])

  def bwd(res, ct):
    h, kernel, bias, rows, weight, lse = res
    ct_lse, ct_label, ct_weighted = ct
    # A shard with no possible class has lse -inf and every exp(x) 0.
    lse = jnp.where(jnp.isfinite(lse), lse, 0)
    coef = (ct_lse, -ct_label, -ct_weighted if cfg.smoothing else None)
    grads = _gradients(cfg, h, kernel, bias, rows, weight, lse, coef)
    return (*_in_dtypes(grads, h, kernel, bias), None, None)

  statistics.defvjp(fwd, bwd)
  return statistics


def _sharded_losses(cfg, axis_name, h, kernel, bias, rows, weight, support):
  """Per-token losses with the classes split over ``axis_name``."""
  # Inside shard_map, the custom VJP's inputs must vary over the same mesh
  # axes as its outputs: hidden over the classes' axis, the kernel over the
  # tokens'. JAX then sums their gradients over those axes.
  h_v = _varying(h, kernel, bias)
  kernel_v, bias_v = _varying((kernel, bias), h)
  lse, label, weighted = _shard_statistics(cfg)(h_v, kernel_v, bias_v, rows,
                                                weight)
  if cfg.smoothing:
    lse, label, weighted = _parallel.combine(axis_name, lse, label, weighted)
  else:
    lse, label = _parallel.combine(axis_name, lse, label)
  # The maximum is only a shift inside combine: _row_loss reads lse.
  stats = _Stats(lse, None, label, weighted)
  return _row_loss(cfg, lse, stats, rows.label_weight, support)


def _scalar(cfg):
  """A weighted sum of the losses whose gradients are made in the forward.

  The cotangent of each row is known up to one scalar factor, so the forward
  pass computes the gradients alongside the loss and the backward pass only
  scales them: three matmuls in all instead of four.
  """

  @jax.custom_vjp
  def total(h, kernel, bias, rows, weight, support, scale):
    loss = _row_losses(cfg, h, kernel, bias, rows, weight, support)[0]
    return jnp.sum(jnp.where(scale != 0, scale * loss, 0))

  def fwd(h, kernel, bias, rows, weight, support, scale):
    value, grads = _single_pass(cfg, h, kernel, bias, rows, weight, support,
                                scale)
    return value, _in_dtypes(grads, h, kernel, bias)

  def bwd(grads, ct):
    def times(g):
      return None if g is None else (ct * g).astype(g.dtype)
    return (*map(times, grads), None, None, None, None)

  total.defvjp(fwd, bwd)
  return total


def _chunk_sizes(chunk_size, n_tokens, num_classes, dtype, scalar,
                 platform=None):
  """``(tokens, classes)`` per chunk, and whether one pass does it all.

  ``dtype`` is the logits' (the inputs' dtype, before the float32 statistics).
  """
  if chunk_size is not None:
    if isinstance(chunk_size, int):
      tokens, classes = chunk_size, None
    else:
      tokens, classes = chunk_size
    tokens = max(1, min(tokens, n_tokens))
    classes = num_classes if classes is None else min(classes, num_classes)
    return tokens, classes, scalar and classes == num_classes
  platform = platform or jax.default_backend()
  budget = _CHUNK_BYTES if platform == "cpu" else _CHUNK_BYTES_ACCELERATOR
  elements = budget // jnp.dtype(dtype).itemsize
  min_tokens = _MIN_SINGLE_PASS_TOKENS.get(
      platform, _MIN_SINGLE_PASS_TOKENS_ACCELERATOR)
  whole_rows = elements // num_classes
  if whole_rows >= n_tokens or (scalar and whole_rows >= min_tokens):
    tokens = max(1, min(n_tokens, whole_rows))
    return _balanced(n_tokens, tokens), num_classes, scalar
  classes = max(_MIN_VOCAB_CHUNK, elements // max(n_tokens, 1))
  classes = min(num_classes, classes // 128 * 128 or classes)
  tokens = max(1, min(n_tokens, elements // classes))
  return _balanced(n_tokens, tokens), classes, False


def _balanced(total, size):
  """At most ``size``: the size of ``ceil(total / size)`` near-equal chunks.

  The last chunk is then nearly as long as the others, not a small leftover.
  """
  if size >= total:
    return max(total, 1)
  chunks = math.ceil(total / size)
  return math.ceil(total / chunks)


def _check_chunk_size(fn, chunk_size):
  def positive(c):
    return (isinstance(c, int) and not isinstance(c, bool) and c > 0)
  ok = (chunk_size is None or positive(chunk_size)
        or (isinstance(chunk_size, tuple) and len(chunk_size) == 2
            and positive(chunk_size[0])
            and (chunk_size[1] is None or positive(chunk_size[1]))))
  if not ok:
    _checks.fail(fn, "chunk_size must be None, a positive int (tokens per "
                 "chunk) or a pair (tokens, classes) of positive ints, got "
                 f"{chunk_size!r}", TypeError)


@_jit.jit("axis_name", "ignore_index", "label_smoothing", "z_loss",
          "logit_softcap", "reduction", "chunk_size")
def linear_softmax_cross_entropy(
    hidden, kernel, labels, *, bias=None, axis_name=None, ignore_index=None,
    weight=None, label_smoothing=0.0, z_loss=0.0, logit_softcap=None,
    where=None, reduction="none", chunk_size=None):
  r"""Softmax cross entropy of a linear layer's logits, never materialized.

  The value and gradients of
  :func:`softmax_cross_entropy_with_integer_labels` applied to

  .. math::
    x = h W + b, \qquad x \leftarrow c \tanh(x / c)
    \text{ with a softcap } c,

  computed over chunks of tokens (and of classes when a chunk of whole rows
  would be large), so that memory grows with the chunk, not with
  :math:`N \times V`. The forward pass keeps float32 statistics per token
  (log-sum-exp, label logit, what smoothing needs). For ``"mean"`` and
  ``"sum"`` the gradients are made in the forward pass from the same logits
  when a chunk can hold whole rows: three matmuls per step, as for the
  unfused loss. Per-token losses (``"none"``) recompute the logits of each
  chunk in the backward pass.

  Every option means what it means in
  :func:`softmax_cross_entropy_with_integer_labels`: torch's weighted mean,
  its smoothing weighting, the z-loss weighted by the label's class weight,
  NaN for a label outside ``[0, V)`` that is not ``ignore_index``, dropped
  rows with loss 0 and gradient exactly 0, a mean over nothing equal to 0.
  A ``-inf`` bias marks an impossible class (outside the smoothing support).
  Class weights are constants: no gradient flows to ``weight``. Under
  :func:`checked`, an out-of-range label, or a NaN or infinite hidden state
  in a kept row, raises instead.

  Args:
    hidden: floating [..., D] hidden states; the leading axes are the batch.
    kernel: floating [D, V] weights, laid out as a JAX dense kernel.
    labels: integer labels with the batch shape of ``hidden``.
    bias: optional floating [V] bias.
    axis_name: optional mesh axis name (or tuple of names) over which the
      classes are split, for a call inside ``jax.shard_map``
      (vocabulary-parallel, as Megatron-LM's output layer): ``kernel`` is
      then this device's [D, V/k] shard of the columns (device ``i`` of
      ``k`` holds classes ``[i V/k, (i + 1) V/k)``), ``bias`` and
      ``weight`` its [V/k] shards, ``hidden`` the same on every device
      along the axis, and ``labels`` global class ids in ``[0, V)``.
      Devices exchange per-token statistics only (a max and a sum of [N]
      arrays) and, in the backward pass, the [N, D] gradient of ``hidden``
      (a ``psum`` of each shard's contribution); the kernel's gradient stays
      local. Values and gradients equal the unsharded ones, and every
      device along the axis returns the same result (for ``"none"``, the
      same per-token losses). Tokens sharded over another mesh axis are
      reduced on each device only: for a mean over all of them, take
      ``"sum"`` and ``jax.lax.psum`` it (and the count) over that axis, or
      return ``"none"`` and reduce outside ``shard_map``. ``"mean"`` and
      ``"sum"`` then take two passes (statistics, then gradients) instead
      of one.
    ignore_index: optional label value whose rows are dropped.
    weight: optional [V] class weights.
    label_smoothing: :math:`\varepsilon` in [0, 1].
    z_loss: :math:`\zeta \geq 0`, the weight of :math:`\mathrm{lse}^2`.
    logit_softcap: optional :math:`c > 0`: logits become
      :math:`c \tanh(x / c)` before the softmax, as Gemma 2 does.
    where: optional boolean row mask with the batch shape of ``hidden``.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    chunk_size: optional tokens per chunk (an int, each chunk then spanning
      the whole vocabulary) or a pair ``(tokens, classes)``; by default
      chosen from the shapes so that a chunk's logits take about 32 MiB.

  Returns:
    float32 loss (float64 for float64 input): the batch shape for
    ``"none"``, else a scalar. Gradients come back in the dtypes of
    ``hidden``, ``kernel`` and ``bias``; the matmuls read the inputs' dtype
    and accumulate in float32. Reverse mode only (``jax.grad``, ``jax.vjp``):
    the function is a ``jax.custom_vjp``, so ``jax.jvp`` does not apply.

  Example:
    >>> import jaxloss
    >>> hidden = jnp.array([[1.0, -0.5], [0.2, 0.7], [-1.0, 0.3]])
    >>> kernel = jnp.array([[0.5, -1.0, 0.3], [1.5, 0.2, -0.4]])
    >>> labels = jnp.array([0, 2, 1])
    >>> print(jaxloss.linear_softmax_cross_entropy(hidden, kernel, labels))
    [1.2654 1.8097 0.4429]
    >>> print(jaxloss.linear_softmax_cross_entropy(
    ...     hidden, kernel, labels, reduction="mean"))
    1.1727

  References:
    Wijmans et al., `Cut Your Losses in Large-Vocabulary Language Models
    <https://arxiv.org/abs/2411.09009>`_, 2024 (Cut Cross-Entropy); Liger
    Kernel's ``LigerFusedLinearCrossEntropyLoss``. Both hold
    ``torch.nn.Linear``'s [V, D] weight; ``kernel`` here is its transpose.
    Gemma Team, `Gemma 2 <https://arxiv.org/abs/2408.00118>`_, 2024 (logit
    softcapping).
  """
  fn = "linear_softmax_cross_entropy"
  if axis_name is not None:
    shards, index = _parallel.shard(fn, axis_name)
  _checks.in_range(fn, "label_smoothing", label_smoothing, 0, 1)
  _checks.in_range(fn, "z_loss", z_loss, 0, float("inf"), high_open=True)
  _checks.optional_int(fn, "ignore_index", ignore_index)
  if logit_softcap is not None:
    _checks.in_range(fn, "logit_softcap", logit_softcap, 0, float("inf"),
                     low_open=True, high_open=True)
  _checks.reduction(fn, reduction)
  _check_chunk_size(fn, chunk_size)

  hidden = _checks.floating(fn, "hidden", hidden)
  kernel = _checks.floating(fn, "kernel", kernel)
  _checks.at_least_rank(fn, "hidden", hidden, 1)
  if kernel.ndim != 2 or kernel.shape[0] != hidden.shape[-1]:
    _checks.fail(fn, f"kernel must have shape ({hidden.shape[-1]}, V) "
                 "(hidden features by classes), got shape "
                 f"{kernel.shape}")
  dim, width = kernel.shape
  if width == 0:
    _checks.fail(fn, "kernel must have at least one class, got shape "
                 f"{kernel.shape}")
  # With axis_name, the kernel, bias and weight hold this shard's classes.
  num_classes = width if axis_name is None else shards * width
  per_class = "one per class" if axis_name is None else (
      "the local shard: one per class of the kernel's shard")
  batch_shape = hidden.shape[:-1]
  n_tokens = math.prod(batch_shape)
  dtype = jnp.result_type(hidden, kernel)
  if bias is not None:
    bias = _checks.floating(fn, "bias", bias)
    _checks.shape_is(fn, "bias", bias, (width,), per_class)
    dtype = jnp.result_type(dtype, bias)
  stat = _reduction.stat_dtype(dtype)

  labels = _checks.integer(fn, "labels", labels)
  if labels.shape != batch_shape:
    _checks.fail(fn, f"labels shape {labels.shape} does not match the batch "
                 f"shape {batch_shape} of hidden (hidden shape without the "
                 "feature axis)")
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    _checks.shape_is(fn, "weight", weight, (width,), per_class)
    weight = lax.stop_gradient(weight.astype(stat))
  keep = None
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    keep = _checks.broadcastable(fn, "where", where, batch_shape,
                                 "the batch shape of hidden")
  if ignore_index is not None:
    ignored = labels != ignore_index
    keep = ignored if keep is None else keep & ignored
  valid = (labels >= 0) & (labels < num_classes)
  if labels.size:
    _checks.values(
        fn, "labels", valid if keep is None else valid | ~keep,
        f"must be in [0, {num_classes})"
        + ("" if ignore_index is None else " or equal ignore_index"), labels)
    finite = jnp.isfinite(hidden)
    if keep is not None:
      finite = finite | jnp.broadcast_to(~keep[..., None], hidden.shape)
    _checks.values(fn, "hidden", finite, "must be finite (no NaN or inf) in "
                   "kept rows", hidden)
  safe = jnp.where(valid, labels, 0)
  if keep is not None:
    safe = jnp.where(keep, safe, 0)
  if axis_name is None:
    label_weight = None if weight is None else weight[safe]
  else:
    safe, in_shard = _parallel.local_labels(labels, valid, keep, index, width)
    label_weight = _parallel.label_weight(weight, safe, in_shard, axis_name)

  compute = jnp.result_type(hidden, kernel)
  h = hidden.reshape(n_tokens, dim).astype(compute)
  w = kernel.astype(compute)
  b = None if bias is None else bias.astype(stat)
  # Vocabulary-parallel, the per-row log-sum-exp must be global before any
  # gradient is formed: the two-pass path (statistics, then gradients).
  scalar = reduction != "none" and axis_name is None
  tokens, classes, single = _chunk_sizes(chunk_size, n_tokens, width, compute,
                                         scalar)
  cfg = _Config(tokens, classes, float(label_smoothing), float(z_loss),
                None if logit_softcap is None else float(logit_softcap),
                stat, compute, bias is None or logit_softcap is not None)
  rows = _Rows(safe.reshape(-1).astype(jnp.int32),
               (jnp.ones(n_tokens, bool) if keep is None
                else keep.reshape(-1)),
               None if label_weight is None else label_weight.reshape(-1))
  support = None
  if label_smoothing:
    support = _support(cfg, b, weight, width, stat)
    if axis_name is not None:
      support = lax.psum(support, axis_name)

  def finish(loss):
    return finish_rows(fn, loss, label_weight, keep, valid, reduction)

  if axis_name is not None:
    loss = _sharded_losses(cfg, axis_name, h, w, b, rows, weight, support)
    return finish(loss.reshape(batch_shape))
  if not single:
    loss = _per_token(cfg)(h, w, b, rows, weight, support)
    return finish(loss.reshape(batch_shape))
  # The share of each row in the scalar loss: the gradient of the reduction
  # itself, so weights, masks and the mean's denominator are torch's. Its
  # value at zero losses is 0, or NaN when a kept label is out of range.
  nan_or_zero, scale = jax.value_and_grad(finish)(jnp.zeros(batch_shape,
                                                            stat))
  total = _scalar(cfg)(h, w, b, rows, weight, support, scale.reshape(-1))
  return total + nan_or_zero
