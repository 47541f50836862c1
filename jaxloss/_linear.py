"""Fused linear layer and softmax cross entropy that never holds the logits."""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _parallel
from jaxloss import _reduction
from jaxloss import _rows
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
  """Everything static about one call: the numbers themselves are traced."""
  tokens: int        # tokens per chunk
  classes: int       # classes per chunk
  smoothing: bool    # whether label smoothing is on (a nonzero value)
  z_loss: bool
  softcap: bool
  stat: jnp.dtype    # float32, or float64 for float64 input
  compute: jnp.dtype  # dtype the matmuls read
  full_support: bool  # no -inf logit is possible: every class in the support
  probabilities: bool = False  # [N, V] probability labels, not class ids


class _Hypers(NamedTuple):
  """The hyperparameters' values, arrays in the statistics' dtype (or None
  where ``_Config`` leaves the term out)."""
  smoothing: jax.Array | None
  z_loss: jax.Array | None
  softcap: jax.Array | None


def _chunked(total, size, body, carry, remat=False):
  """``carry = body(start, length, carry)`` over ``[0, total)`` in chunks.

  Full chunks run under one ``lax.scan`` (one compiled body); a shorter last
  chunk runs once after it, so nothing is padded and no work is repeated.
  With ``remat``, each chunk is a ``jax.checkpoint``: differentiated, it
  keeps its inputs (whole arrays and a chunk index) instead of the chunk's
  logits, which its transpose computes again.
  """
  def chunk(start, length):
    fn = functools.partial(body, start, length)
    if not remat:
      return fn
    # A call outside the scan could be merged with the forward pass's own
    # logits (the same dot), which would keep them: prevent_cse.
    return jax.checkpoint(fn, prevent_cse=isinstance(start, int))

  full, rest = divmod(total, size)
  if full == 1:
    carry = chunk(0, size)(carry)
  elif full:
    def step(c, i):
      return chunk(i * size, size)(c), None
    # A loop staged as a loop (see _jit.inlined), its body inlined.
    carry, _ = _jit.staged(lax.scan)(_jit.inlined(step), carry,
                                     jnp.arange(full))
  if rest:
    carry = chunk(full * size, rest)(carry)
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
  if x is None:
    return None
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
  """Pre-softcap logits of a [n, D] token chunk against a [D, v] kernel
  chunk, in float32.

  The matmul reads ``cfg.compute``, accumulates in float32 and its result is
  rounded to ``cfg.compute``, as the unfused ``hidden @ kernel`` is: for
  half-precision inputs the same logits, and half the memory traffic of
  float32 ones. Dropped rows read 0, as the unfused loss does, so whatever
  their hidden states hold their statistics are finite and their gradient
  exactly 0.
  """
  z = _dot(h.astype(cfg.compute), w.astype(cfg.compute), ((1,), (0,)),
           cfg.stat).astype(cfg.compute).astype(cfg.stat)
  if b is not None:
    z = z + jnp.broadcast_to(b.astype(cfg.stat)[None, :], z.shape)
  return jnp.where(keep[:, None], z, 0)


def _cap(cfg, hp, z):
  """The logits after the softcap ``c tanh(z / c)``, if there is one."""
  if not cfg.softcap:
    return z
  return hp.softcap * jnp.tanh(z / hp.softcap)


def _cap_slope(hp, x):
  """``dx/dz`` of the softcap at its output ``x``."""
  return 1 - jnp.square(x / hp.softcap)


def _cap_dc(hp, z, x):
  r"""``dx/dc`` of :math:`x = c \tanh(z / c)`: ``tanh(u) - u (1 - tanh(u)^2)``
  with ``u = z / c``, whose limit at ``z = -inf`` (a ``-inf`` bias) is -1."""
  u = jnp.where(jnp.isfinite(z), z / hp.softcap, 0)
  return x / hp.softcap - u * _cap_slope(hp, x)


def _class_terms(cfg, x, weight):
  """``w_j`` over the support (0 outside it) of a chunk, as [1, v] or [n, v]."""
  w = jnp.ones((1, x.shape[1]), x.dtype) if weight is None else weight[None]
  if cfg.full_support:
    return w
  return jnp.where(x > -jnp.inf, w, 0)


def _is_label(x, labels, start):
  cols = lax.broadcasted_iota(jnp.int32, x.shape, 1) + start
  return cols == labels[:, None]


def _label_logit(x, labels, start):
  """Each row's logit of its label where the chunk holds it (columns from
  ``start``), else 0.

  A gather, not a sum of the label's column picked by a select: XLA:CPU
  wrote that [n, v] select out before summing it, a chunk-sized temporary
  (with the logits' own, twice the plain loss's).
  """
  col = labels - start
  inside = (col >= 0) & (col < x.shape[1])
  return jnp.where(
      inside, _rows.take_label(x, jnp.clip(col, 0, x.shape[1] - 1)), 0)


def _block(labels, start, n, col, v):
  """The labels of tokens ``[start, start + n)``: class ids as they are,
  probabilities restricted to classes ``[col, col + v)``, sliced at once
  (never a token chunk's whole [n, V] row first)."""
  if labels is None or labels.ndim == 1:
    return _take(labels, start, n)
  if (isinstance(start, int) and isinstance(col, int) and start == 0
      and col == 0 and labels.shape == (n, v)):
    return labels
  return lax.dynamic_slice(labels, (start, col), (n, v))


def _mass(cfg, y, keep, weight):
  """``c_j = w_j y_j`` of a chunk of probability labels, 0 in dropped rows
  (whatever they hold), in the statistics' dtype."""
  c = y.astype(cfg.stat)
  if weight is not None:
    c = c * weight[None]
  return jnp.where(keep[:, None], c, 0)


