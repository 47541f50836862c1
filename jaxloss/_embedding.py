"""Similarities, distances, and the losses built on them: triplet, ranking,
embedding and contrastive (NT-Xent, circle)."""

from collections.abc import Sequence
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _checks
from jaxloss import _jit
from jaxloss import _reduction
from jaxloss import _rows
from jaxloss import _value_form
from jaxloss._regression import _complex_or_floating
from jaxloss._regression import _modulus
from jaxloss._regression import abs_zero_slope
from jaxloss._regression import clamp_min_zero
from jaxloss._regression import not_nan


def _floats(fn, named, check_nan=True, complex_ok=False, upcast=True):
  """Checked floating inputs in the loss dtype, shaped as the first one.

  The first input's shape is the element shape: the others may broadcast to
  it, never enlarge it (the shape contract). ``complex_ok`` admits complex
  vectors too (torch's distances take them). ``upcast=False`` leaves them
  in their own dtypes (for :func:`_row_sums`, which upcasts in each pass).
  """
  check = _complex_or_floating if complex_ok else _checks.floating
  arrays = [check(fn, name, x) for name, x in named]
  if check_nan:
    for (name, _), x in zip(named, arrays):
      not_nan(fn, name, x)
  dtype = _reduction.stat_dtype(jnp.result_type(*arrays))
  (first, ref), *rest = zip((name for name, _ in named), arrays)
  out = [ref] + [_checks.conform(fn, name, x, first, ref.shape)
                 for name, x in rest]
  return [x.astype(dtype) for x in out] if upcast else out


def _axes(fn, axis, ndim, arg):
  """Canonical axes from None, an int or a tuple of ints, in the order given."""
  if axis is None:
    return tuple(range(ndim))
  if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
    axis = (int(axis),)
  elif not (isinstance(axis, Sequence) and all(
      isinstance(a, (int, np.integer)) and not isinstance(a, bool)
      for a in axis)):
    _checks.fail(fn, f"axis must be None, an int or a tuple of ints, got "
                 f"{axis!r}", TypeError)
  out = []
  for a in axis:
    if not -ndim <= a < ndim:
      _checks.fail(fn, f"axis {a} is out of bounds for {arg} of rank {ndim}")
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    _checks.fail(fn, f"axis {tuple(axis)} repeats an axis")
  return tuple(out)


def _signs(fn, name, target):
  """Under ``checked``: ``target`` in {-1, 1}."""
  _checks.values(fn, name, (target == 1) | (target == -1), "must be -1 or 1",
                 target)


@jax.custom_jvp
def _safe_rsqrt(x):
  """``1/sqrt(x)`` of ``x >= 0`` (a squared norm), 0 at 0, with derivatives
  0 there at every order.

  No select: ``sign(x)`` is 0 at 0 and 1 elsewhere, and moves 0 to 1
  inside the root. XLA fuses a select on the rows into the [..., C] pass of
  the gradient, which XLA:CPU then compiles as a loop of its own; this
  arithmetic it hands to the library that fuses the rest (a cosine's
  gradient compiled in two thirds of the time). No floor: a subnormal
  ``x`` keeps its root where subnormals are kept.
  """
  s = jnp.sign(x)
  return s * lax.rsqrt(x + (1 - s))


@_safe_rsqrt.defjvp
@_jit.inlined
def _safe_rsqrt_jvp(primals, tangents):
  # d x^(-1/2) = -x^(-3/2) dx / 2, from the value itself: 0 at 0.
  (x,), (dx,) = primals, tangents
  r = _safe_rsqrt(x)
  return r, -0.5 * r * r * r * dx


@jax.custom_jvp
def _safe_sqrt(x):
  """``sqrt(x)`` of ``x >= 0``, with derivative 0 at 0 (every order).

  The value needs no select (``sqrt(0) = 0``), so XLA fuses it with the sum
  that makes ``x``; nor does the derivative, ``sign(r) / (2 (r + 1 -
  sign(r)))`` of the root ``r``: 0 at 0. Taken from the root rather than
  from ``x``, so that the root is the sum's only reader, which XLA:CPU then
  takes into the fused sum (the triplet loss's gradient: two loops fewer).
  """
  return jnp.sqrt(x)


@_safe_sqrt.defjvp
@_jit.inlined
def _safe_sqrt_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  root = _safe_sqrt(x)
  s = jnp.sign(root)
  return root, 0.5 * s / (root + (1 - s)) * dx


def _safe_pow(x, p):
  """``x ** p`` for ``x > 0``, else 0, with zero gradients there.

  At ``x = 0`` the derivative in ``x`` (infinite for ``p < 1``) and in ``p``
  (``x ** p log x``) are both read at ``x = 1`` and discarded: 0, not NaN.
  Written as ``exp(p log x)``: XLA's ``pow`` with a traced exponent is an
  order of magnitude slower on CPUs, and its gradient is a second ``pow``
  where this one reuses the ``exp`` and the ``log``.
  """
  positive = x > 0
  return jnp.where(positive, jnp.exp(p * jnp.log(jnp.where(positive, x, 1))),
                   0)


# The norm degree: a p-norm for every p > 0, and the maximum at p = inf.
_NORM_DEGREE = _jit.Hyper(0.0, math.inf, low_open=True)


def _pnorm(v, p, axis, keepdims=False, inner_eps=None):
  """The ``p``-norm along ``axis``, ``(sum |v|^p + inner_eps)^(1/p)``.

  ``p`` may be traced: ``p = inf`` takes the maximum (plus ``inner_eps``),
  and the power sum is then read at ``p = 1`` and discarded, so that neither
  the value nor a gradient sees ``|v| ** inf``. A concrete ``p`` of 1, 2 or
  ``inf`` (a Python or NumPy number) takes its own path: no power of each
  element. The gradient at the zero vector is 0, as torch's; the gradient in
  ``p`` is finite everywhere.
  """
  known = _jit.concrete(p)

  def plus_eps(x):
    return x if inner_eps is None else x + inner_eps

  if known == 2:
    # |v|^2 without the modulus: the square's own derivative is 0 at 0.
    square = (v.real * v.real + v.imag * v.imag
              if jnp.issubdtype(v.dtype, jnp.complexfloating) else v * v)
    return _safe_sqrt(plus_eps(jnp.sum(square, axis=axis, keepdims=keepdims)))
  a = (_modulus(v) if jnp.issubdtype(v.dtype, jnp.complexfloating)
       else abs_zero_slope(v))
  if known == math.inf:
    return plus_eps(jnp.max(a, axis=axis, keepdims=keepdims, initial=0))
  if known == 1:
    return plus_eps(jnp.sum(a, axis=axis, keepdims=keepdims))
  infinite = p == math.inf
  q = jnp.where(infinite, 1, p)
  total = plus_eps(jnp.sum(_safe_pow(a, q), axis=axis, keepdims=keepdims))
  top = plus_eps(jnp.max(a, axis=axis, keepdims=keepdims, initial=0))
  return jnp.where(infinite, top, _safe_pow(total, 1 / q))


