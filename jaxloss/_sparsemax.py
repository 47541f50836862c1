"""Sparsemax, its losses, and Fenchel-Young losses from a max function."""

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxloss import _binary
from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss._rows import classes_last
from jaxloss._rows import finish_rows
from jaxloss._rows import integer_rows
from jaxloss._rows import split_where


# Newton steps on the threshold before a row that still needs them is
# bisected: random scores take about 7, scores built to cross one support
# point per step would take up to C.
_NEWTON_STEPS = 32
# Bisection steps: enough to narrow [tau, 0], at most 1 wide, around a root
# of magnitude at least 1 / C, down to neighbouring float64 numbers (each
# step at least halves it: about 53 + log2(C) steps).
_BISECTION_STEPS = 128


def _shift(top):
  """The rows' maximum ``top`` ([..., 1]) where it is finite, else 0."""
  return jnp.where(jnp.isfinite(top), top, 0)


def _sorted_threshold(z):
  """Sparsemax's threshold of the rows of ``z`` less their shift
  (:func:`_shift`), through a sort: exact for any input."""
  ranked = -jnp.sort(-z, axis=-1)
  k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype).reshape(
      (1,) * (z.ndim - 1) + (-1,))
  # Martins & Astudillo: the support is the longest prefix of the sorted
  # scores with z_(k) > g(k) = (sum_{j <= k} z_(j) - 1) / k, and tau is g at
  # its end. g(k) is the mean of g(k - 1) and z_(k) weighted k - 1 and 1: it
  # rises while z_(k) is above it and falls after, so tau is g's maximum.
  # A maximum, not a count and a sum of the prefix: no comparison, which
  # XLA:CPU would write out as [R, C] arrays. -inf entries give g = -inf;
  # g(1) = -1 at the top (0), which floors a row of -inf entries.
  g = (jnp.cumsum(ranked, axis=-1) - 1) / k
  return jnp.maximum(jnp.max(g, axis=-1, keepdims=True), -1)


def _excess(z, shift, tau):
  """``(sum_i (z_i - shift - tau)_+, |{i : z_i - shift > tau}|)`` per row,
  [..., 1] each: arithmetic that XLA:CPU fuses with the sums (the count as
  a sum of signs, no comparison), shifted in the pass (no [R, C] copy)."""
  over = jnp.maximum((z - shift) - tau, 0)
  return (jnp.sum(over, axis=-1, keepdims=True),
          jnp.sum(jnp.sign(over), axis=-1, keepdims=True))


def _newton_threshold(z, top):
  r"""Sparsemax's threshold of the rows of ``z`` less their shift
  (:func:`_shift` of their maximum ``top``), as :func:`_sorted_threshold`
  gives it, without a sort: Newton's method on
  :math:`f(\tau) = \sum_i (z_i - \tau)_+ - 1` (Michelot's algorithm),
  bisection where it is slow.

  From :math:`\tau = -1`, below the root, each step
  :math:`\tau \leftarrow \tau + f(\tau) / |S|`, with
  :math:`S = \{i : z_i > \tau\}`, is the threshold of the support
  :math:`S` and never passes the root: the support shrinks until it holds,
  and the last step is the sorted form's threshold of the same support.
  A row whose support still shrinks after :data:`_NEWTON_STEPS` steps is
  bisected between its last step and 0 (its maximum), the Newton step from
  the midpoint taken where that lies below the root, until no number lies
  between the two ends; then Newton's steps again from the lower end (a
  step from a midpoint far below the root rounds more). Each step, of
  either kind, is one pass over the rows: at most twice
  :data:`_NEWTON_STEPS` plus about 40 passes (float32) for any row, 7 for
  random normal scores. A row holding NaN gets a NaN threshold, one
  holding ``+inf`` the sort's, ``+inf`` (its steps would give NaN).
  """
  shift = _shift(top)

  # Each loop's condition is a count of rows still going, summed in its
  # body: a reduction in the condition, or a boolean one (jnp.any), took
  # XLA:CPU about as long again to compile as the whole loop.
  def newton(state):
    tau, count, _, _, i = state
    excess, new_count = _excess(z, shift, tau)
    # A row of -inf scores has an empty support: no step (its count is 0).
    tau = tau + (excess - 1) / jnp.maximum(new_count, 1) * jnp.minimum(
        new_count, 1)
    shrinking = (new_count < count).astype(z.dtype)
    return tau, new_count, shrinking, jnp.sum(shrinking), i + 1

  def newton_steps(tau, going):
    """Newton's steps from ``tau`` while the support of some row shrinks
    (at most :data:`_NEWTON_STEPS`): tau, and 1 on the rows still shrinking
    (else 0)."""
    tau, _, shrinking, _, _ = _jit.while_loop(
        lambda state: (state[3] > 0) & (state[4] < _NEWTON_STEPS), newton,
        (tau, jnp.full_like(tau, jnp.inf), jnp.ones_like(tau), going, 0))
    return tau, shrinking

  def bisect(state):
    low, high, open_, _, i = state
    mid = low + (high - low) / 2
    excess, count = _excess(z, shift, mid)
    below = excess >= 1
    low = jnp.where((open_ > 0) & below,
                    mid + (excess - 1) / jnp.maximum(count, 1), low)
    high = jnp.where((open_ > 0) & ~below, mid, high)
    mid = low + (high - low) / 2
    open_ = open_ * ((low < mid) & (mid < high)).astype(z.dtype)
    return low, high, open_, jnp.sum(open_), i + 1

  tau, slow = newton_steps(jnp.full_like(shift, -1), 1)
  # Rows done with Newton's steps take no bisection step, and the loops
  # below none at all where every row is done. A bisected row ends with
  # Newton's steps from its lower end (its own support's threshold: a step
  # from a midpoint far below it rounds more).
  slow_rows = jnp.sum(slow)
  tau = _jit.while_loop(
      lambda state: (state[3] > 0) & (state[4] < _BISECTION_STEPS), bisect,
      (tau, jnp.zeros_like(tau), slow, slow_rows, 0))[0]
  return jnp.where(top == jnp.inf, jnp.inf, newton_steps(tau, slow_rows)[0])