def _live(c, x):
  """Classes whose label has a derivative: all but a ``-inf`` logit with
  no label mass (an impossible class, which costs 0 whatever its label)."""
  return (c != 0) | (x > -jnp.inf)


class _Stats(NamedTuple):
  """Running per-token statistics over the classes seen so far."""
  max: jax.Array         # running max of the logits
  sum_exp: jax.Array     # sum of exp(x - max)
  label: jax.Array       # logit of the label; probabilities: sum_j c_j x_j
  weighted: jax.Array    # sum of w_j x_j over the support (smoothing only)
  mass: jax.Array | None = None  # probabilities: sum_j c_j, c_j = w_j y_j


def _empty_stats(cfg, n):
  zeros = jnp.zeros((n,), cfg.stat)
  return _Stats(jnp.full((n,), -jnp.inf, cfg.stat), zeros, zeros, zeros,
                zeros if cfg.probabilities else None)


def _update_stats(cfg, stats, x, labels, start, weight, keep):
  """Online log-sum-exp: folds the logits of one chunk of classes in.

  ``labels`` are the chunk's: [n] class ids (``start`` the chunk's first
  class) or [n, v] probabilities.
  """
  new_max = jnp.maximum(stats.max, jnp.max(x, axis=1))
  # An all -inf row so far has max -inf: shift by 0 instead (exp gives 0).
  shift = jnp.where(new_max == -jnp.inf, 0, new_max)
  sum_exp = (stats.sum_exp * jnp.exp(stats.max - shift)
             + jnp.sum(jnp.exp(x - shift[:, None]), axis=1))
  mass = stats.mass
  if cfg.probabilities:
    c = _mass(cfg, labels, keep, weight)
    # 0, not 0 * -inf, where no mass sits on an impossible class; -inf
    # (an infinite loss) where some does.
    label = stats.label + jnp.sum(jnp.where(c != 0, c * x, 0), axis=1)
    mass = mass + jnp.sum(c, axis=1)
  else:
    label = stats.label + _label_logit(x, labels, start)
  weighted = stats.weighted
  if cfg.smoothing:
    w = _class_terms(cfg, x, weight)
    weighted = weighted + jnp.sum(jnp.where(w != 0, w * x, 0), axis=1)
  return _Stats(new_max, sum_exp, label, weighted, mass)


def _lse(stats):
  shift = jnp.where(stats.max == -jnp.inf, 0, stats.max)
  return shift + jnp.log(stats.sum_exp)


class _Rows(NamedTuple):
  """Per-token inputs: labels ([N] class ids or [N, V] probabilities), kept
  rows and each row's label weight (class ids only)."""
  labels: jax.Array
  keep: jax.Array
  label_weight: jax.Array | None


def _row_loss(cfg, hp, lse, label, weighted, label_weight, support,
              mass=None):
  r"""The loss of each row from its statistics, as the unfused loss has it.

  Probabilities: :math:`(1 - \varepsilon)(m\,\mathrm{lse} - \sum_j c_j x_j)
  + \zeta\, m\, \mathrm{lse}^2` with :math:`m = \sum_j c_j`, which for a
  one-hot label is the class id's loss.
  """
  if cfg.probabilities:
    loss = mass * lse - label
    if cfg.smoothing:
      loss = (1 - hp.smoothing) * loss
    if cfg.z_loss:
      loss = loss + hp.z_loss * mass * lse**2
  else:
    loss = lse - label
    if cfg.smoothing:
      loss = (1 - hp.smoothing) * loss
    if cfg.z_loss:
      loss = loss + hp.z_loss * lse**2
    if label_weight is not None:
      loss = label_weight * loss
  if cfg.smoothing:
    total_weight, count = support
    loss = loss + hp.smoothing * (
        (lse * total_weight - weighted) / jnp.maximum(count, 1))
  return loss


def _coefficients(cfg, hp, g, lse, label_weight, support, mass=None):
  """Per-row ``(a, b, e)`` with ``dloss/dx_j = a p_j - b [j = y] - e w_j``,
  or for probabilities ``a p_j - b c_j - e w_j``."""
  g_y = g if label_weight is None else g * label_weight
  b = g_y * (1 - hp.smoothing) if cfg.smoothing else g_y
  a = b
  if cfg.probabilities:
    g_y = g * mass
    a = g_y * (1 - hp.smoothing) if cfg.smoothing else g_y
  if cfg.z_loss:
    a = a + g_y * (2 * hp.z_loss) * lse
  e = None
  if cfg.smoothing:
    total_weight, count = support
    e = g * (hp.smoothing / jnp.maximum(count, 1))
    a = a + e * total_weight
  return a, b, e


def _logit_grad(cfg, x, lse, labels, start, coef, weight, keep):
  """Gradient of the chunk's loss with respect to its (post-softcap) logits."""
  a, b, e = coef
  p = jnp.exp(x - lse[:, None])
  if cfg.probabilities:
    d = a[:, None] * p - b[:, None] * _mass(cfg, labels, keep, weight)
  else:
    d = a[:, None] * p - jnp.where(_is_label(x, labels, start), b[:, None],
                                   0)
  if e is not None:
    d = d - e[:, None] * _class_terms(cfg, x, weight)
  return d


def _label_grad(cfg, hp, g, x, lse, labels, keep, weight):
  r"""Gradient of the chunk's loss with respect to its probability labels:
  :math:`g\, w_j ((1 - \varepsilon)(\mathrm{lse} - x_j) + \zeta\,
  \mathrm{lse}^2)`, zero labels included, 0 on an impossible class without
  mass and in dropped rows."""
  c = _mass(cfg, labels, keep, weight)
  live = _live(c, x) & keep[:, None]
  d = lse[:, None] - jnp.where(live, x, 0)
  if cfg.smoothing:
    d = (1 - hp.smoothing) * d
  if cfg.z_loss:
    d = d + (hp.z_loss * lse**2)[:, None]
  d = g[:, None] * d
  if weight is not None:
    d = d * weight[None]
  return jnp.where(live, d, 0)


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
  w = jnp.ones(bias.shape, dtype) if weight is None else weight
  return jnp.sum(jnp.where(s, w, 0)), jnp.sum(s, dtype=dtype)