def _degree(p, dtype):
  """A norm degree for :func:`_pnorm`: a concrete one as a Python float (its
  own path), else in ``dtype``."""
  known = _jit.concrete(p)
  return _jit.cast(p, dtype) if known is None else known


# ---------------------------------------------------------------------------
# Similarities and distances.


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _row_sums(a, b, axes):
  """``sum(a b)``, ``sum(a a)`` and ``sum(b b)`` over ``axes``, in float32
  (float64 for float64 input) from ``a`` and ``b`` in their own dtypes.

  The derivatives' pass reads half-precision ``a`` and ``b`` converted
  apart (:func:`jaxloss._reduction.upcast_apart`): sharing the sums'
  conversions, XLA:CPU wrote a float32 copy of both out for the sums and
  the gradient's pass (32 MiB of temporaries on bfloat16 [16384, 256], and
  the cosines' gradients 2 to 3.7 times their float32 time). The row algebra after
  the sums is autodiff's, as before.
  """
  dtype = _reduction.stat_dtype(jnp.result_type(a, b))
  dot = jnp.sum(a.astype(dtype) * b.astype(dtype), axis=axes)
  if a.dtype != dtype or b.dtype != dtype:
    # The squares' conversions apart from the product's (XLA:CPU writes a
    # conversion that two sums read), behind one barrier over both, which
    # XLA does not merge with the derivatives' barriers of each.
    a, b = lax.optimization_barrier((a, b))
  a, b = a.astype(dtype), b.astype(dtype)
  return dot, jnp.sum(a * a, axis=axes), jnp.sum(b * b, axis=axes)


def _row_sums_jvp(axes, primals, tangents):
  (a, b), (da, db) = primals, tangents
  out = _row_sums(a, b, axes)
  dtype = out[0].dtype
  a, b = (_reduction.upcast_apart(x, dtype) for x in (a, b))
  d_dot, d_aa, d_bb = (jnp.zeros_like(x) for x in out)
  if not isinstance(da, SymbolicZero):
    da = da.astype(dtype)
    d_dot = d_dot + jnp.sum(da * b, axis=axes)
    d_aa = 2 * jnp.sum(a * da, axis=axes)
  if not isinstance(db, SymbolicZero):
    db = db.astype(dtype)
    d_dot = d_dot + jnp.sum(a * db, axis=axes)
    d_bb = 2 * jnp.sum(b * db, axis=axes)
  return out, (d_dot, d_aa, d_bb)


_row_sums.defjvp(_jit.inlined(_row_sums_jvp), symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _difference_squares(arrays, shift, pairs, axes):
  """``sum((x_i - x_j + shift)**2)`` over ``axes`` for each ``(i, j)`` of
  ``pairs``, indices into the real ``arrays`` (``shift`` None or a scalar),
  in float32 (float64 for float64 input) from the arrays in their own
  dtypes.

  The derivatives' pass reads the arrays again behind barriers: XLA
  otherwise shares each difference between its sum and the gradient's pass
  and writes it out (16 MiB of temporaries on [16384, 256], a float32
  difference of bfloat16 input too). One call for every pair: an array's
  tangent is converted once, so that the cotangents of its pairs (the
  anchor's) add up in float32, not in bfloat16.
  """
  half = any(x.dtype != _reduction.stat_dtype(x.dtype) for x in arrays)
  out = []
  for i, j in pairs:
    u, v, s = arrays[i], arrays[j], shift
    if half:
      # Each pair its own conversions (XLA:CPU writes a conversion, or a
      # broadcast shift, that two sums read).
      u, v, s = lax.optimization_barrier((u, v, s))
    out.append(jnp.sum(_shifted_difference(u, v, s) ** 2, axis=axes))
  return tuple(out)


def _shifted_difference(u, v, shift):
  dtype = _reduction.stat_dtype(jnp.result_type(u, v))
  d = u.astype(dtype) - v.astype(dtype)
  return d if shift is None else d + shift


def _difference_squares_jvp(pairs, axes, primals, tangents):
  (arrays, shift), (moving, d_shift) = primals, tangents
  out = _difference_squares(arrays, shift, pairs, axes)
  # A barrier of each: not the value's over a pair, which XLA would merge;
  # the shift's too, else its broadcast is the value's, written out.
  arrays = [lax.optimization_barrier(x) for x in arrays]
  if shift is not None:
    shift = lax.optimization_barrier(shift)
  moving = [None if isinstance(t, SymbolicZero) else t.astype(out[0].dtype)
            for t in moving]
  if isinstance(d_shift, SymbolicZero):
    d_shift = None
  tangents = []
  for i, j in pairs:
    d = _shifted_difference(arrays[i], arrays[j], shift)
    step = jnp.zeros_like(d)
    for t, sign in ((moving[i], 1), (moving[j], -1), (d_shift, 1)):
      if t is not None:
        step = step + sign * t
    tangents.append(2 * jnp.sum(d * step, axis=axes))
  return out, tuple(tangents)


_difference_squares.defjvp(_jit.inlined(_difference_squares_jvp),
                           symbolic_zeros=True)


def _euclidean(arrays, pairs, eps, axes, torch, keepdims=False):
  """For each ``(i, j)`` of ``pairs``, ``_pnorm(x_i - x_j + eps, 2)``
  (``torch``) or ``_pnorm(x_i - x_j, 2, inner_eps=eps)`` of the real
  ``arrays``, from :func:`_difference_squares`."""
  out = []
  for total in _difference_squares(tuple(arrays), eps if torch else None,
                                   tuple(pairs), axes):
    if eps is not None and not torch:
      total = total + eps
    if keepdims:
      total = jnp.expand_dims(total, axes)
    out.append(_safe_sqrt(total))
  return out


def _unit(x, axis, where, epsilon):
  norm2 = jnp.sum(x * x, axis=axis, where=where, keepdims=True)
  if not _jit.is_zero(epsilon):
    norm2 = jnp.maximum(norm2, epsilon)
  return x * _safe_rsqrt(norm2)


def _cosine(fn, predictions, targets, epsilon, axis, where):
  predictions, targets = _floats(
      fn, [("predictions", predictions), ("targets", targets)],
      check_nan=False, upcast=False)
  dtype = _reduction.stat_dtype(jnp.result_type(predictions, targets))
  axes = _axes(fn, axis, predictions.ndim, "predictions")
  if where is not None:
    where = _checks.boolean(fn, "where", where)
    where = _checks.conform(fn, "where", where, "predictions",
                            predictions.shape)
  not_nan(fn, "predictions", predictions, where)
  not_nan(fn, "targets", targets, where)
  if where is not None:
    # Dropped entries are zeroed before any product: a NaN there must not
    # reach the gradient of the entries kept.
    predictions = jnp.where(where, predictions, 0)
    targets = jnp.where(where, targets, 0)
  # Dropped entries are zeros: the sums need no mask.
  epsilon = None if _jit.is_zero(epsilon) else _jit.cast(epsilon, dtype)

  def exact(a, b, epsilon):
    # The three sums first, then the row algebra: XLA:CPU fuses each sum
    # with its products, where a select between the sums and the [..., C]
    # products would keep those apart.
    return _exact_cosine_rows(*_row_sums(a, b, axes), epsilon)

  def value(a, b, epsilon):
    # The exact form's value with no select: each squared norm floored at
    # the smallest normal number. Where subnormal results flush to 0, as on
    # CPUs, a squared norm is 0 or at least the floor, and a zero vector's
    # terms are 0, as is the cosine then. Each vector's scale from its norm,
    # then one sum of a * b * scales: two sums over the rows, and a third
    # that XLA:CPU merges with a mean or sum the caller takes over the rows.
    a, b = a.astype(dtype), b.astype(dtype)
    floor = jnp.finfo(dtype).tiny
    if epsilon is not None:
      floor = jnp.maximum(epsilon, floor)
    scale_a, scale_b = (
        lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=axes, keepdims=True), floor))
        for v in (a, b))
    if _rows.short_rows_on_cpu(math.prod(a.shape[i] for i in axes)):
      # optax's form, the faster one on short vectors.
      return jnp.sum((a * scale_a) * (b * scale_b), axis=axes)
    # b * scale_b is at most 1 in magnitude, so b * (scale_a * scale_b) stays
    # finite and a zero vector a still gives 0.
    return jnp.sum(a * (b * (scale_a * scale_b)), axis=axes)

  # GPUs keep subnormals, and a select costs them nothing.
  if jax.default_backend() != "cpu":
    return exact(predictions, targets, epsilon)
  return _value_form.value_form(value)(exact)(predictions, targets, epsilon)


