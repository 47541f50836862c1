"""Pallas (Triton) kernels for the cross-entropy statistics and gradient.

One program per row walks the classes in blocks: the forward keeps a running
maximum and a rescaled sum of exponentials (an online logsumexp, so a row may
be far longer than one block), and the backward streams the same blocks once
more to write the gradient. Each kernel reads the logits once; the gradient is
the only [N, C] array written. On a CPU the same kernels run in Pallas
interpret mode, which is how the tests check them.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# On an H200, [8192, 128256] bfloat16 logits: blocks of 4096 classes with 8
# warps took 1.91 ms for value and gradient, 8192 with 16 warps 2.07 ms; more
# pipeline stages changed nothing, per-lane sums were slower
# (benchmarks/results/cross_entropy_sweep-nvidia-h200.json, where the value
# alone took 0.814 ms in blocks of 4096). With the statistics in blocks of
# 2048 (4 warps) and the gradient in 4096, the value took 0.772 ms and value
# and gradient 1.89 ms (benchmarks/results/cross_entropy-nvidia-h200.json).
MAX_BLOCK = 4096
MAX_STATISTICS_BLOCK = 2048


def block_size(num_classes, block=None, most=None):
  """Classes per step: a power of two, at most ``most`` (:data:`MAX_BLOCK`)."""
  most = most or MAX_BLOCK
  return block or min(most, pl.next_power_of_2(num_classes))


def _params(block, num_warps, num_stages):
  num_warps = num_warps or max(1, min(16, block // 512))
  return plgpu.CompilerParams(num_warps=num_warps,
                              num_stages=num_stages or 1)


def _load(ref, cols, inside, other, dtype):
  return plgpu.load(ref.at[cols], mask=inside, other=other).astype(dtype)


def _statistics_kernel(*refs, block, smoothing, has_weight, has_class_mask,
                       lane_sums):
  refs = list(refs)
  x_ref = refs.pop(0)
  w_ref = refs.pop(0) if has_weight else None
  mask_ref = refs.pop(0) if has_class_mask else None
  lse_ref = refs.pop(0)
  dtype = lse_ref.dtype
  n = x_ref.shape[0]

  def step(i, carry):
    cols = i * block + jnp.arange(block)
    inside = cols < n
    x = _load(x_ref, cols, inside, 0, dtype)
    live = inside
    if mask_ref is not None:
      live = live & (_load(mask_ref, cols, inside, 0, jnp.int32) != 0)
    xl = jnp.where(live, x, -jnp.inf)
    m, s = carry[:2]
    if lane_sums:
      # Each lane keeps its own maximum and sum: no reduction across lanes
      # inside the loop, and one exp per logit, exp(lower - higher) of the
      # lane's maximum and the new logit, which either scales the sum (a
      # new maximum) or is added to it. 0, not nan, while both are -inf.
      m_new = jnp.maximum(m, xl)
      gap = jnp.where(m_new == -jnp.inf, -jnp.inf, jnp.minimum(m, xl) - m_new)
      e = jnp.exp(gap)
      s = jnp.where(xl > m, s * e + 1, s + e)
    else:
      m_new = jnp.maximum(m, jnp.max(xl))
      # As jax.nn.logsumexp: shift by the maximum only where it is finite,
      # so an all -inf prefix gives exp(-inf) = 0 rather than nan.
      shift = jnp.where(jnp.isfinite(m_new), m_new, 0)
      s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(xl - shift))
    if not smoothing:
      return m_new, s
    sx, wsum, count = carry[2:]
    support = live & (x > -jnp.inf)
    w = _load(w_ref, cols, inside, 0, dtype) if has_weight else 1
    sx = sx + jnp.where(support, w * x, 0)
    if has_weight:
      wsum = wsum + jnp.where(support, w, 0)
    count = count + support.astype(dtype)
    return m_new, s, sx, wsum, count

  shape = (block,) if lane_sums else ()
  carry = (jnp.full(shape, -jnp.inf, dtype), jnp.zeros(shape, dtype))
  if smoothing:
    lanes = jnp.zeros((block,), dtype)
    carry += (lanes, lanes, lanes)
  carry = lax.fori_loop(0, pl.cdiv(n, block), step, carry)
  m, s = carry[:2]
  if lane_sums:
    lane_m = m
    m = jnp.max(lane_m)
    s = jnp.sum(s * jnp.exp(lane_m - jnp.where(jnp.isfinite(m), m, 0)))
  lse_ref[...] = jnp.log(s) + jnp.where(jnp.isfinite(m), m, 0)
  if smoothing:
    sx_ref, wsum_ref, count_ref = refs
    sx, wsum, count = carry[2:]
    count = jnp.sum(count)
    sx_ref[...] = jnp.sum(sx)
    wsum_ref[...] = jnp.sum(wsum) if has_weight else count
    count_ref[...] = count


def statistics(x, class_keep, weight, *, smoothing, dtype, interpret,
               block=None, num_warps=None, num_stages=None, lane_sums=False):
  """Per-row logsumexp of [R, C] logits, and the smoothing sums.

  Args:
    x: [R, C] logits, any floating dtype.
    class_keep: optional [R, C] boolean: classes outside it are left out.
    weight: optional [C] class weights (used by the smoothing sums only).
    smoothing: also return the sums over the support (classes kept and not
      ``-inf``): of ``w * x``, of ``w``, and the class count.
    dtype: the statistics' dtype (float32, or float64).
    interpret: run in Pallas interpret mode (any backend) instead of Triton.
    block, num_warps, num_stages: Triton launch configuration (None: chosen
      from the class count).
    lane_sums: keep a running maximum and sum of exponentials per lane,
      combined once at the end, instead of reducing every block.

  Returns:
    ``(lse,)``, or ``(lse, sx, wsum, count)``, each [R] of ``dtype``.
  """
  num_classes = x.shape[-1]
  block = block_size(num_classes, block,
                     min(MAX_STATISTICS_BLOCK, MAX_BLOCK))
  inputs, in_axes = [x], [0]
  if smoothing and weight is not None:
    inputs.append(weight)
    in_axes.append(None)
  if class_keep is not None:
    inputs.append(class_keep.astype(jnp.int8))
    in_axes.append(0)
  kernel = functools.partial(
      _statistics_kernel, block=block, smoothing=smoothing,
      has_weight=smoothing and weight is not None,
      has_class_mask=class_keep is not None, lane_sums=lane_sums)
  scalar = jax.ShapeDtypeStruct((), dtype)
  call = pl.pallas_call(
      kernel, out_shape=[scalar] * (4 if smoothing else 1),
      compiler_params=_params(block, num_warps, num_stages),
      interpret=interpret,
      name="cross_entropy_statistics")
  return tuple(jax.vmap(call, in_axes=tuple(in_axes))(*inputs))


def _gradient_kernel(*refs, block, has_smoothing, has_weight, has_class_mask):
  refs = list(refs)
  x_ref, label_ref, keep_ref, lse_ref, ct_lse_ref, ct_label_ref = refs[:6]
  refs = refs[6:]
  ct_sx_ref = refs.pop(0) if has_smoothing else None
  w_ref = refs.pop(0) if has_weight else None
  mask_ref = refs.pop(0) if has_class_mask else None
  dx_ref, = refs
  dtype = lse_ref.dtype
  n = x_ref.shape[0]
  label = label_ref[...]
  keep = keep_ref[...] != 0
  lse = lse_ref[...]
  ct_lse = ct_lse_ref[...]
  ct_label = ct_label_ref[...]

  @pl.loop(0, pl.cdiv(n, block))
  def _(i):
    cols = i * block + jnp.arange(block)
    inside = cols < n
    x = _load(x_ref, cols, inside, 0, dtype)
    p = jnp.exp(x - lse)
    live = None
    if mask_ref is not None:
      live = _load(mask_ref, cols, inside, 0, jnp.int32) != 0
      p = jnp.where(live, p, 0)
    dx = ct_lse * p + jnp.where(cols == label, ct_label, 0)
    if ct_sx_ref is not None:
      support = x > -jnp.inf
      if live is not None:
        support = support & live
      c = ct_sx_ref[...]
      if w_ref is not None:
        c = c * _load(w_ref, cols, inside, 0, dtype)
      dx = dx + jnp.where(support, c, 0)
    dx = jnp.where(keep, dx, 0)
    plgpu.store(dx_ref.at[cols], dx.astype(dx_ref.dtype), mask=inside)


def gradient(x, labels, keep, class_keep, weight, lse, ct_lse, ct_label,
             ct_sx, *, interpret, block=None, num_warps=None,
             num_stages=None):
  """``ct_lse * softmax(x) + ct_label * onehot + ct_sx * w * support``, per row.

  Args:
    x: [R, C] logits.
    labels: [R] int32 class indices in ``[0, C)``.
    keep: optional [R] boolean; dropped rows get an exact zero gradient.
    class_keep: optional [R, C] boolean mask of the softmax's classes.
    weight: optional [C] class weights of the smoothing sum.
    lse: [R] logsumexp from :func:`statistics`.
    ct_lse, ct_label, ct_sx: [R] cotangents of the logsumexp, of the label
      logit and (or None) of the smoothing sum of ``w * x``.
    interpret: run in Pallas interpret mode instead of Triton.
    block, num_warps, num_stages: Triton launch configuration.

  Returns:
    The [R, C] gradient in ``x``'s dtype.
  """
  rows, num_classes = x.shape
  block = block_size(num_classes, block)
  if keep is None:
    keep = jnp.ones((rows,), jnp.int32)
  inputs = [x, labels, keep.astype(jnp.int32), lse, ct_lse, ct_label]
  in_axes = [0] * 6
  if ct_sx is not None:
    inputs.append(ct_sx)
    in_axes.append(0)
    if weight is not None:
      inputs.append(weight)
      in_axes.append(None)
  if class_keep is not None:
    inputs.append(class_keep.astype(jnp.int8))
    in_axes.append(0)
  kernel = functools.partial(
      _gradient_kernel, block=block, has_smoothing=ct_sx is not None,
      has_weight=ct_sx is not None and weight is not None,
      has_class_mask=class_keep is not None)
  call = pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct((num_classes,), x.dtype),
      compiler_params=_params(block, num_warps, num_stages),
      interpret=interpret,
      name="cross_entropy_gradient")
  return jax.vmap(call, in_axes=tuple(in_axes))(*inputs)