def _statistics(cfg, hp, h, kernel, bias, rows, weight):
  """Per-token ``(lse, stats)`` over token chunks, each over class chunks."""
  n_tokens, num_classes = h.shape[0], kernel.shape[1]

  def token_chunk(start, n, out):
    h_c = _take(h, start, n).astype(cfg.compute)
    keep = _take(rows.keep, start, n)

    def class_chunk(col, v, stats):
      z = _logits(cfg, h_c, _take(kernel, col, v, 1), _take(bias, col, v),
                  keep)
      return _update_stats(cfg, stats, _cap(cfg, hp, z),
                           _block(rows.labels, start, n, col, v), col,
                           _take(weight, col, v), keep)

    stats = _chunked(num_classes, cfg.classes, class_chunk,
                     _varying(_empty_stats(cfg, n), h_c, kernel))
    return jax.tree.map(lambda o, s: _put(o, s, start), out, stats)

  stats = _chunked(n_tokens, cfg.tokens, token_chunk,
                   _varying(_empty_stats(cfg, n_tokens), h, kernel))
  return _lse(stats), stats


class _Want(NamedTuple):
  """Which gradients a pass makes: of hidden, kernel, bias, softcap and
  probability labels."""
  hidden: bool
  kernel: bool
  bias: bool
  softcap: bool
  labels: bool = False


def _chunk_grads(cfg, hp, z, x, d, want):
  """From ``d = dloss/dx``: ``(dloss/dz, dloss/dc summed)`` for the chunk."""
  dcap = None
  if cfg.softcap:
    if want.softcap:
      dcap = jnp.sum(d * _cap_dc(hp, z, x))
    d = d * _cap_slope(hp, x)
  return d, dcap


def _put_block(x, update, start, col):
  if x.ndim == 1:
    return _put(x, update, start)
  if (isinstance(start, int) and isinstance(col, int) and start == 0
      and col == 0 and update.shape == x.shape):
    return update
  return lax.dynamic_update_slice(x, update, (start, col))


def _gradients(cfg, hp, h, kernel, bias, rows, weight, lse, coef, want):
  """Gradients with respect to hidden, kernel, bias, the probability labels
  and the softcap, given the statistics; ``None`` for what ``want`` leaves
  out.

  Classes outermost: each kernel chunk's gradient is summed over the tokens
  in float32 and written once; the hidden gradient is summed over class
  chunks in a float32 [N, D] buffer.
  """
  n_tokens, dim = h.shape
  num_classes = kernel.shape[1]
  scale = coef[-1]
  coef = coef[:-1]

  def class_chunk(col, v, carry):
    dh, dkernel, dbias, dlabels, dcap = carry
    w_c = _take(kernel, col, v, 1).astype(cfg.compute)
    b_c, weight_c = _take(bias, col, v), _take(weight, col, v)

    def token_chunk(start, n, inner):
      dh, dw_c, db_c, dlabels, dcap = inner
      h_c = _take(h, start, n).astype(cfg.compute)
      labels = _block(rows.labels, start, n, col, v)
      keep = _take(rows.keep, start, n)
      z = _logits(cfg, h_c, w_c, b_c, keep)
      x = _cap(cfg, hp, z)
      lse_c = _take(lse, start, n)
      coef_c = jax.tree.map(lambda c: _take(c, start, n), coef)
      if want.labels:
        dy = _label_grad(cfg, hp, _take(scale, start, n), x, lse_c, labels,
                         keep, weight_c)
        dlabels = _put_block(dlabels, dy.astype(dlabels.dtype), start, col)
      d = _logit_grad(cfg, x, lse_c, labels, col, coef_c, weight_c, keep)
      d, dcap_c = _chunk_grads(cfg, hp, z, x, d, want)
      dz = d.astype(cfg.compute)
      if want.hidden:
        dh = _put(dh, _take(dh, start, n)
                  + _dot(dz, w_c, ((1,), (1,)), cfg.stat), start)
      if want.kernel:
        dw_c = _add_outer(dw_c, h_c, dz, cfg.stat)
      if want.bias:
        db_c = db_c + jnp.sum(d, axis=0)
      if want.softcap:
        dcap = dcap + dcap_c
      return dh, dw_c, db_c, dlabels, dcap

    dw_c = jnp.zeros((dim, v), cfg.stat) if want.kernel else None
    db_c = jnp.zeros((v,), cfg.stat) if want.bias else None
    dh, dw_c, db_c, dlabels, dcap = _chunked(
        n_tokens, cfg.tokens, token_chunk,
        _varying((dh, dw_c, db_c, dlabels, dcap), h, kernel))
    if want.kernel:
      dkernel = _put(dkernel, dw_c.astype(kernel.dtype), col, 1)
    if want.bias:
      dbias = _put(dbias, db_c.astype(bias.dtype), col)
    return dh, dkernel, dbias, dlabels, dcap

  carry = (jnp.zeros((n_tokens, dim), cfg.stat) if want.hidden else None,
           jnp.zeros_like(kernel) if want.kernel else None,
           jnp.zeros_like(bias) if want.bias else None,
           jnp.zeros_like(rows.labels) if want.labels else None,
           jnp.zeros((), cfg.stat) if want.softcap else None)
  dh, dkernel, dbias, dlabels, dcap = _chunked(
      num_classes, cfg.classes, class_chunk, _varying(carry, h, kernel))
  return _in_dtypes((dh, dkernel, dbias), h, kernel, bias), dlabels, dcap