def _exact_cosine_rows(dot, norm2_a, norm2_b, epsilon):
  """The cosine from its row sums: 0, with zero derivatives, for a zero
  vector."""
  scale = 1
  for norm2 in (norm2_a, norm2_b):
    if epsilon is not None:
      norm2 = jnp.maximum(norm2, epsilon)
    scale = scale * _safe_rsqrt(norm2)
  return dot * scale


@_jit.jit("axis", "reduction", epsilon=_jit.NON_NEGATIVE)
def cosine_similarity(predictions, targets, *, epsilon=0.0, axis=-1,
                      where=None, reduction="none"):
  r"""Cosine of the angle between vectors: their inner product over norms.

  .. math::
    s = \frac{\langle a, b\rangle}
      {\sqrt{\max(\|a\|^2, \varepsilon)}\,\sqrt{\max(\|b\|^2, \varepsilon)}}

  A zero vector has similarity 0 with everything, with zero gradient:
  ``optax.losses.cosine_similarity`` with its default ``epsilon=0`` returns
  NaN there, in value and gradient.

  Args:
    predictions: floating [..., dim] vectors.
    targets: floating vectors that broadcast to the shape of
      ``predictions`` without enlarging it.
    epsilon: floor :math:`\varepsilon \ge 0` of the squared norms, traced
      or concrete (a concrete 0 adds no clamp).
    axis: axis or tuple of axes holding the vectors; None for all.
    where: optional boolean mask that broadcasts to the shape of
      ``predictions``: only these elements enter the sums (optax's
      ``where``).
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the remaining axes.

  Returns:
    float32 similarities in [-1, 1] (float64 for float64 input): the shape
    without ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> a = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    >>> b = jnp.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
    >>> print(jaxloss.cosine_similarity(a, b))
    [0. 1. 0. ]

  References:
    ``optax.losses.cosine_similarity``, which this equals away from zero
    vectors; ``torch.nn.functional.cosine_similarity`` (which floors the
    norms at ``eps=1e-8``).
  """
  fn = "cosine_similarity"
  return _reduction.reduce(
      fn, _cosine(fn, predictions, targets, epsilon, axis, where), reduction)


@_jit.jit("axis", "reduction", epsilon=_jit.NON_NEGATIVE)
def cosine_distance(predictions, targets, *, epsilon=0.0, axis=-1,
                    where=None, reduction="none"):
  r"""One minus the cosine similarity.

  .. math::
    d = 1 - \frac{\langle a, b\rangle}
      {\sqrt{\max(\|a\|^2, \varepsilon)}\,\sqrt{\max(\|b\|^2, \varepsilon)}}

  A zero vector is at distance 1 from everything, with zero gradient
  (``optax.losses.cosine_distance``: NaN at its default ``epsilon=0``).

  Args:
    predictions: floating [..., dim] vectors.
    targets: floating vectors that broadcast to the shape of
      ``predictions`` without enlarging it.
    epsilon: floor :math:`\varepsilon \ge 0` of the squared norms, traced
      or concrete.
    axis: axis or tuple of axes holding the vectors; None for all.
    where: optional boolean mask that broadcasts to the shape of
      ``predictions``.
    reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the remaining axes.

  Returns:
    float32 distances in [0, 2] (float64 for float64 input): the shape
    without ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> a = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    >>> b = jnp.array([[0.0, 1.0], [-2.0, -2.0], [1.0, 0.0]])
    >>> print(jaxloss.cosine_distance(a, b))
    [1. 2. 1.]

  References:
    ``optax.losses.cosine_distance``.
  """
  fn = "cosine_distance"
  return _reduction.reduce(
      fn, 1 - _cosine(fn, predictions, targets, epsilon, axis, where),
      reduction)