@jax.custom_jvp
def _sparsemax_rows(z):
  """Euclidean projection of each row of ``z`` (classes last) on the simplex.

  ``-inf`` entries get probability 0; a row with no finite entry gives 0s.
  On CPUs the threshold comes from Newton steps (:func:`_newton_threshold`):
  XLA:CPU's sort of [4096, 1024] scores took about 0.55 s, the steps
  0.04 s, and the probabilities are computed from the [..., 1] thresholds,
  fused with what reads them.
  """
  top = jnp.max(z, axis=-1, keepdims=True)
  shift = _shift(top)
  tau = (_newton_threshold(z, top) if jax.default_backend() == "cpu"
         else _sorted_threshold(z - shift))
  return jnp.maximum((z - shift) - tau, 0)


@_sparsemax_rows.defjvp
@_jit.inlined
def _sparsemax_rows_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  p = _sparsemax_rows(z)
  # The Jacobian is diag(s) - s s^T / |s| on the support s: the tangent,
  # centred over the support, zero outside it (also at -inf entries).
  s = p > 0
  dz = jnp.where(s, dz, 0)
  mean = jnp.sum(dz, axis=-1, keepdims=True) / jnp.maximum(
      jnp.sum(s, axis=-1, keepdims=True, dtype=p.dtype), 1)
  return p, jnp.where(s, dz - mean, 0)


@_jit.jit("axis")
def sparsemax(x, axis=-1, where=None):
  r"""Sparsemax along ``axis``: the Euclidean projection onto the simplex.

  .. math::
    \mathrm{sparsemax}(x) = \arg\min_{p \in \Delta} \|p - x\|^2
      = \max(x - \tau(x), 0)

  with :math:`\tau` the threshold making the output sum to 1. Unlike softmax,
  it gives exact zeros: scores more than :math:`\tau` below the top get
  probability 0. ``-inf`` entries and entries excluded by ``where`` get 0; a
  slice with no finite entry gives all zeros (softmax gives NaN there).
  The gradient is the Jacobian :math:`\mathrm{diag}(s) - s s^\top / |s|` on
  the support :math:`s`, set with a custom JVP.

  Args:
    x: floating array.
    axis: int or tuple of ints, the axes projected over together.
    where: optional boolean mask broadcasting to ``x``' shape: the entries
      taking part.

  Returns:
    Probabilities, same shape and dtype as ``x`` (computed in float32 for
    half precision input).

  Example:
    >>> import jaxloss
    >>> print(jaxloss.sparsemax(jnp.array([[0.5, 0.3, -1.0], [2.0, 0.0, 0.0]])))
    [[0.6 0.4 0. ]
     [1.  0.  0. ]]

  References:
    Martins and Astudillo, `From Softmax to Sparsemax
    <https://arxiv.org/abs/1602.02068>`_, 2016. Same call as
    :func:`jaxloss.softmax`; neither ``jax.nn`` nor optax exports a sparsemax
    activation: on a single vector this equals
    ``optax.projections.projection_simplex``.
  """
  fn = "sparsemax"
  x = _checks.floating(fn, "x", x)
  dtype = x.dtype
  shape = x.shape
  z = x.astype(_reduction.stat_dtype(dtype))
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    where = _checks.conform(fn, "where", where, "x", shape)
    z = jnp.where(where, z, -jnp.inf)
  rows, batch_shape, axes = classes_last(fn, z, axis)
  p = _sparsemax_rows(rows)
  # Undo classes_last: unflatten the classes, then restore the axis order.
  batch_axes = tuple(a for a in range(len(shape)) if a not in axes)
  p = p.reshape(batch_shape + tuple(shape[a] for a in axes))
  p = jnp.transpose(p, tuple(
      (batch_axes + axes).index(a) for a in range(len(shape))))
  return p.astype(dtype)


