r"""Vocabulary-parallel cross entropy: the classes split over a mesh axis.

Inside ``jax.shard_map``, each of the :math:`k` devices along the mesh axis
``axis_name`` holds a contiguous shard of the classes: device :math:`i` holds
classes :math:`[i V/k, (i + 1) V/k)`. Each device reduces its shard to
per-row statistics (maximum, sum of exponentials, the label's logit when the
label is in the shard, what smoothing needs) and the devices combine them
with one ``pmax`` and one ``psum`` of [N] arrays: communication grows with
the rows, never with the classes, and no device ever holds another's logits
(Megatron-LM's vocab-parallel cross entropy).

Each shard's statistics are the unsharded path's
(:func:`jaxloss.kernels.cross_entropy.row_statistics`, with the label logit
read as 0 where the label lies in another shard), whose derivatives keep
only [N] residuals next to the logits and write the local logits' gradient
in one pass, :math:`\partial x_j = g_\mathrm{lse}\, e^{x_j -
\mathrm{lse}_\mathrm{shard}} + g_y [j = y] + g_s w_j [j \in S]`, in every
autodiff mode; the collectives that combine the shards stay outside them,
differentiated by JAX itself, so that gradients are right with and without
``shard_map``'s replication checks (``check_vma``). A replicated input's
gradient (the hidden states of the fused linear loss) is summed over the
shards by JAX, as for any ``shard_map`` input.
"""

import jax
from jax import lax
import jax.numpy as jnp

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss.kernels import cross_entropy as _fast_ce


def check_axis_name(fn, axis_name):
  """A mesh axis name (a str) or a non-empty tuple of them."""
  if not (isinstance(axis_name, str) or (
      isinstance(axis_name, tuple) and axis_name
      and all(isinstance(a, str) for a in axis_name))):
    _checks.fail(fn, "axis_name must be a mesh axis name (a str) or a tuple "
                 f"of them, got {axis_name!r}", TypeError)


def shard(fn, axis_name):
  """``(k, i)``: the shards along ``axis_name`` (static) and this one's index.

  Raises a ValueError naming ``fn`` outside ``jax.shard_map`` over that axis.
  """
  check_axis_name(fn, axis_name)
  try:
    size = lax.axis_size(axis_name)
    index = lax.axis_index(axis_name)
  except NameError:
    size = None
  if size is None:
    _checks.fail(fn, f"axis_name {axis_name!r} is not bound: call inside "
                 "jax.shard_map over that mesh axis")
  return int(size), index


def local_labels(labels, valid, keep, index, width):
  """Labels as indices into this shard, -1 where the label is elsewhere.

  Returns ``(local, in_shard)``; dropped rows and invalid labels are never
  in the shard.
  """
  offset = index * width
  in_shard = valid & (labels >= offset) & (labels < offset + width)
  if keep is not None:
    in_shard = in_shard & keep
  return jnp.where(in_shard, labels - offset, -1), in_shard


def label_weight(weight, local, in_shard, axis_name):
  """Each row's class weight, read on the shard that holds its label."""
  if weight is None:
    return None
  w = jnp.where(in_shard, weight[jnp.maximum(local, 0)], 0)
  return lax.psum(w, axis_name)


def combine(axis_name, lse, *sums):
  """Global log-sum-exp and sums from each shard's: one pmax, one psum.

  Each shard's ``lse`` may be ``-inf`` (no possible class in the shard);
  its share is then 0, with zero gradient. The collectives are
  differentiated by JAX itself, so gradients are right with and without
  ``shard_map``'s replication checks (``check_vma``).
  """
  # Any common shift would do: no gradient flows through it.
  top = lax.pmax(lax.stop_gradient(lse), axis_name)
  top = jnp.where(jnp.isfinite(top), top, 0)
  total, *sums = lax.psum((jnp.exp(lse - top), *sums), axis_name)
  return (jnp.log(total) + top, *sums)


def softmax_cross_entropy_with_integer_labels(
    fn, logits, labels, *, axis, where, ignore_index, weight, label_smoothing,
    z_loss, reduction, axis_name):
  """The public function's body when the classes are split over ``axis_name``.

  Same numbers as the unsharded function; ``logits``, ``weight`` and a
  class-shaped ``where`` are the local shards, ``labels`` global class ids.
  """
  shards, index = shard(fn, axis_name)
  x, batch_shape, _ = _rows.classes_last(fn, logits, axis)
  dtype = _reduction.stat_dtype(x.dtype)
  width = x.shape[-1]
  num_classes = shards * width
  row_keep, class_keep = _rows.split_where(fn, where, logits.shape, axis,
                                                 batch_shape)
  if class_keep is not None:
    # A row is dropped only when no shard keeps any of its classes.
    row_keep = lax.psum(row_keep.astype(jnp.int32), axis_name) > 0
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    _checks.shape_is(fn, "weight", weight, (width,),
                     "the local shard: one per class of the logits' shard")
    weight = lax.stop_gradient(weight.astype(dtype))
  labels = _checks.integer(fn, "labels", labels)
  labels = _checks.conform(fn, "labels", labels, "the batch shape of logits",
                           batch_shape)
  keep = row_keep
  keep = _rows.both(keep, _checks.not_ignored(labels, ignore_index))
  valid = (labels >= 0) & (labels < num_classes)
  _checks.values(fn, "labels", valid if keep is None else valid | ~keep,
                 f"must be in [0, {num_classes})" + (
                     "" if ignore_index is None else " or equal ignore_index"),
                 labels)
  local, in_shard = local_labels(labels, valid, keep, index, width)
  label_w = label_weight(weight, local, in_shard, axis_name)

  def flat(a):
    return _rows.flat_rows(a, batch_shape)

  smoothed = not _jit.is_zero(label_smoothing)
  # The unsharded statistics of this shard: lse is -inf where it has no
  # possible class, the label logit 0 where the label is elsewhere.
  config = _fast_ce.Config(smoothing=smoothed)
  stats = _fast_ce.row_statistics(
      config, flat(x), flat(local).astype(jnp.int32), flat(keep),
      flat(class_keep), weight if smoothed else None)
  stats = combine(axis_name, *stats)
  return _rows.loss_from_statistics(
      fn, stats, batch_shape, label_w, keep, valid, label_smoothing, z_loss,
      reduction)