class _Totals(NamedTuple):
  """Per-token statistics of the whole vocabulary: what a row's loss reads."""
  lse: jax.Array
  label: jax.Array
  weighted: jax.Array
  mass: jax.Array | None


def _single_pass(cfg, hp, h, kernel, bias, rows, weight, support, scale,
                 want):
  """Statistics and gradients in one pass over token chunks, whole
  vocabulary each.

  ``scale`` is each row's share of the scalar loss (0 for dropped rows), so
  the gradients are final: three matmuls per chunk, the logits computed
  once. Returns ``(totals, grads, dloss/dlabels, dloss/dc)`` with the
  per-token statistics and ``None`` for what ``want`` leaves out.
  """
  n_tokens, dim = h.shape
  w = kernel.astype(cfg.compute)

  def token_chunk(start, n, carry):
    stats, dh, dkernel, dbias, dlabels, dcap = carry
    h_c = _take(h, start, n).astype(cfg.compute)
    labels, keep = _take(rows.labels, start, n), _take(rows.keep, start, n)
    z = _logits(cfg, h_c, w, bias, keep)
    x = _cap(cfg, hp, z)
    s = _update_stats(cfg, _empty_stats(cfg, n), x, labels, 0, weight, keep)
    lse = _lse(s)
    stats = jax.tree.map(lambda o, a: _put(o, a, start), stats,
                         _Totals(lse, s.label, s.weighted, s.mass))
    if any(want):
      g = _take(scale, start, n)
      coef = _coefficients(cfg, hp, g, lse, _take(rows.label_weight, start,
                                                  n), support, s.mass)
      if want.labels:
        dy = _label_grad(cfg, hp, g, x, lse, labels, keep, weight)
        dlabels = _put(dlabels, dy.astype(dlabels.dtype), start)
      d = _logit_grad(cfg, x, lse, labels, 0, coef, weight, keep)
      d, dcap_c = _chunk_grads(cfg, hp, z, x, d, want)
      dz = d.astype(cfg.compute)
      if want.hidden:
        dh = _put(dh, _dot(dz, w, ((1,), (1,)), cfg.stat).astype(h.dtype),
                  start)
      if want.kernel:
        dkernel = _add_outer(dkernel, h_c, dz, cfg.stat)
      if want.bias:
        dbias = dbias + jnp.sum(d, axis=0)
      if want.softcap:
        dcap = dcap + dcap_c
    return stats, dh, dkernel, dbias, dlabels, dcap

  zeros = jnp.zeros((n_tokens,), cfg.stat)
  carry = (_Totals(zeros, zeros, zeros,
                   zeros if cfg.probabilities else None),
           jnp.zeros((n_tokens, dim), h.dtype) if want.hidden else None,
           jnp.zeros(kernel.shape, cfg.stat) if want.kernel else None,
           jnp.zeros(bias.shape, cfg.stat) if want.bias else None,
           jnp.zeros_like(rows.labels) if want.labels else None,
           jnp.zeros((), cfg.stat) if want.softcap else None)
  stats, dh, dkernel, dbias, dlabels, dcap = _chunked(
      n_tokens, cfg.tokens, token_chunk, _varying(carry, h, kernel))
  return (stats, _in_dtypes((dh, dkernel, dbias), h, kernel, bias), dlabels,
          dcap)


def _in_dtypes(grads, h, kernel, bias):
  return tuple(None if g is None else g.astype(x.dtype)
               for g, x in zip(grads, (h, kernel, bias)))


def _whole(fn, derivative=None):
  """``fn`` as one unit under partial evaluation, its JVP that of
  ``derivative`` (by default ``fn`` itself).

  Inside a JVP rule under reverse mode, JAX partially evaluates even the
  work on known values, and its scan rule then hoists the work of an inner
  loop that does not depend on the outer loop out of it, stacked: the
  kernel's class chunks and each chunk's label comparison, an [n, V] array.
  A custom JVP on known inputs is evaluated as it is.
  """
  whole = jax.custom_jvp(fn)

  def jvp(primals, tangents):
    if derivative is None:
      return jax.jvp(fn, primals, tangents)
    return fn(*primals), jax.jvp(derivative, primals, tangents)[1]

  whole.defjvp(_jit.inlined(jvp))
  return whole


def _zero(t):
  return t is None or isinstance(t, SymbolicZero)


def _tangents(tangents):
  """Symbolic zeros as None."""
  return jax.tree.map(lambda t: None if _zero(t) else t, tangents,
                      is_leaf=_zero)


def _wanted(cfg, dh, dkernel, dbias, dcap, dlabels=None):
  return _Want(dh is not None, dkernel is not None, dbias is not None,
               cfg.softcap and dcap is not None,
               cfg.probabilities and dlabels is not None)


def _logits_tangent(cfg, hp, z, x, h, w, tangents, keep):
  """The tangent of a chunk's (post-softcap) logits, linear in ``tangents``
  ``(dh, dw, db, dc)``, each None for a zero; None if they all are."""
  dh, dw, db, dc = tangents
  t = None

  def add(t, u):
    return u if t is None else t + u

  if dh is not None:
    t = add(t, _dot(dh, w, ((1,), (0,)), cfg.stat))
  if dw is not None:
    t = add(t, _dot(h, dw, ((1,), (0,)), cfg.stat))
  if db is not None:
    t = add(t, jnp.broadcast_to(db[None, :], z.shape))
  if cfg.softcap:
    if t is not None:
      t = t * _cap_slope(hp, x)
    if dc is not None:
      t = add(t, dc * _cap_dc(hp, z, x))
  return None if t is None else jnp.where(keep[:, None], t, 0)