@jax.custom_jvp
def _gini_conjugate(z):
  r"""Per row, :math:`\max_{p \in \Delta} \langle p, z\rangle + (1 - \|p\|^2)/2`."""
  p = _sparsemax_rows(z)
  return _gini_value(p, z)


def _gini_value(p, z):
  """``<p, z> + (1 - |p|^2) / 2``, with 0 rather than ``0 * -inf`` where
  ``p`` is 0: ``z`` floored at the lowest finite number, which changes no
  term where ``p > 0``. A clamp, not a select: XLA:CPU fuses it with the
  sums, where a select wrote the terms and a [R, C] array of zeros out."""
  zp = jnp.sum(p * jnp.maximum(z, -jnp.finfo(z.dtype).max), axis=-1)
  return zp + 0.5 * (1 - jnp.sum(p * p, axis=-1))


@_gini_conjugate.defjvp
@_jit.inlined
def _gini_conjugate_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  # Danskin: the gradient of the max is the maximiser, sparsemax(z).
  p = _sparsemax_rows(z)
  return _gini_value(p, z), jnp.sum(p * jnp.where(p > 0, dz, 0), axis=-1)


@_jit.jit("axis", "reduction")
def multiclass_sparsemax_loss(scores, labels, *, axis=-1, where=None,
                              reduction="none"):
  r"""Sparsemax loss against integer labels: the Fenchel-Young loss of sparsemax.

  .. math::
    \ell = \langle p, x - x_y \rangle + \tfrac12 (1 - \|p\|^2),\qquad
    p = \mathrm{sparsemax}(x)

  It is 0 exactly when :math:`\mathrm{sparsemax}(x)` is the one-hot label, and
  its gradient is :math:`p - e_y` (set with a custom JVP, never through the
  sort). ``-inf`` scores are impossible classes (probability 0); a ``-inf``
  score at the label costs ``inf`` with a finite gradient. A label outside
  ``[0, C)`` gives NaN (optax reads a clamped or wrapped-around class).

  Args:
    scores: floating [..., C, ...] scores.
    labels: integer labels with the batch shape (``scores``' shape without
      ``axis``) or broadcasting to it.
    axis: class axis or tuple of axes (optax: last axis only).
    where: optional boolean mask: batch-shaped to drop rows, or
      ``scores``-shaped to restrict the sparsemax to some classes.
    reduction: ``"none"``, ``"mean"`` (over kept rows) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 scores): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> scores = jnp.array([[0.5, 0.3, -1.0], [2.0, 0.0, 0.0]])
    >>> print(jaxloss.multiclass_sparsemax_loss(scores, jnp.array([0, 1])))
    [0.15999997 2.        ]

  References:
    Martins and Astudillo, `From Softmax to Sparsemax
    <https://arxiv.org/abs/1602.02068>`_, 2016;
    ``optax.losses.multiclass_sparsemax_loss``, which takes [N, C] scores
    only.
  """
  fn = "multiclass_sparsemax_loss"
  scores = _checks.floating(fn, "scores", scores)
  shape = scores.shape
  x, batch_shape, _ = classes_last(fn, scores, axis)
  x = x.astype(_reduction.stat_dtype(x.dtype))
  row_keep, class_keep = split_where(fn, where, shape, axis, batch_shape,
                                     "scores")
  if class_keep is not None:
    x = jnp.where(class_keep, x, -jnp.inf)
  labels = _rows.row_labels(fn, "labels", labels, "scores", shape,
                                      batch_shape)
  x, label_x, _, keep, valid = integer_rows(
      fn, x, labels, batch_shape, ignore_index=None, row_keep=row_keep,
      weight=None)
  # The loss is shift invariant: shifting by the label's score keeps the
  # value exact for large scores; a -inf label score costs inf.
  finite = jnp.isfinite(label_x)
  shift = jax.lax.stop_gradient(jnp.where(finite, label_x, 0))
  loss = _gini_conjugate(x - shift[..., None]) - jnp.where(
      finite, label_x - shift, label_x)
  return finish_rows(fn, loss, None, keep, valid, reduction)