@_jit.jit("keepdim", p=_NORM_DEGREE, eps=_jit.REAL)
def pairwise_distance(x1, x2, *, p=2.0, eps=1e-6, keepdim=False):
  r"""The p-norm distance between vectors along the last axis, as torch's.

  .. math::
    d(x_1, x_2) = \| x_1 - x_2 + \varepsilon \|_p

  The gradient at zero distance is 0 (a plain ``jnp.linalg.norm`` gives NaN
  there), as torch's. This is the default ``distance_function`` of
  :func:`triplet_margin_with_distance_loss`. A 0-d input is one vector of
  one element, as in torch.

  Args:
    x1: floating or complex [..., dim] vectors (complex: the modulus of
      each difference, as torch).
    x2: floating vectors that broadcast to the shape of ``x1`` without
      enlarging it.
    p: the norm degree :math:`p > 0`, or ``inf`` (the largest difference):
      traced or concrete, with a finite gradient with respect to it. torch
      also takes :math:`p \le 0`, which is no norm; here a concrete one
      raises ``ValueError``.
    eps: :math:`\varepsilon`, added to every difference (torch's
      convention), traced or concrete.
    keepdim: keep the vector axis, with size 1.

  Returns:
    float32 distances (float64 for float64 input), the shape of ``x1``
    without (or, with ``keepdim``, with size 1 on) the last axis.

  Example:
    >>> import jaxloss
    >>> a = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    >>> b = jnp.array([[3.0, 4.0], [1.0, 1.0]])
    >>> print(jaxloss.pairwise_distance(a, b, eps=0.0))
    [5. 0.]

  References:
    ``torch.nn.functional.pairwise_distance`` / ``torch.nn.PairwiseDistance``.
  """
  fn = "pairwise_distance"
  x1, x2 = _floats(fn, [("x1", x1), ("x2", x2)], complex_ok=True,
                   upcast=False)
  work = _reduction.stat_dtype(jnp.result_type(x1, x2))
  real = _real_dtype(work)
  axis = -1
  if x1.ndim == 0:
    x1, x2, axis, keepdim = x1[None], x2[None], 0, False
  if _jit.concrete(p) == 2 and work == real:
    (out,) = _euclidean((x1, x2), ((0, 1),), None if _jit.is_zero(eps)
                        else _jit.cast(eps, real), (axis % x1.ndim,),
                        torch=True, keepdims=keepdim)
    return out
  v = x1.astype(work) - x2.astype(work)
  if not _jit.is_zero(eps):
    v = v + _jit.cast(eps, real)
  return _pnorm(v, _degree(p, real), axis, keepdim)


def _real_dtype(dtype):
  """The real dtype of ``dtype``'s values (float32 for complex64)."""
  return jnp.finfo(dtype).dtype


# ---------------------------------------------------------------------------
# Triplet, ranking and embedding losses.

_DISTANCES = ("optax", "torch")


def _torch_margin(anchors, positives, negatives, axis=-1, norm_degree=2,
                  margin=1.0, eps=1e-6, *, distance="optax", **_):
  """torch's rule, where the margin is known on the host: positive."""
  del anchors, positives, negatives, axis, norm_degree, eps
  value = _jit.concrete(margin)
  if distance == "torch" and value is not None and not value > 0:
    _checks.fail("triplet_margin_loss", "margin must be in (0, inf) with "
                 f"distance='torch', as torch requires, got {margin!r}")


@_jit.precheck(_torch_margin)
@_jit.jit("axis", "swap", "distance", "reduction", norm_degree=_NORM_DEGREE,
          margin=_jit.REAL, eps=_jit.REAL)
