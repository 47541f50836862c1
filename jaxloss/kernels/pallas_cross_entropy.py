"""The Pallas (Triton) kernel for the cross-entropy statistics.

One program per row walks the classes in blocks, keeping a running maximum
and a rescaled sum of exponentials (an online logsumexp, so a row may be far
longer than one block), and the sums label smoothing needs; it reads the
logits once and writes [R] statistics. The derivatives are XLA's
(:mod:`jaxloss.kernels.cross_entropy` transposes their tangent for the
gradient, one fused elementwise pass). On a CPU the kernel runs in Pallas
interpret mode, which is how the tests check it.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxloss import _jit

# On an H200, [8192, 128256] bfloat16 logits: the statistics in blocks of
# 4096 classes took 0.814 ms, in blocks of 2048 (4 warps) 0.772 ms
# (benchmarks/results/cross_entropy_sweep-nvidia-h200.json and
# cross_entropy-nvidia-h200.json, measured with the Pallas gradient kernel
# this module had then); per-lane sums were slower.
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
  # Traced with jit on (see jaxloss._jit.inlined): its loop over the
  # blocks stays one loop, not one copy of its body per block.
  kernel = _jit.staged(functools.partial(
      _statistics_kernel, block=block, smoothing=smoothing,
      has_weight=smoothing and weight is not None,
      has_class_mask=class_keep is not None, lane_sums=lane_sums))
  scalar = jax.ShapeDtypeStruct((), dtype)
  call = pl.pallas_call(
      kernel, out_shape=[scalar] * (4 if smoothing else 1),
      compiler_params=_params(block, num_warps, num_stages),
      interpret=interpret,
      name="cross_entropy_statistics")
  return tuple(jax.vmap(call, in_axes=tuple(in_axes))(*inputs))