@jax.custom_jvp
def _binary_sparsemax(x, y):
  # y s(-x) + (1 - y) s(x) - y (1 - y) on each piece of s = sparse_plus,
  # with s(-x) = s(x) - x: one select chain and no nested jit, so that XLA
  # fuses it into one loop. A -inf logit with label 0 (+inf with label 1)
  # costs 0, not 0 * inf: two more selects in the chain, which side by side
  # cost nothing measurable (a cap on each piece cost 1.16x).
  low = jnp.where((y == 0) & (x == -jnp.inf), 0, -y * (x + 1 - y))
  high = jnp.where((y == 1) & (x == jnp.inf), 0, (1 - y) * (x - y))
  return jnp.where(x <= -1, low, jnp.where(
      x >= 1, high, 0.25 * (x + 1)**2 - y * x - y * (1 - y)))


def _binary_sparsemax_jvp(primals, tangents):
  (x, y), (dx, dy) = primals, tangents
  out = _binary_sparsemax(x, y)
  tangent = jnp.zeros_like(out)
  if not isinstance(dx, SymbolicZero):
    sparse_sigmoid = jnp.minimum(jnp.maximum(0.5 * (x + 1), 0), 1)
    tangent = tangent + (sparse_sigmoid - y) * dx
  if not isinstance(dy, SymbolicZero):
    # Infinite at an infinite logit, as the loss is for any other label.
    tangent = tangent + (2 * y - 1 - x) * dy
  return out, tangent


_binary_sparsemax.defjvp(_jit.inlined(_binary_sparsemax_jvp),
                         symbolic_zeros=True)


def _binary_inputs(fn, logits, labels, weight, where):
  logits = _checks.floating(fn, "logits", logits)
  labels = _checks.numeric(fn, "labels", labels)
  labels = _checks.conform(fn, "labels", labels, "logits", logits.shape)
  dtype = _reduction.stat_dtype(logits.dtype)
  if weight is not None:
    weight = _checks.numeric(fn, "weight", weight)
    weight = _checks.conform(fn, "weight", weight, "logits",
                             logits.shape).astype(dtype)
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    where = _checks.conform(fn, "where", where, "logits", logits.shape)
  return logits.astype(dtype), labels.astype(dtype), weight, where


@_jit.jit("reduction")
@_reduction.elementwise
def sparsemax_loss(logits, labels, *, weight=None, where=None,
                   reduction="none"):
  r"""Binary sparsemax loss: the Fenchel-Young loss of the sparse sigmoid.

  .. math::
    \ell = y\, s(-x) + (1 - y)\, s(x) - y (1 - y),\qquad
    s(x) = \begin{cases} 0 & x \le -1 \\ (x + 1)^2 / 4 & |x| < 1 \\
      x & x \ge 1 \end{cases}

  with :math:`s` = ``jax.nn.sparse_plus``. It is 0 exactly when
  ``jax.nn.sparse_sigmoid(logits) == labels``; its gradient is
  :math:`\mathrm{sparse\_sigmoid}(x) - y`. For labels in {0, 1} this is
  optax's loss; soft labels in [0, 1] give the Fenchel-Young loss (optax
  reads any non-zero label as 1).

  Args:
    logits: floating array of any shape.
    labels: targets in [0, 1] (binary, boolean or soft), ``logits``' shape
      or broadcasting to it (never enlarging it).
    weight: optional per-element weights broadcasting to ``logits``' shape.
    where: optional boolean mask broadcasting to ``logits``' shape; dropped
      elements give loss 0 and gradient 0.
    reduction: ``"none"``, ``"mean"`` (over kept elements) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 logits): ``logits``' shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> x = jnp.array([-2.0, 0.0, 0.5, 3.0])
    >>> print(jaxloss.sparsemax_loss(x, jnp.array([1, 1, 0, 1])))
    [2.     0.25   0.5625 0.    ]

  References:
    Blondel, Martins and Niculae, `Learning with Fenchel-Young Losses
    <https://arxiv.org/abs/1901.02324>`_, JMLR 2020 (sec. 4.4);
    ``optax.losses.sparsemax_loss``.
  """
  fn = "sparsemax_loss"
  logits, labels, weight, where = _binary_inputs(fn, logits, labels, weight,
                                                 where)
  _binary._value_check(fn, "logits", ~jnp.isnan(logits), "must not be NaN",
                       logits, where)
  _binary._value_check(fn, "labels", (labels >= 0) & (labels <= 1),
                       "must be in [0, 1]", labels, where)
  if where is not None:
    # Labels too: the derivative reads them, and a NaN in a dropped entry
    # would reach their gradient (0 * NaN).
    logits = jnp.where(where, logits, 0)
    labels = jnp.where(where, labels, 0)
  loss = _binary_sparsemax(logits, labels)
  if weight is not None:
    loss = loss * weight
  loss = _reduction.mask(loss, where)
  return _reduction.reduce(fn, loss, reduction, keep=where)