def triplet_margin_loss(anchors, positives, negatives, axis=-1, norm_degree=2,
                        margin=1.0, eps=1e-6, *, swap=False,
                        distance="optax", reduction="none"):
  r"""Triplet margin loss: the positive closer than the negative by a margin.

  .. math::
    \ell = \max\left(d(a, p) - d(a, n) + m,\ 0\right),\qquad
    d(u, v) = \left(\textstyle\sum_i |u_i - v_i|^q + \varepsilon\right)^{1/q}

  with ``swap=True`` replacing :math:`d(a, n)` by
  :math:`\min(d(a, n), d(p, n))` (Balntas et al.'s distance swap, torch's
  ``swap``). ``distance="torch"`` uses torch's
  :math:`d(u, v) = \|u - v + \varepsilon\|_q` instead, so that
  ``torch.nn.TripletMarginLoss(margin, p, eps, swap)`` is
  ``triplet_margin_loss(a, p, n, norm_degree=p, margin=margin, eps=eps,
  swap=swap, distance="torch", reduction="mean")``; with it, as in torch,
  the margin must be positive.

  ``optax.losses.triplet_margin_loss`` raises the differences themselves to
  the power :math:`q`, without the absolute value: any odd ``norm_degree``
  gives a wrong distance (NaN for ``norm_degree=3`` when the sum is
  negative). Here it is the :math:`q`-norm for every :math:`q > 0`, and the
  largest difference at :math:`q = \infty`; gradients are finite at zero
  distance, including with ``eps=0``, and with respect to :math:`q`.

  Args:
    anchors: floating (or complex: the modulus of each difference, as
      torch) [..., dim] anchor embeddings; a 0-d anchor is one vector of one
      element, as in torch.
    positives: embeddings that broadcast to the shape of ``anchors`` without
      enlarging it.
    negatives: embeddings that broadcast to the shape of ``anchors`` without
      enlarging it.
    axis: the vector axis.
    norm_degree: :math:`q > 0`, or ``inf``; traced or concrete.
    margin: :math:`m`, traced or concrete; positive with
      ``distance="torch"`` (a concrete :math:`m \le 0` raises
      ``ValueError``, a traced one fails under :func:`jaxloss.checked`).
    eps: :math:`\varepsilon`, placed as ``distance`` says; traced or
      concrete.
    swap: use the distance swap.
    distance: ``"optax"`` (default) or ``"torch"``, where ``eps`` goes.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``anchors``
    without ``axis`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> anchors = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    >>> positives = jnp.array([[0.1, 0.1], [1.1, 1.1]])
    >>> negatives = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> print(jaxloss.triplet_margin_loss(anchors, positives, negatives))
    [0.14142442 0.14142442]

  References:
    Balntas et al., `Learning shallow convolutional feature descriptors with
    triplet losses
    <https://bmva-archive.org.uk/bmvc/2016/papers/paper119/>`_, 2016;
    ``optax.losses.triplet_margin_loss``; ``torch.nn.TripletMarginLoss``.
  """
  fn = "triplet_margin_loss"
  if distance not in _DISTANCES:
    _checks.fail(fn, f"distance must be 'optax' or 'torch', got {distance!r}")
  swap = _checks.flag(fn, "swap", swap)
  anchors, positives, negatives = _floats(
      fn, [("anchors", anchors), ("positives", positives),
           ("negatives", negatives)], complex_ok=True, upcast=False)
  if anchors.ndim == 0 and axis in (-1, 0):
    anchors, positives, negatives = (x[None] for x in
                                     (anchors, positives, negatives))
  _checks.at_least_rank(fn, "anchors", anchors, 1)
  (ax,) = _axes(fn, axis, anchors.ndim, "anchors")
  work = _reduction.stat_dtype(jnp.result_type(anchors, positives, negatives))
  dtype = _real_dtype(work)
  norm_degree = _degree(norm_degree, dtype)
  margin = _jit.cast(margin, dtype)
  if distance == "torch" and not _jit.is_zero(margin):
    _checks.values(fn, "margin", margin > 0, "must be positive with "
                   "distance='torch'", margin)
  eps = None if _jit.is_zero(eps) else _jit.cast(eps, dtype)
  euclidean = _jit.concrete(norm_degree) == 2 and work == dtype
  if not euclidean:
    anchors, positives, negatives = (x.astype(work) for x in
                                     (anchors, positives, negatives))

  def dist(u, v):
    if distance == "torch":
      return _pnorm(u - v if eps is None else u - v + eps, norm_degree, ax)
    return _pnorm(u - v, norm_degree, ax, inner_eps=eps)

  pairs = ((0, 1), (0, 2), (1, 2))[:3 if swap else 2]
  arrays = (anchors, positives, negatives)
  if euclidean:
    # The distances of every pair from one call (see _difference_squares).
    d_pos, d_neg, *swapped = _euclidean(arrays, pairs, eps, (ax,),
                                        torch=distance == "torch")
  else:
    d_pos, d_neg, *swapped = (dist(arrays[i], arrays[j]) for i, j in pairs)
  if swap:
    d_neg = jnp.minimum(d_neg, swapped[0])
  loss = jnp.maximum(d_pos - d_neg + margin, 0)
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("distance_function", "swap", "reduction", margin=_jit.POSITIVE)
def triplet_margin_with_distance_loss(anchor, positive, negative, *,
                                      distance_function=None, margin=1.0,
                                      swap=False, reduction="none"):
  r"""Triplet margin loss under any distance function, as torch's.

  .. math::
    \ell = \max\left(d(a, p) - d(a, n) + m,\ 0\right)

  with :math:`d(a, n)` replaced by :math:`\min(d(a, n), d(p, n))` when
  ``swap``. ``distance_function`` defaults to :func:`pairwise_distance`
  (Euclidean, ``eps=1e-6``), as torch.

  Args:
    anchor: floating or complex [..., dim] embeddings.
    positive: embeddings that broadcast to the shape of ``anchor`` without
      enlarging it.
    negative: embeddings that broadcast to the shape of ``anchor`` without
      enlarging it.
    distance_function: a hashable callable ``(x1, x2) -> distances`` of JAX
      arrays (static under ``jax.jit``: pass the same function object, not a
      fresh lambda, to avoid recompiling), returning the batch shape.
    margin: :math:`m > 0`, as torch requires; traced or concrete.
    swap: use the distance swap.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    the loss in the distances' dtype (float32, or float64 for float64
    input, with the default distance): the batch shape for ``"none"``, else
    a scalar.

  Example:
    >>> import jaxloss
    >>> a = jnp.array([[1.0, 0.0]])
    >>> p = jnp.array([[4.0, 4.0]])
    >>> n = jnp.array([[0.0, 2.0]])
    >>> print(jaxloss.triplet_margin_with_distance_loss(a, p, n))
    [3.7639]
    >>> print(jaxloss.triplet_margin_with_distance_loss(
    ...     a, p, n, distance_function=jaxloss.cosine_distance))
    [0.2929]

  References:
    ``torch.nn.TripletMarginWithDistanceLoss`` /
    ``torch.nn.functional.triplet_margin_with_distance_loss``.
  """
  fn = "triplet_margin_with_distance_loss"
  swap = _checks.flag(fn, "swap", swap)
  if distance_function is not None and not callable(distance_function):
    _checks.fail(fn, "distance_function must be callable or None, got "
                 f"{distance_function!r}", TypeError)
  named = (("anchor", anchor), ("positive", positive), ("negative", negative))
  anchor, positive, negative = (_complex_or_floating(fn, n, x)
                                for n, x in named)
  for (name, _), x in zip(named, (anchor, positive, negative)):
    not_nan(fn, name, x)
  # The distance function sees its inputs in their own dtype.
  positive = _checks.conform(fn, "positive", positive, "anchor", anchor.shape)
  negative = _checks.conform(fn, "negative", negative, "anchor", anchor.shape)
  # The caller's function traced as the caller wrote it.
  dist = (pairwise_distance if distance_function is None
          else _jit.staged(distance_function))
  d_pos = jnp.asarray(dist(anchor, positive))
  d_neg = jnp.asarray(dist(anchor, negative))
  if swap:
    d_neg = jnp.minimum(d_neg, jnp.asarray(dist(positive, negative)))
  d_neg = _checks.conform(fn, "d(anchor, negative)", d_neg,
                          "d(anchor, positive)", d_pos.shape)
  dtype = _reduction.stat_dtype(jnp.result_type(d_pos, d_neg))
  loss = jnp.maximum(_jit.cast(margin, dtype) + d_pos.astype(dtype)
                     - d_neg.astype(dtype), 0)
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("reduction", margin=_jit.REAL)
@_reduction.elementwise(derivatives_apart=True)
def margin_ranking_loss(input1, input2, target, *, margin=0.0,
                        reduction="none"):
  r"""Margin ranking loss: ``input1`` above ``input2`` where the target is 1.

  .. math::
    \ell = \max\left(0,\ -y\,(x_1 - x_2) + m\right)

  Args:
    input1: floating scores.
    input2: floating scores that broadcast to the shape of ``input1``
      without enlarging it.
    target: :math:`y \in \{1, -1\}` (numeric), broadcasting to the shape
      of ``input1`` likewise.
    margin: :math:`m`, traced or concrete.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``input1`` for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> x1, x2 = jnp.array([1.0, 0.2]), jnp.array([0.5, 0.4])
    >>> print(jaxloss.margin_ranking_loss(x1, x2, jnp.array([1.0, 1.0]),
    ...                                   margin=0.1))
    [0.  0.3]

  References:
    ``torch.nn.MarginRankingLoss`` /
    ``torch.nn.functional.margin_ranking_loss``.
  """
  fn = "margin_ranking_loss"
  target = _checks.numeric(fn, "target", target)
  _signs(fn, "target", target)
  input1, input2 = _floats(fn, [("input1", input1), ("input2", input2)])
  target = _checks.conform(fn, "target", target, "input1", input1.shape)
  target = target.astype(input1.dtype)
  loss = clamp_min_zero(-target * (input1 - input2)
                        + _jit.cast(margin, input1.dtype))
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("reduction", margin=_jit.REAL)
@_reduction.elementwise(derivatives_apart=True)
def hinge_embedding_loss(predictions, targets, *, margin=1.0,
                         reduction="none"):
  r"""Hinge embedding loss: small for similar pairs, above a margin for others.

  For a distance-like input :math:`x` and :math:`y \in \{1, -1\}`:

  .. math::
    \ell = \begin{cases} x & y = 1 \\ \max(0, m - x) & y = -1 \end{cases}

  As torch, a target that is neither 1 nor -1 gets both terms
  (:func:`jaxloss.checked` rejects it); a NaN target's loss is NaN on CPUs,
  where the value is computed without selects.

  Args:
    predictions: floating inputs (typically distances).
    targets: :math:`y \in \{1, -1\}` (numeric), broadcasting to the shape
      of ``predictions`` without enlarging it.
    margin: :math:`m`, traced or concrete.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> d = jnp.array([0.3, 0.3, 1.5])
    >>> print(jaxloss.hinge_embedding_loss(d, jnp.array([1, -1, -1])))
    [0.3 0.7 0. ]

  References:
    ``torch.nn.HingeEmbeddingLoss`` /
    ``torch.nn.functional.hinge_embedding_loss``.
  """
  fn = "hinge_embedding_loss"
  predictions = _checks.floating(fn, "predictions", predictions)
  targets = _checks.numeric(fn, "targets", targets)
  not_nan(fn, "predictions", predictions)
  _signs(fn, "targets", targets)
  targets = _checks.conform(fn, "targets", targets, "predictions",
                            predictions.shape)
  x = predictions.astype(_reduction.stat_dtype(predictions.dtype))
  margin = _jit.cast(margin, x.dtype)
  t = targets.astype(x.dtype)

  def exact(x, t, margin):
    return (jnp.where(t != 1, clamp_min_zero(margin - x), 0)
            + jnp.where(t != -1, x, 0))

  # GPUs fuse the selects with a caller's sum; XLA:CPU writes each
  # select's terms out (two arrays of the input's size) before summing.
  if jax.default_backend() != "cpu":
    loss = exact(x, t, margin)
  else:
    loss = _value_form.value_form(_hinge_embedding_value)(exact)(x, t, margin)
  return _reduction.reduce(fn, loss, reduction)