def _statistics_tangent(cfg, hp, h, kernel, bias, rows, weight, lse,
                        tangents):
  """Tangents of ``(lse, label, mass, weighted)`` (``mass`` for
  probabilities, ``weighted`` with smoothing): ``sum_j p_j dx_j``, ``dx_y``
  (probabilities: ``sum_j c_j dx_j + sum_j w_j x_j dy_j``, and ``sum_j w_j
  dy_j``, both over the classes whose label has a derivative) and ``sum_j
  w_j dx_j`` over the support, with the logits computed again by chunks.

  A linear function of the tangents whose transpose (reverse mode) is
  ``_gradients`` without the [N, V] residual: every chunk is a
  ``jax.checkpoint``, so the transpose computes its logits again from the
  inputs and ``lse``. The tangents are read in float32 (the transpose then
  sums the gradients of hidden and of each kernel chunk in float32, as
  ``_gradients`` does).
  """
  dh, dkernel, dbias, dcap, dlabels = tangents
  n_tokens, num_classes = h.shape[0], kernel.shape[1]
  if dh is not None:
    dh = dh.astype(cfg.stat)
  if dbias is not None:
    dbias = dbias.astype(cfg.stat)
  moving = any(t is not None for t in (dh, dkernel, dbias, dcap))

  def class_chunk(col, v, out):
    w_c = _take(kernel, col, v, 1).astype(cfg.compute)
    b_c, weight_c = _take(bias, col, v), _take(weight, col, v)
    dw_c = _take(dkernel, col, v, 1)
    dw_c = None if dw_c is None else dw_c.astype(cfg.stat)
    db_c = _take(dbias, col, v)

    def token_chunk(start, n, out):
      h_c = _take(h, start, n).astype(cfg.compute)
      labels = _block(rows.labels, start, n, col, v)
      keep = _take(rows.keep, start, n)
      z = _logits(cfg, h_c, w_c, b_c, keep)
      x = _cap(cfg, hp, z)
      zeros = jnp.zeros((n,), cfg.stat)
      lse_t = label_t = mass_t = weighted_t = zeros
      if moving:
        t = _logits_tangent(cfg, hp, z, x, h_c, w_c,
                            (_take(dh, start, n), dw_c, db_c, dcap), keep)
        p = jnp.exp(x - _take(lse, start, n)[:, None])
        lse_t = jnp.sum(p * t, axis=1)
        if cfg.probabilities:
          label_t = jnp.sum(_mass(cfg, labels, keep, weight_c) * t, axis=1)
        else:
          label_t = jnp.sum(jnp.where(_is_label(x, labels, col), t, 0),
                            axis=1)
        if cfg.smoothing:
          weighted_t = jnp.sum(_class_terms(cfg, x, weight_c) * t, axis=1)
      if cfg.probabilities and dlabels is not None:
        c = _mass(cfg, labels, keep, weight_c)
        dc = _mass(cfg, _block(dlabels, start, n, col, v), keep, weight_c)
        dc = jnp.where(_live(c, x), dc, 0)
        # A label with mass on an impossible class (an infinite loss) reads
        # its logit as 0 here: a finite tangent.
        label_t = label_t + jnp.sum(dc * jnp.where(x > -jnp.inf, x, 0),
                                    axis=1)
        mass_t = jnp.sum(dc, axis=1)
      parts = (lse_t, label_t)
      if cfg.probabilities:
        parts += (mass_t,)
      if cfg.smoothing:
        parts += (weighted_t,)
      return tuple(_put(o, _take(o, start, n) + s, start)
                   for o, s in zip(out, parts))

    return _chunked(n_tokens, cfg.tokens, token_chunk, out, remat=True)

  out = tuple(jnp.zeros((n_tokens,), cfg.stat)
              for _ in range(2 + cfg.probabilities + cfg.smoothing))
  refs = (h, kernel, dh, dkernel, dbias, dcap, dlabels)
  return _chunked(num_classes, cfg.classes, class_chunk,
                  _varying(out, *refs), remat=True)


def _statistics_fn(cfg):
  """Per-token ``(lse, label, mass, weighted)`` of the logits (``mass`` for
  probability labels, ``weighted`` with smoothing), their tangents made by
  chunks from those statistics.

  The per-token and vocabulary-parallel paths: the losses (and, split over
  a mesh axis, the shards' combination) are formed outside, where JAX
  differentiates them, label smoothing and the z-loss included.
  """

  @jax.custom_jvp
  def statistics(h, kernel, bias, rows, weight, softcap):
    hp = _Hypers(None, None, softcap)
    lse, stats = _statistics(cfg, hp, h, kernel, bias, rows, weight)
    return ((lse, stats.label)
            + ((stats.mass,) if cfg.probabilities else ())
            + ((stats.weighted,) if cfg.smoothing else ()))

  def jvp(primals, tangents):
    h, kernel, bias, rows, weight, softcap = primals
    dh, dkernel, dbias, drows, _, dcap = _tangents(tangents)
    dlabels = None if drows is None else drows.labels
    hp = _Hypers(None, None, softcap)
    out = statistics(h, kernel, bias, rows, weight, softcap)
    if not any(_wanted(cfg, dh, dkernel, dbias, dcap, dlabels)):
      return out, tuple(jnp.zeros_like(o) for o in out)
    # A shard with no possible class has lse -inf and every exp(x) 0.
    lse = jnp.where(jnp.isfinite(out[0]), out[0], 0)
    return out, _statistics_tangent(cfg, hp, h, kernel, bias, rows, weight,
                                    lse, (dh, dkernel, dbias, dcap, dlabels))

  statistics.defjvp(_jit.inlined(jvp), symbolic_zeros=True)
  return statistics