def make_fenchel_young_loss(max_fun, *, reduction="none"):
  r"""Builds the Fenchel-Young loss of a max function (its convex conjugate).

  .. math::
    \ell(x, y) = \Omega^*(x) - \langle y, x \rangle

  where :math:`\Omega^*` is ``max_fun`` applied over the last axis (for
  instance ``jax.nn.logsumexp`` gives the softmax cross entropy up to the
  targets' entropy). Terms with a zero target count 0 in the inner product,
  even where the score is ``-inf`` (optax gives NaN there), so ``-inf``
  scores can mark impossible classes. Half precision scores and targets are
  upcast to float32 before ``max_fun`` sees them.

  Extra arguments of the loss reach ``max_fun`` unchanged, the same for
  every row. (optax's version vectorizes ``max_fun`` with
  ``jnp.vectorize``, which silently drops keyword arguments and rejects
  positional ones.)

  Args:
    max_fun: a function of a 1-D array returning a scalar, with optional
      extra arguments.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``, applied by the returned
      loss to its [...] output.

  Returns:
    ``fenchel_young_loss(scores, targets, *args, **kwargs)``: takes floating
    [..., C] ``scores`` and ``targets`` of their shape or broadcasting to it
    over the leading axes (the class axis matches), forwards
    ``args`` and ``kwargs`` to ``max_fun``, and returns the loss, float32
    (float64 for float64 scores), of shape [...] for ``"none"`` or a scalar.
    It is traced in the caller's ``jax.jit``.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.make_fenchel_young_loss(jax.nn.logsumexp)
    >>> scores = jnp.array([[1.2, -0.8, -jnp.inf], [0.9, -1.2, 1.1]])
    >>> print(loss(scores, jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])))
    [0.12692809 2.951799  ]

  References:
    Blondel, Martins and Niculae, `Learning with Fenchel-Young Losses
    <https://arxiv.org/abs/1901.02324>`_, JMLR 2020;
    ``optax.losses.make_fenchel_young_loss``.
  """
  fn = "make_fenchel_young_loss"
  if not callable(max_fun):
    _checks.fail(fn, f"max_fun must be callable, got "
                 f"{type(max_fun).__name__}", TypeError)
  _checks.reduction(fn, reduction)

  def fenchel_young_loss(scores, targets, *args, **kwargs):
    """The Fenchel-Young loss of ``max_fun``; see make_fenchel_young_loss."""
    name = "fenchel_young_loss"
    scores = _checks.floating(name, "scores", scores)
    _checks.at_least_rank(name, "scores", scores, 1)
    targets = _checks.numeric(name, "targets", targets)
    targets = _checks.conform(name, "targets", targets, "scores",
                              scores.shape, class_axes=(scores.ndim - 1,))
    scores = scores.astype(_reduction.stat_dtype(scores.dtype))
    targets = targets.astype(scores.dtype)
    # A zero target reads its score as 0: no 0 * -inf in the value, no
    # 0 * nan in the gradient.
    zero = targets == 0
    inner = jnp.sum(targets * jnp.where(zero, 0, scores), axis=-1)

    def row_max(row):
      return max_fun(row, *args, **kwargs)

    loss = jnp.vectorize(row_max, signature="(n)->()")(scores) - inner
    return _reduction.reduce(name, loss, reduction)

  return fenchel_young_loss