def _hinge_embedding_value(x, t, margin):
  """:func:`hinge_embedding_loss`'s terms with no select or comparison.

  ``min(|t - 1| * 2**(nmant + 2), 1)`` is 0 at ``t = 1`` and 1 at any other
  ``t`` (the nearest other number is ``2**-(nmant + 1)`` away), alike for
  ``t = -1``: each term's indicator. A term whose indicator is 0 is clamped
  to finite numbers first, so that an infinite distance or margin gives
  ``0 * max``, not ``0 * inf``. A NaN target gives NaN (the selects read it
  as neither sign: both terms).
  """
  scale = np.asarray(2.0 ** (jnp.finfo(x.dtype).nmant + 2), x.dtype)
  hinge_on = jnp.minimum(jnp.abs(t - 1) * scale, 1)
  distance_on = jnp.minimum(jnp.abs(t + 1) * scale, 1)
  # Both indicators are in [0, 1] (or NaN).
  cap = _rows.cap_unless_zero(distance_on, nonnegative=True)
  return (hinge_on * jnp.minimum(
      jnp.maximum(margin - x, 0), _rows.cap_unless_zero(hinge_on,
                                                        nonnegative=True))
          + distance_on * jnp.clip(x, -cap, cap))


_TORCH_COSINE_EPS = 1e-12


@_jit.jit("reduction", margin=_jit.REAL)
def cosine_embedding_loss(input1, input2, target, *, margin=0.0,
                          reduction="none"):
  r"""Cosine embedding loss: align pairs with target 1, separate those with -1.

  .. math::
    \ell = \begin{cases} 1 - \cos(x_1, x_2) & y = 1 \\
      \max(0, \cos(x_1, x_2) - m) & y = -1 \end{cases},\qquad
    \cos(x_1, x_2) = \frac{\langle x_1, x_2\rangle}
      {\sqrt{(\|x_1\|^2 + 10^{-12})(\|x_2\|^2 + 10^{-12})}}

  torch's :math:`10^{-12}` keeps zero vectors finite (cosine 0). Targets
  other than 1 and -1 give 0, as torch (:func:`jaxloss.checked` rejects
  them).

  Args:
    input1: floating [..., dim] vectors (torch: [N, D] or [D]).
    input2: floating vectors that broadcast to the shape of ``input1``
      without enlarging it.
    target: :math:`y` (numeric) that broadcasts to ``input1``'s batch shape,
      its shape without the last axis.
    margin: :math:`m`, usually in [-1, 1]; traced or concrete.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> x1 = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    >>> x2 = jnp.array([[0.0, 1.0], [1.0, 1.0]])
    >>> print(jaxloss.cosine_embedding_loss(x1, x2, jnp.array([1, -1]),
    ...                                     margin=0.5))
    [1.  0.5]

  References:
    ``torch.nn.CosineEmbeddingLoss`` /
    ``torch.nn.functional.cosine_embedding_loss``.
  """
  fn = "cosine_embedding_loss"
  input1, input2 = _floats(fn, [("input1", input1), ("input2", input2)],
                           upcast=False)
  _checks.at_least_rank(fn, "input1", input1, 1)
  target = _checks.numeric(fn, "target", target)
  _signs(fn, "target", target)
  target = _rows.row_labels(fn, "target", target, "input1", input1.shape,
                           input1.shape[:-1])
  dot, squared1, squared2 = _row_sums(input1, input2, (-1,))
  norm1 = jnp.sqrt(squared1 + _TORCH_COSINE_EPS)
  norm2 = jnp.sqrt(squared2 + _TORCH_COSINE_EPS)
  cos = dot / (norm1 * norm2)
  margin = _jit.cast(margin, cos.dtype)
  # One select in another: XLA:CPU computes the two branches of a sum of
  # selects in loops of their own.
  loss = jnp.where(target == 1, 1 - cos,
                   jnp.where(target == -1, clamp_min_zero(cos - margin), 0))
  return _reduction.reduce(fn, loss, reduction)