def _losses_from(cfg, hp, stats, rows, support):
  lse, label, *rest = stats
  mass = rest.pop(0) if cfg.probabilities else None
  weighted = rest[0] if cfg.smoothing else None
  return _row_loss(cfg, hp, lse, label, weighted, rows.label_weight,
                   support, mass)


def _sharded_losses(cfg, hp, axis_name, h, kernel, bias, rows, weight,
                    support):
  """Per-token losses with the classes split over ``axis_name``."""
  # Inside shard_map, the custom JVP's inputs must vary over the same mesh
  # axes as its outputs: hidden over the classes' axis, the kernel over the
  # tokens'. JAX then sums their gradients over those axes.
  h_v = _varying(h, kernel, bias)
  kernel_v, bias_v = _varying((kernel, bias), h)
  stats = _statistics_fn(cfg)(h_v, kernel_v, bias_v, rows, weight,
                              hp.softcap)
  # The maximum is only a shift inside combine: _row_loss reads lse.
  return _losses_from(cfg, hp, _parallel.combine(axis_name, *stats), rows,
                      support)


def _per_token_losses(cfg, hp, h, kernel, bias, rows, weight, support):
  stats = _statistics_fn(cfg)(h, kernel, bias, rows, weight, hp.softcap)
  return _losses_from(cfg, hp, stats, rows, support)


def _scalar(cfg, single):
  """A weighted sum of the losses, its tangent a dot with the gradients.

  The cotangent of each row is known up to one scalar factor, so the JVP
  computes the gradients alongside the loss (in ``single`` pass, or a pass
  of statistics and one of gradients) and its tangent is
  ``<G_h, dh> + <G_W, dW> + <G_b, db> + ...``. Reverse mode transposes that
  into scaling the gradients: its residuals are the gradients themselves,
  and the matmuls are those of the forward pass (three in one pass). The
  gradient of probability labels, an [N, V] array, is made only when they
  move (a symbolic zero otherwise).
  """

  def total_of(hp, totals, rows, support, scale):
    loss = _row_loss(cfg, hp, totals.lse, totals.label, totals.weighted,
                     rows.label_weight, support, totals.mass)
    return jnp.sum(jnp.where(scale != 0, scale * loss, 0))

  @jax.custom_jvp
  def total(h, kernel, bias, rows, weight, support, scale, hp):
    lse, s = _statistics(cfg, hp, h, kernel, bias, rows, weight)
    return total_of(hp, _Totals(lse, s.label, s.weighted, s.mass), rows,
                    support, scale)

  def passes(cfg, want, h, kernel, bias, rows, weight, support, scale, hp):
    if single:
      return _single_pass(cfg, hp, h, kernel, bias, rows, weight, support,
                          scale, want)
    lse, s = _statistics(cfg, hp, h, kernel, bias, rows, weight)
    grads, dlabels, dcap = (None, None, None), None, None
    if any(want):
      coef = _coefficients(cfg, hp, scale, lse, rows.label_weight, support,
                           s.mass)
      grads, dlabels, dcap = _gradients(cfg, hp, h, kernel, bias, rows,
                                        weight, lse, (*coef, scale), want)
    return _Totals(lse, s.label, s.weighted, s.mass), grads, dlabels, dcap

  def jvp(primals, tangents):
    h, kernel, bias, rows, weight, support, scale, hp = primals
    dh, dkernel, dbias, drows, _, _, _, dhp = _tangents(tangents)
    dlabels = None if drows is None else drows.labels
    want = _wanted(cfg, dh, dkernel, dbias, dhp.softcap, dlabels)
    # Their own derivatives (second order) read float32: the same numbers
    # up to the half-precision rounding, whose derivative is 1 either way,
    # and no half-precision matmul of tangents (XLA:CPU leaves one of the
    # Hessian's bf16 x bf16 -> f32 dots to a runtime that lacks the type).
    derivative = None
    if jnp.finfo(cfg.compute).bits < jnp.finfo(cfg.stat).bits:
      derivative = functools.partial(passes, cfg._replace(compute=cfg.stat),
                                     want)
    totals, grads, dy, dcap = _whole(functools.partial(passes, cfg, want),
                                     derivative)(*primals)
    # Smoothing and the z-loss enter through the statistics alone.
    moving = {k: v for k, v in dhp._asdict().items()
              if v is not None and k != "softcap"}

    def of_hypers(moved):
      return total_of(hp._replace(**moved), totals, rows, support, scale)

    value, tangent = jax.jvp(of_hypers,
                             ({k: getattr(hp, k) for k in moving},),
                             (moving,))
    terms = [tangent] if moving else []
    for g, t in zip((*grads, dy, dcap),
                    (dh, dkernel, dbias, dlabels, dhp.softcap)):
      if g is not None:
        terms.append(jnp.sum(g.astype(cfg.stat) * t.astype(cfg.stat)))
    return value, sum(terms) if terms else jnp.zeros_like(value)

  total.defjvp(_jit.inlined(jvp), symbolic_zeros=True)
  return total