# ---------------------------------------------------------------------------
# Contrastive losses.



def _whole(x):
  """``x`` gathered on every device, where a mesh of explicit axes shards it.

  Under such a mesh the sharding is part of the array's type, and a product
  of the batch with itself has no sharding rule until one side is whole.
  Elsewhere ``x`` is returned as it is (the compiler gathers what it needs).
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec()))


@_jit.jit(temperature=_jit.POSITIVE)
def ntxent(embeddings, labels, temperature=0.07):
  r"""Normalized temperature-scaled cross entropy (NT-Xent, SimCLR).

  With cosine similarities :math:`s_{ij}` scaled by :math:`1/\tau`, positive
  pairs :math:`P` (same label, :math:`i \ne j`) and negatives :math:`N(i)`
  (other labels):

  .. math::
    \ell = \frac{1}{|P|} \sum_{(i, j) \in P} -\log
      \frac{e^{s_{ij}}}{e^{s_{ij}} + \sum_{k \in N(i)} e^{s_{ik}}}

  computed with ``logaddexp`` and ``logsumexp``. A batch without positive
  pairs gives 0 with zero gradient (``optax.losses.ntxent``: NaN); rows
  without negatives contribute 0 with exact zero gradients.

  Args:
    embeddings: floating [batch, dim] embeddings.
    labels: [batch] group labels (numeric); equal labels are positive pairs.
      A single label, shape (1,), broadcasts to the batch.
    temperature: :math:`\tau > 0`, traced or concrete: a number or a
      (learnable) scalar array.

  Returns:
    float32 scalar (float64 for float64 input): the mean over positive
    pairs, as optax.

  Example:
    >>> import jaxloss
    >>> z = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> print(jaxloss.ntxent(z, jnp.array([0, 0, 1, 1]), 0.5))
    0.2965

  References:
    Chen et al., `A Simple Framework for Contrastive Learning of Visual
    Representations <https://arxiv.org/abs/2002.05709>`_, 2020;
    ``optax.losses.ntxent``, which this equals where positive pairs exist.
  """
  fn = "ntxent"
  embeddings = _checks.floating(fn, "embeddings", embeddings)
  if embeddings.ndim != 2:
    _checks.fail(fn, f"embeddings must have shape [batch, dim], got shape "
                 f"{embeddings.shape}")
  labels = _checks.numeric(fn, "labels", labels)
  labels = _rows.row_labels(fn, "labels", labels, "embeddings",
                           embeddings.shape, embeddings.shape[:-1])
  not_nan(fn, "embeddings", embeddings)
  not_nan(fn, "labels", labels)
  x = embeddings.astype(_reduction.stat_dtype(embeddings.dtype))
  eps = jnp.finfo(x.dtype).eps
  unit = _unit(x, (1,), None, eps)
  # Every row meets every other: the columns' side is the whole batch.
  sims = (unit @ _whole(unit).T) / _jit.cast(temperature, x.dtype)
  same = labels[:, None] == _whole(labels)[None, :]
  positive = same & ~jnp.eye(len(labels), dtype=bool)
  total = _ntxent_pairs(sims, same, positive)
  count = jnp.sum(positive, dtype=sims.dtype)
  return total / jnp.maximum(count, 1)


def _ntxent_pairs_value(sims, same, positive):
  # Each mask is applied once, as a bound: the negatives' similarities with
  # -inf elsewhere, the positive pairs' with +inf elsewhere, so that the
  # exponentials' sum and the pairs' softplus(lse - s) read 0 there with
  # no select, and XLA:CPU fuses both with their sums (selects kept the
  # exponentials and the pairs' logaddexp in loops of their own: 1.5x to 2x
  # this form's time on [1024, 16] and [1024, 128] embeddings, 1.16x on
  # [512, 1024]). A row without negatives has lse = log 0 + 0 = -inf, its
  # pairs softplus(-inf) = 0. Not _rows.logsumexp: its floored maximum
  # kept one more [batch] vector, over optax's temporaries, and it has no
  # identity for an empty batch.
  below = jnp.where(same, -jnp.inf, sims)
  top = jnp.max(below, axis=1, initial=-jnp.inf)
  top = jnp.where(jnp.isfinite(top), top, 0)
  lse_neg = jnp.log(jnp.sum(jnp.exp(below - top[:, None]), axis=1)) + top
  z = lse_neg[:, None] - jnp.where(positive, sims, jnp.inf)
  return jnp.sum(jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z))))


@_value_form.value_form(_ntxent_pairs_value)
def _ntxent_pairs(sims, same, positive):
  """The sum over positive pairs of ``logaddexp(s_ij, lse over the
  negatives of i) - s_ij``; a row without negatives contributes 0, with
  exact zero gradients."""
  negative = ~same
  has_negative = jnp.any(negative, axis=1, keepdims=True)
  # Rows without negatives take a harmless logsumexp over every entry, then
  # -inf: logaddexp(s, -inf) = s with zero gradient into the fallback.
  lse_neg = jax.nn.logsumexp(
      sims, axis=1, keepdims=True,
      where=jnp.where(has_negative, negative, True))
  lse_neg = jnp.where(has_negative, lse_neg, -jnp.inf)
  lse_neg = jnp.broadcast_to(lse_neg, sims.shape)
  safe_sims = jnp.where(positive, sims, 0)
  pair_loss = jnp.logaddexp(safe_sims, lse_neg) - safe_sims
  return jnp.sum(jnp.where(positive, pair_loss, 0))


def _circle_form(logsumexp):
  """Circle loss's rows, each side's log-sum-exp taken by ``logsumexp``
  (``where`` None: every entry)."""
  def rows(s_p, s_n, margin, gamma, where_p, where_n):
    alpha_p = jnp.maximum(1 + margin - lax.stop_gradient(s_p), 0)
    alpha_n = jnp.maximum(lax.stop_gradient(s_n) + margin, 0)
    lse_p = logsumexp(-gamma * alpha_p * (s_p - (1 - margin)), where_p)
    lse_n = logsumexp(gamma * alpha_n * (s_n - margin), where_n)
    return jax.nn.softplus(lse_p + lse_n)
  return rows


def _select_free_logsumexp(logits, where):
  return _rows.logsumexp(logits, where)[..., 0]


def _masked_logsumexp(logits, where):
  return jax.nn.logsumexp(logits, axis=-1, where=where)


# The value's log-sum-exps have no select on the scores (a mask is applied
# once, as a -inf bound), so that XLA:CPU fuses them with their sums:
# jax.nn.logsumexp's selects had it write each side's logits out, in
# float32 for half-precision scores (32 MiB of temporaries on [16384, 256]
# scores, against none now; in one process this form takes 0.61x their
# value's time in float32 and 0.69x in bfloat16 there, 0.79x and 0.60x on
# [262144, 16]). XLA:CPU fuses so from 4096 rows (jax 0.10); on fewer it
# writes the logits out for either form ([512, 8192]: the same time).
# Its derivatives are jax.nn.logsumexp's: the select-free form's gradient
# took 1.25x to 1.35x their time.
_circle_rows = _value_form.value_form(_circle_form(_select_free_logsumexp))(
    _circle_form(_masked_logsumexp))


@_jit.jit("reduction", margin=_jit.REAL, gamma=_jit.NON_NEGATIVE)
def circle_loss(positive_scores, negative_scores, *, margin=0.4, gamma=80.0,
                positive_where=None, negative_where=None, reduction="none"):
  r"""Circle loss on similarity scores: self-paced pair weighting.

  For each anchor, similarities :math:`s_p` to its positives and
  :math:`s_n` to its negatives (cosines, in [-1, 1]):

  .. math::
    \ell = \mathrm{softplus}\Big(
      \mathrm{logsumexp}_j\, \gamma\, \alpha_n^j (s_n^j - m)
      + \mathrm{logsumexp}_i\, {-\gamma}\, \alpha_p^i (s_p^i - 1 + m)\Big)

  with weights :math:`\alpha_p = [1 + m - s_p]_+` and
  :math:`\alpha_n = [s_n + m]_+` held constant in the gradient with respect
  to the scores (as the paper's official code; Keras differentiates through
  them), not in the gradient with respect to :math:`m`. That is
  :math:`\log[1 + \sum_j e^{\gamma \alpha_n^j (s_n^j - \Delta_n)}
  \sum_i e^{-\gamma \alpha_p^i (s_p^i - \Delta_p)}]` with
  :math:`\Delta_p = 1 - m`, :math:`\Delta_n = m`, computed without overflow
  for any :math:`\gamma`. An anchor without positives or without negatives
  costs 0, with zero gradient.

  To score a batch of embeddings ``z`` with integer ``labels`` against
  itself, as ``keras.losses.Circle`` does: ``s = u @ u.T`` for unit rows
  ``u``, ``same = labels[:, None] == labels[None, :]``, then
  ``circle_loss(s, s, positive_where=same & ~eye, negative_where=~same)``.

  Args:
    positive_scores: floating [..., P] similarities to positives.
    negative_scores: floating [..., N] similarities to negatives; the batch
      shapes ``[...]`` must match.
    margin: relaxation :math:`m`, traced or concrete (Keras's default 0.4;
      the paper uses 0.25 for face recognition).
    gamma: scale :math:`\gamma \ge 0`, traced or concrete (Keras's default
      80; the paper uses 256 for faces).
    positive_where: optional boolean mask that broadcasts to the shape of
      ``positive_scores``: which positives count.
    negative_where: optional boolean mask that broadcasts to the shape of
      ``negative_scores``.
    reduction: ``"none"``, ``"mean"`` (over anchors with at least one
      positive and one negative) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the batch shape for
    ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> s_p = jnp.array([[0.8, 0.6], [0.9, 0.9]])
    >>> s_n = jnp.array([[0.3, -0.2, 0.1], [0.0, 0.1, 0.0]])
    >>> print(jaxloss.circle_loss(s_p, s_n, margin=0.25, gamma=32.0))
    [4.2814 0.1573]

  References:
    Sun et al., `Circle Loss: A Unified Perspective of Pair Similarity
    Optimization <https://arxiv.org/abs/2002.10857>`_, 2020;
    ``keras.losses.Circle``, which computes this on a batch of embeddings
    and labels (the reduction above).
  """
  fn = "circle_loss"
  s_p = _checks.floating(fn, "positive_scores", positive_scores)
  s_n = _checks.floating(fn, "negative_scores", negative_scores)
  _checks.at_least_rank(fn, "positive_scores", s_p, 1)
  _checks.at_least_rank(fn, "negative_scores", s_n, 1)
  if s_p.shape[:-1] != s_n.shape[:-1]:
    _checks.fail(fn, f"positive_scores shape {s_p.shape} and negative_scores "
                 f"shape {s_n.shape} must share their batch shape (all but "
                 "the last axis)")
  dtype = _reduction.stat_dtype(jnp.result_type(s_p, s_n))
  s_p, s_n = s_p.astype(dtype), s_n.astype(dtype)
  margin = _jit.cast(margin, dtype)
  gamma = _jit.cast(gamma, dtype)

  def kept(where, name, arg, scores):
    if where is not None:
      where = _checks.boolean(fn, name, where)
      where = _checks.conform(fn, name, where, arg, scores.shape)
    not_nan(fn, arg, scores, where)
    if where is None:
      return None, None
    any_kept = jnp.any(where, axis=-1)
    # An empty row reads every entry (finite), and its result is discarded.
    return where | ~any_kept[..., None], any_kept

  where_p, keep_p = kept(positive_where, "positive_where", "positive_scores",
                         s_p)
  where_n, keep_n = kept(negative_where, "negative_where", "negative_scores",
                         s_n)
  loss = _circle_rows(s_p, s_n, margin, gamma, where_p, where_n)
  keep = keep_p if keep_n is None else (
      keep_n if keep_p is None else keep_p & keep_n)
  loss = _reduction.mask(loss, keep)
  return _reduction.reduce(fn, loss, reduction, keep=keep)