def _chunk_sizes(chunk_size, n_tokens, num_classes, dtype, scalar,
                 platform=None, arrays=1):
  """``(tokens, classes)`` per chunk, and whether one pass does it all.

  ``dtype`` is the logits' (the inputs' dtype, before the float32 statistics).
  ``arrays`` divides the budget: a loss that holds that many times as many
  chunk-sized arrays at once as the cross entropy.
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
  elements = budget // arrays // jnp.dtype(dtype).itemsize
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


def _computation_dtype(fn, dtype):
  try:
    given = jnp.dtype(dtype)
  except TypeError:
    given = None
  if given is None or not jnp.issubdtype(given, jnp.floating):
    _checks.fail(fn, "dtype must be a floating dtype or None, got "
                 f"{getattr(given, 'name', dtype)!r}", TypeError)
  return given


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


@_jit.jit("axis_name", "ignore_index", "reduction", "chunk_size", "dtype",
          label_smoothing=_jit.UNIT, z_loss=_jit.NON_NEGATIVE,
          logit_softcap=_jit.POSITIVE._replace(optional=True))
def linear_softmax_cross_entropy(
    hidden, kernel, labels, *, bias=None, axis_name=None, ignore_index=None,
    weight=None, label_smoothing=0.0, z_loss=0.0, logit_softcap=None,
    where=None, reduction="none", chunk_size=None, dtype=None):
  r"""Softmax cross entropy of a linear layer's logits, never materialized.

  The value and gradients of
  :func:`softmax_cross_entropy_with_integer_labels` (integer labels) or
  :func:`softmax_cross_entropy` (floating [..., V] probability labels)
  applied to

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

  Every autodiff mode applies (``jax.grad``, ``jax.jvp``, ``jax.jacfwd``,
  ``jax.hessian``, ...): a custom JVP whose tangent is linear in the
  inputs' tangents, which JAX transposes for reverse mode. For ``"mean"``
  and ``"sum"`` the tangent is a dot with the gradients (``jax.jvp`` then
  costs the gradient pass); otherwise it is made by chunks from the
  per-token statistics, each chunk's logits computed again, so that reverse
  mode keeps no [N, V] residual. The hyperparameters are ordinary
  arguments: traced, differentiated, a new value compiling nothing new; an
  exact zero (or ``logit_softcap=None``) leaves its term out.

  Every option means what it means in
  :func:`softmax_cross_entropy_with_integer_labels`: torch's weighted mean,
  its smoothing weighting, the z-loss weighted by the label's class weight,
  NaN for a label outside ``[0, V)`` that is not ``ignore_index``, dropped
  rows with loss 0 and gradient exactly 0, a mean over nothing equal to 0.
  A ``-inf`` bias marks an impossible class (outside the smoothing support).
  Class weights are constants: no gradient flows to ``weight``. Under
  :func:`checked`, an out-of-range label, or a NaN or infinite hidden state
  in a kept row, raises instead.

  Probability labels :math:`y` are read chunk by chunk beside the logits
  (no [N, V] temporary for the gradients of ``hidden``, ``kernel`` and
  ``bias``), with :func:`softmax_cross_entropy`'s meaning: the loss
  :math:`(1 - \varepsilon)(m\,\mathrm{lse} - \sum_j w_j y_j x_j)` plus the
  smoothing term, :math:`m = \sum_j w_j y_j`, rows that need not sum to 1,
  ``"mean"`` over the kept rows whatever the weights, and the z-loss
  :math:`\zeta\, m\, \mathrm{lse}^2` (for a one-hot row, the class id's).
  The gradient by a label is :math:`w_j ((1 - \varepsilon)(\mathrm{lse} -
  x_j) + \zeta\, \mathrm{lse}^2)`, zero labels included, and 0 on a ``-inf``
  logit the label gives no mass (whose row costs ``inf`` if it does).
  ``ignore_index`` applies to class ids only.

  Args:
    hidden: floating [..., D] hidden states; the leading axes are the batch.
    kernel: floating [D, V] weights, laid out as a JAX dense kernel.
    labels: integer labels with the batch shape of ``hidden`` (without its
      feature axis), or broadcastable to it without enlarging it; or
      floating probabilities [..., V] of the logits' shape, broadcastable
      along the batch (with ``axis_name``, this device's [..., V/k] shard of
      the classes, as ``kernel``'s).
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
    label_smoothing: :math:`\varepsilon` in [0, 1], a number or a scalar
      array (traced values are range-checked under :func:`checked`).
    z_loss: :math:`\zeta \geq 0`, the weight of :math:`\mathrm{lse}^2`.
    logit_softcap: optional :math:`c > 0`: logits become
      :math:`c \tanh(x / c)` before the softmax, as Gemma 2 does. None
      (no softcap) is structure; a value is traced like the others.
    where: optional boolean row mask with the batch shape of ``hidden``.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    chunk_size: optional tokens per chunk (an int, each chunk then spanning
      the whole vocabulary) or a pair ``(tokens, classes)``; by default
      chosen from the shapes so that a chunk's logits take about 32 MiB.
    dtype: optional dtype of the matmuls (the computation dtype, as in
      ``flax.linen.Dense``): ``hidden`` and ``kernel`` are read in it, the
      logits rounded to it, while the parameters keep their own dtype. With
      a float32 ``kernel`` and ``dtype=jnp.bfloat16``, the matmuls run in
      bfloat16 and the kernel's gradient is the float32 sum of their
      products, never rounded to bfloat16. The bias is added and the
      statistics are kept in float32. By default, the inputs' common dtype.

  Returns:
    float32 loss (float64 for float64 input): the batch shape for
    ``"none"``, else a scalar. Gradients come back in the dtypes of
    ``hidden``, ``kernel`` and ``bias``; the matmuls read the inputs' dtype
    (or ``dtype``) and accumulate in float32. Derivatives of
    every order and mode, with respect to ``hidden``, ``kernel``, ``bias``,
    probability labels and the three hyperparameters (not ``weight``, a
    constant).

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
    >>> probabilities = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5],
    ...                            [0.0, 1.0, 0.0]])
    >>> print(jaxloss.linear_softmax_cross_entropy(hidden, kernel,
    ...                                            probabilities))
    [1.2654 1.7297 0.4429]

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
  _checks.optional_int(fn, "ignore_index", ignore_index)
  _checks.reduction(fn, reduction)
  _check_chunk_size(fn, chunk_size)
  if dtype is not None:
    dtype = _computation_dtype(fn, dtype)

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
  compute = jnp.result_type(hidden, kernel) if dtype is None else dtype
  stat = compute
  if bias is not None:
    bias = _checks.floating(fn, "bias", bias)
    _checks.shape_is(fn, "bias", bias, (width,), per_class)
    if dtype is None:
      stat = jnp.result_type(stat, bias)
  # Float32 statistics (float64 for a float64 computation or input).
  stat = _reduction.stat_dtype(stat)

  labels = _checks.numeric(fn, "labels", labels)
  probabilities = jnp.issubdtype(labels.dtype, jnp.floating)
  if probabilities:
    if ignore_index is not None:
      _checks.fail(fn, "ignore_index applies to integer labels (class ids), "
                   f"got ignore_index={ignore_index} with probability labels "
                   f"of dtype {labels.dtype}")
    # The logits' shape, which the labels may broadcast to along the batch.
    logits_shape = batch_shape + (width,)
    try:
      labels = _checks.conform(
          fn, "labels", labels, "the logits (hidden @ kernel)", logits_shape,
          class_axes=(len(batch_shape),))
    except ValueError as e:
      raise ValueError(f"{e}; floating labels are probabilities, class ids "
                       "need an integer dtype") from None
  else:
    labels = _checks.integer(fn, "labels", labels)
    # The batch shape, which the labels may broadcast to, never enlarge.
    labels = _checks.conform(fn, "labels", labels,
                             "hidden's batch shape", batch_shape)
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    _checks.shape_is(fn, "weight", weight, (width,), per_class)
    weight = lax.stop_gradient(weight.astype(stat))
  keep = None
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    keep = _checks.broadcastable(fn, "where", where, batch_shape,
                                 "the batch shape of hidden")
  if probabilities:
    valid = jnp.ones(batch_shape, bool)
  else:
    keep = _rows.both(keep, _checks.not_ignored(labels, ignore_index))
    valid = (labels >= 0) & (labels < num_classes)
  if labels.size:
    if probabilities:
      in_unit = (labels >= 0) & (labels <= 1)
      if keep is not None:
        in_unit = in_unit | ~keep[..., None]
      _checks.values(fn, "labels", in_unit, "must be in [0, 1]", labels)
    else:
      _checks.values(
          fn, "labels", valid if keep is None else valid | ~keep,
          f"must be in [0, {num_classes})"
          + ("" if ignore_index is None else " or equal ignore_index"),
          labels)
  if n_tokens:
    finite = jnp.isfinite(hidden)
    if keep is not None:
      finite = finite | jnp.broadcast_to(~keep[..., None], hidden.shape)
    _checks.values(fn, "hidden", finite, "must be finite (no NaN or inf) in "
                   "kept rows", hidden)
  label_weight = None
  if probabilities:
    safe = labels.reshape(n_tokens, width)
  else:
    safe = jnp.where(valid, labels, 0)
    if keep is not None:
      safe = jnp.where(keep, safe, 0)
    if axis_name is None:
      label_weight = None if weight is None else weight[safe]
    else:
      safe, in_shard = _parallel.local_labels(labels, valid, keep, index,
                                              width)
      label_weight = _parallel.label_weight(weight, safe, in_shard,
                                            axis_name)
    safe = safe.reshape(-1).astype(jnp.int32)

  h = hidden.reshape(n_tokens, dim)
  if keep is not None:
    # Dropped rows read 0 here too: their logits' gradient is 0, but a NaN
    # or inf in their hidden state would still reach the kernel's (0 * NaN).
    h = jnp.where(keep.reshape(-1, 1), h, 0)
  # Vocabulary-parallel, the per-row log-sum-exp must be global before any
  # gradient is formed: the two-pass path (statistics, then gradients).
  scalar = reduction != "none" and axis_name is None
  tokens, classes, single = _chunk_sizes(chunk_size, n_tokens, width, compute,
                                         scalar)
  smoothing = not _jit.is_zero(label_smoothing)
  cfg = _Config(tokens, classes, smoothing, not _jit.is_zero(z_loss),
                logit_softcap is not None, stat, compute,
                bias is None or logit_softcap is not None, probabilities)
  hp = _Hypers(*(None if not on else jnp.asarray(v, stat) for on, v in (
      (cfg.smoothing, label_smoothing), (cfg.z_loss, z_loss),
      (cfg.softcap, logit_softcap))))
  rows = _Rows(safe,
               (jnp.ones(n_tokens, bool) if keep is None
                else keep.reshape(-1)),
               None if label_weight is None else label_weight.reshape(-1))
  support = None
  if smoothing:
    support = _support(cfg, bias, weight, width, stat)
    if axis_name is not None:
      support = lax.psum(support, axis_name)

  def finish(loss):
    return finish_rows(fn, loss, label_weight, keep, valid, reduction)

  if axis_name is not None:
    loss = _sharded_losses(cfg, hp, axis_name, h, kernel, bias, rows, weight,
                           support)
    return finish(loss.reshape(batch_shape))
  if not scalar:
    loss = _per_token_losses(cfg, hp, h, kernel, bias, rows, weight, support)
    return finish(loss.reshape(batch_shape))
  # The share of each row in the scalar loss: the gradient of the reduction
  # itself, so weights, masks and the mean's denominator are torch's. Its
  # value at zero losses is 0, or NaN when a kept label is out of range.
  nan_or_zero, scale = jax.value_and_grad(finish)(jnp.zeros(batch_shape,
                                                            stat))
  total = _scalar(cfg, single)(h, kernel, bias, rows, weight, support,
                               lax.stop_gradient(scale.reshape(-1)), hp)
  return total + nan_or_zero
