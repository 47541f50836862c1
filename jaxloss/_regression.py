"""Regression losses: optax's, torch.nn.functional's and Keras's.

The shape contract: a loss's element shape is the shape of ``predictions``.
``targets``, ``weight`` and array hyperparameters may broadcast to it (NumPy's
rules, aligned from the right) but never enlarge it, so [N] against [N, 1]
is an error in both directions (``_checks.conform``).
"""

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


def not_nan(fn, name, x, keep=None):
  """Under ``checked``: no NaN in ``x`` (where ``keep``, if given)."""
  if _checks.checking() and jnp.issubdtype(x.dtype, jnp.inexact):
    ok = ~jnp.isnan(x)
    _checks.values(fn, name, ok if keep is None else ok | ~keep,
                   "must not be NaN", x)


def non_negative(fn, name, x):
  """Under ``checked``: ``x >= 0`` (NaN fails)."""
  if _checks.checking():
    _checks.values(fn, name, x >= 0, "must be non-negative", x)


def _complex_or_floating(fn, name, x):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    _checks.fail(fn, f"{name} must have a floating or complex dtype, got "
                 f"{x.dtype}", TypeError)
  return x


def _numeric_or_complex(fn, name, x):
  x = jnp.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
    _checks.fail(fn, f"{name} must be numeric, got {x.dtype}", TypeError)
  return x


def pair(fn, predictions, targets, *, complex_ok=False, upcast=True):
  """Checked ``predictions`` and ``targets`` (or None) in the loss dtype.

  ``targets`` broadcasts to the shape of ``predictions``, never enlarging
  it; half precision is computed in float32. ``upcast=False`` leaves both
  in their own dtypes (for forms that upcast in their own passes).
  """
  if complex_ok:
    predictions = _complex_or_floating(fn, "predictions", predictions)
  else:
    predictions = _checks.floating(fn, "predictions", predictions)
  not_nan(fn, "predictions", predictions)
  if targets is None:
    return predictions.astype(_reduction.stat_dtype(predictions.dtype)), None
  targets = (_numeric_or_complex if complex_ok else _checks.numeric)(
      fn, "targets", targets)
  not_nan(fn, "targets", targets)
  dtype = _reduction.stat_dtype(jnp.result_type(predictions, targets))
  targets = _checks.conform(fn, "targets", targets, "predictions",
                            predictions.shape)
  if not upcast:
    return predictions, targets
  return predictions.astype(dtype), targets.astype(dtype)


def _errors(predictions, targets):
  return predictions if targets is None else predictions - targets


def _weighted(fn, loss, weight, reduction):
  """Applies per-element weights; ``"mean"`` divides by their sum (torch)."""
  if weight is None:
    return _reduction.reduce(fn, loss, reduction)
  weight = _checks.numeric(fn, "weight", weight)
  weight = _checks.conform(fn, "weight", weight, "predictions", loss.shape)
  weight = weight.astype(loss.dtype)
  return _reduction.reduce(fn, loss * weight, reduction, denominator=weight)


@jax.custom_jvp
def abs_zero_slope(x):
  """``|x|`` with slope 0 at 0, as torch (``jnp.abs`` has slope 1 there).

  The derivative is written out, ``sign(x)``: reverse mode then recomputes
  it from ``x`` where autodiff of ``sign(x) * x`` would keep it.
  """
  return jnp.abs(x)


@abs_zero_slope.defjvp
@_jit.inlined
def _abs_zero_slope_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return jnp.abs(x), jnp.sign(x) * dx


@jax.custom_jvp
def clamp_min_zero(x):
  """``max(x, 0)`` with torch's ``clamp_min`` slope: 1 from ``x = 0`` on
  (``jnp.maximum`` splits a tie, 1/2 each side). A NaN stays NaN, with
  slope 0, as torch's.

  The value alone is ``jnp.maximum`` (a select there costs XLA:CPU 1.3x);
  under differentiation it is the select ``x < 0 ? 0 : x``, whose derivative
  is the slope (a rule that paired the maximum with a select kept one more
  array for the gradient).
  """
  return jnp.maximum(x, 0)


@clamp_min_zero.defjvp
@_jit.inlined
def _clamp_min_zero_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return jnp.where(x < 0, 0, x), jnp.where(x >= 0, dx, 0)


def _modulus(z):
  """``|z|`` of complex ``z``, with gradient 0 (not NaN) at 0, as torch."""
  nonzero = z != 0
  return jnp.where(nonzero, jnp.abs(jnp.where(nonzero, z, 1)), 0)


@jax.custom_jvp
def _xlogy(y, x):
  """``y log x``, 0 where ``y = 0``: ``d/dx = 0`` there, ``d/dy = log x``.

  ``jax.scipy.special.xlogy`` has the value but a NaN ``d/dx`` at
  ``x = y = 0``; here that point reads ``log 1`` (value 0, gradients 0).

  The value alone is arithmetic, ``y log(x + [y = 0])``, which XLA:CPU
  fuses with a sum (a select would have it write the terms out first, and
  compile one more loop); under differentiation it is the select. Both read
  ``log 1`` at a zero ``y`` for ``x`` in (-1, 0], and NaN below: a rate out
  of the domain.
  """
  return y * jnp.log(x + _rows.zero_flag(y))


def _xlogy_jvp(primals, tangents):
  (y, x), (dy, dx) = primals, tangents
  safe_x = jnp.where((y == 0) & (x <= 0) & (x > -1), 1, x)
  log_x = jnp.log(safe_x)
  tangent = jnp.zeros_like(log_x)
  if not isinstance(dy, SymbolicZero):
    tangent = tangent + log_x * dy
  if not isinstance(dx, SymbolicZero):
    # No select on dx: y is 0 wherever x was replaced.
    tangent = tangent + y / safe_x * dx
  return y * log_x, tangent


_xlogy.defjvp(_jit.inlined(_xlogy_jvp), symbolic_zeros=True)


@jax.custom_jvp
def _xlogy_positive(y, x):
  """``y log x`` for ``x > 0`` (a rate plus an epsilon known positive): no
  guard in the value; the derivatives are :func:`_xlogy`'s, which XLA:CPU
  fuses with the value's sum (autodiff's kept a temporary of the input's
  size)."""
  return y * jnp.log(x)


_xlogy_positive.defjvp(_jit.inlined(_xlogy_jvp), symbolic_zeros=True)


def _huber(abs_errors, delta):
  quadratic = jnp.minimum(abs_errors, delta)
  # |e| - min(|e|, delta), not max(|e| - delta, 0): one gradient path, so the
  # kink at |e| = delta is not counted twice.
  return 0.5 * quadratic**2 + delta * (abs_errors - quadratic)


# ---------------------------------------------------------------------------
# optax.losses names.


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart="half")
def squared_error(predictions, targets=None, *, reduction="none"):
  r"""Squared error :math:`(\hat y - y)^2`, element by element.

  .. math::
    \ell = (\hat y - y)^2

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it; None reads as zeros.
    reduction: ``"none"``, ``"mean"`` (the mean squared error) or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p, y = jnp.array([1.0, 2.0]), jnp.array([0.5, 4.0])
    >>> print(jaxloss.squared_error(p, y))
    [0.25 4.  ]

  References:
    ``optax.losses.squared_error``, which requires equal shapes (here
    ``targets`` may broadcast to the shape of ``predictions``) and keeps half
    precision (here float32 comes out).
  """
  fn = "squared_error"
  predictions, targets = pair(fn, predictions, targets)
  return _reduction.reduce(fn, _errors(predictions, targets)**2, reduction)


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart="half")
def l2_loss(predictions, targets=None, *, reduction="none"):
  r"""Half the squared error, :math:`\tfrac12 (\hat y - y)^2`.

  .. math::
    \ell = \tfrac12 (\hat y - y)^2

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it; None reads as zeros.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.l2_loss(jnp.array([1.0, 2.0]), jnp.array([0.5, 4.0])))
    [0.125 2.   ]

  References:
    ``optax.losses.l2_loss``.
  """
  fn = "l2_loss"
  predictions, targets = pair(fn, predictions, targets)
  return _reduction.reduce(fn, 0.5 * _errors(predictions, targets)**2,
                           reduction)


@jax.custom_jvp
def _huber_loss(e, delta):
  # Arithmetic only: XLA:CPU fuses it with the reduction, no temporaries.
  a = jnp.abs(e)
  quadratic = jnp.minimum(a, delta)
  return 0.5 * quadratic**2 + delta * (a - quadratic)


def _huber_loss_jvp(primals, tangents):
  # The same value ending in a select: under differentiation XLA:CPU then
  # computes it in one loop, where the arithmetic form is split by the
  # reduction into arrays kept for the gradient; the gradient, written out,
  # reads e alone. d/de: e clipped to [-delta, delta], 0 at e = 0 (torch's
  # slope); d/ddelta: |e| - delta beyond delta, else 0.
  (e, delta), (de, ddelta) = primals, tangents
  a = jnp.abs(e)
  out = jnp.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta))
  tangent = jnp.zeros_like(out)
  if not isinstance(de, SymbolicZero):
    tangent = tangent + jnp.clip(e, -delta, delta) * de
  if not isinstance(ddelta, SymbolicZero):
    tangent = tangent + (a - jnp.minimum(a, delta)) * ddelta
  return out, tangent


_huber_loss.defjvp(_jit.inlined(_huber_loss_jvp), symbolic_zeros=True)


@_jit.jit("reduction", delta=_jit.Hyper(0.0, low_open=True, high_open=True,
                                      array=True))
@_reduction.elementwise(derivatives_apart=True)
def huber_loss(predictions, targets=None, *, delta=1.0, reduction="none"):
  r"""Huber loss: quadratic within ``delta`` of the target, linear beyond.

  With :math:`e = \hat y - y`:

  .. math::
    \ell = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\
      \delta (|e| - \tfrac12 \delta) & |e| > \delta \end{cases}

  Its gradient is the error clipped to :math:`[-\delta, \delta]`.

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it; None reads as zeros.
    delta: :math:`\delta > 0`, traced or concrete: a number, or an array
      that broadcasts to the shape of ``predictions``. A concrete
      :math:`\delta \le 0` raises ``ValueError``, as torch does.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.huber_loss(jnp.array([0.5, 3.0]), jnp.array([0.0, 0.0])))
    [0.125 2.5  ]

  References:
    ``optax.losses.huber_loss``; ``torch.nn.HuberLoss(delta=delta)`` is
    ``huber_loss(input, target, delta=delta, reduction="mean")``.
  """
  fn = "huber_loss"
  predictions, targets = pair(fn, predictions, targets)
  errors = _errors(predictions, targets)
  delta = _checks.conform(fn, "delta", _jit.cast(delta, errors.dtype),
                          "predictions", errors.shape)
  return _reduction.reduce(fn, _huber_loss(errors, delta), reduction)


@jax.custom_jvp
def _log_cosh(e):
  # log cosh a = log1p(h^2 / (2 (1 + h))), h = expm1(a): cosh a - 1 in a form
  # without cancellation, exact to a few ulps at every size. Past a = 9 (20 in
  # float64), e^{-2a} is below half an ulp of log cosh a = a - log 2 +
  # log1p(e^{-2a}): the rest of a is added as is, so h never overflows.
  a = jnp.abs(e)
  clipped = jnp.minimum(a, 9.0 if e.dtype.itemsize < 8 else 20.0)
  h = jnp.expm1(clipped)
  return (a - clipped) + jnp.log1p(h * h / (2 * (1 + h)))


@_log_cosh.defjvp
@_jit.inlined
def _log_cosh_jvp(primals, tangents):
  (e,), (t,) = primals, tangents
  return _log_cosh(e), jnp.tanh(e) * t


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart=True)
def log_cosh(predictions, targets=None, *, reduction="none"):
  r"""Log of the hyperbolic cosine of the error, accurate at every size.

  .. math::
    \ell = \log\cosh(\hat y - y)

  About :math:`e^2/2` for small errors and :math:`|e| - \log 2` for large
  ones, with gradient :math:`\tanh e`. It is computed as
  :math:`\mathrm{log1p}\big(h^2 / (2(1 + h))\big)`, :math:`h = e^{|e|} - 1`
  (``expm1``), which keeps full relative precision:
  ``optax.losses.log_cosh`` computes :math:`\log(e^{e} + e^{-e}) - \log 2`,
  which cancels to 0 below :math:`|e| \approx 3\cdot10^{-4}` in float32 and is
  7% off at :math:`10^{-3}`. Beyond :math:`|e| = 9` (20 in float64), where
  :math:`\log\cosh e = |e| - \log 2` to the last bit, the excess of
  :math:`|e|` is added as is: finite up to the largest float (``inf`` at
  ``inf``, gradient 1).

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it; None reads as zeros.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.log_cosh(jnp.array([1e-4, 1.0, 100.0])))
    [5.0000e-09 4.3378e-01 9.9307e+01]

  References:
    Chen et al., `Log Hyperbolic Cosine Loss Improves Variational
    Auto-Encoder <https://openreview.net/pdf?id=rkglvsC9Ym>`_, 2019;
    ``optax.losses.log_cosh``, which this matches away from small errors.
  """
  fn = "log_cosh"
  predictions, targets = pair(fn, predictions, targets)
  return _reduction.reduce(fn, _log_cosh(_errors(predictions, targets)),
                           reduction)


# ---------------------------------------------------------------------------
# torch.nn.functional names.


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart="half")
def l1_loss(predictions, targets, *, weight=None, reduction="none"):
  r"""Absolute error, with optional per-element weights, as torch's ``L1Loss``.

  .. math::
    \ell = w\, |\hat y - y|,\qquad
    \ell_\mathrm{mean} = \frac{\sum w\, |\hat y - y|}{\sum w}

  Without ``weight`` the mean divides by the number of elements. With it,
  ``"mean"`` divides by the sum of the weights (broadcast to the loss shape),
  as ``torch.nn.functional.l1_loss(..., weight=w)`` does in torch 2.13; a zero
  weight sum gives 0 (torch: NaN). The gradient at a zero error is 0.

  Complex ``predictions`` (and ``targets``) are accepted, as torch's
  ``L1Loss`` does: the loss is the modulus :math:`|\hat y - y|`, real. Its
  gradient follows JAX's convention for a real function of a complex
  variable, :math:`\partial_x \ell - i\, \partial_y \ell`, the complex
  conjugate of the ``.grad`` torch reports.

  Args:
    predictions: floating or complex array of any shape.
    targets: numeric or complex array that broadcasts to the shape of
      ``predictions`` without enlarging it.
    weight: optional real per-element weights that broadcast to the shape of
      ``predictions`` (torch requires that exact shape).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 or complex128 input): the shape of
    ``predictions`` for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p, y = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 0.0, 0.0])
    >>> print(jaxloss.l1_loss(p, y, reduction="mean"))
    2.0
    >>> print(jaxloss.l1_loss(p, y, weight=jnp.array([1.0, 1.0, 2.0]),
    ...                       reduction="mean"))
    2.25

  References:
    ``torch.nn.L1Loss`` / ``torch.nn.functional.l1_loss``.
  """
  fn = "l1_loss"
  predictions, targets = pair(fn, predictions, targets, complex_ok=True)
  errors = predictions - targets
  loss = (_modulus(errors) if jnp.issubdtype(errors.dtype, jnp.complexfloating)
          else abs_zero_slope(errors))
  return _weighted(fn, loss, weight, reduction)


@_jit.jit("reduction")
@_reduction.elementwise(derivatives_apart="half")
def mse_loss(predictions, targets, *, weight=None, reduction="none"):
  r"""Squared error, with optional per-element weights, as torch's ``MSELoss``.

  .. math::
    \ell = w\, (\hat y - y)^2,\qquad
    \ell_\mathrm{mean} = \frac{\sum w\, (\hat y - y)^2}{\sum w}

  Without ``weight`` the mean divides by the number of elements. With it,
  ``"mean"`` divides by the sum of the weights (broadcast to the loss shape),
  as ``torch.nn.functional.mse_loss(..., weight=w)`` does in torch 2.13; a
  zero weight sum gives 0 (torch: NaN).

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it.
    weight: optional per-element weights that broadcast to the shape of
      ``predictions`` (torch requires that exact shape).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p, y = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 0.0, 0.0])
    >>> print(jaxloss.mse_loss(p, y, reduction="mean"))
    4.6667
    >>> print(jaxloss.mse_loss(p, y, weight=jnp.array([1.0, 1.0, 2.0]),
    ...                        reduction="mean"))
    5.75

  References:
    ``torch.nn.MSELoss`` / ``torch.nn.functional.mse_loss``;
    ``optax.losses.squared_error`` is the unweighted ``"none"`` case.
  """
  fn = "mse_loss"
  predictions, targets = pair(fn, predictions, targets)
  return _weighted(fn, (predictions - targets)**2, weight, reduction)


@_jit.jit("reduction", beta=_jit.NON_NEGATIVE)
@_reduction.elementwise(flat_derivatives=_reduction.FLAT_BELOW)
def smooth_l1_loss(predictions, targets, *, beta=1.0, reduction="none"):
  r"""Smooth L1 loss: quadratic within ``beta`` of the target, L1 beyond.

  With :math:`e = \hat y - y`:

  .. math::
    \ell = \begin{cases} \tfrac12 e^2 / \beta & |e| < \beta \\
      |e| - \tfrac12 \beta & |e| \ge \beta \end{cases}

  which is :func:`huber_loss` with :math:`\delta = \beta`, divided by
  :math:`\beta`; ``beta=0`` is the L1 loss (a concrete 0 computes only
  that), also when a traced ``beta`` is 0. The gradient with respect to
  ``beta`` is :math:`-\tfrac12` on the linear part, and
  :math:`-e^2 / (2\beta^2)` on the quadratic one.

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it.
    beta: :math:`\beta \ge 0`, traced or concrete (a concrete negative
      value raises ``ValueError``, as torch does).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.smooth_l1_loss(jnp.array([0.5, 3.0]), jnp.zeros(2)))
    [0.125 2.5  ]

  References:
    ``torch.nn.SmoothL1Loss`` / ``torch.nn.functional.smooth_l1_loss``;
    Girshick, `Fast R-CNN <https://arxiv.org/abs/1504.08083>`_, 2015.
  """
  fn = "smooth_l1_loss"
  predictions, targets = pair(fn, predictions, targets)
  abs_errors = abs_zero_slope(predictions - targets)
  if _jit.is_zero(beta):
    return _reduction.reduce(fn, abs_errors, reduction)
  beta = _jit.cast(beta, abs_errors.dtype)
  linear = abs_errors > beta
  # The quadratic branch divides by beta only where it is taken: it is only
  # taken at |e| <= beta, and beta = 0 (traced) leaves it |e| = 0, where the
  # division by 1 gives 0 and no gradient into beta. It reads 0 where the
  # linear branch is taken: at an infinite error its derivative would be
  # inf times the zero cotangent, NaN.
  safe_beta = jnp.where(linear | (beta == 0), 1, beta)
  quadratic = jnp.where(linear, 0, abs_errors)
  loss = jnp.where(linear, abs_errors - 0.5 * beta,
                   0.5 * quadratic**2 / safe_beta)
  return _reduction.reduce(fn, loss, reduction)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@_jit.jit("log_input", "full", "reduction", eps=_jit.NON_NEGATIVE)
@_reduction.elementwise(derivatives_apart=True)
def poisson_nll_loss(predictions, targets, *, log_input=True, full=False,
                     eps=1e-8, reduction="none"):
  r"""Poisson negative log-likelihood, as torch's ``PoissonNLLLoss``.

  With rate :math:`\lambda` and count :math:`y`, up to the constant
  :math:`\log y!`:

  .. math::
    \ell = \begin{cases} e^{x} - y\, x & \texttt{log\_input}
      \ (x = \log\lambda) \\
      \lambda - y \log(\lambda + \varepsilon) & \text{otherwise} \end{cases}

  ``full=True`` adds Stirling's approximation of :math:`\log y!`,
  :math:`y \log y - y + \tfrac12 \log(2\pi y)`, only where :math:`y > 1`
  (torch's convention: 0 for counts 0 and 1, whose :math:`\log y!` is
  exactly 0). A zero count contributes :math:`0 \cdot \log(\cdot) = 0`,
  also at log-rate ``-inf`` (torch: NaN), with a zero gradient in the rate,
  even at rate 0 with :math:`\varepsilon = 0` (torch: NaN), and a finite
  gradient in the count with ``full=True`` (torch: NaN).

  Args:
    predictions: floating array: log-rates if ``log_input``, else rates.
    targets: counts (numeric) that broadcast to the shape of
      ``predictions`` without enlarging it.
    log_input: whether ``predictions`` are log-rates.
    full: add the Stirling term.
    eps: :math:`\varepsilon \ge 0`, traced or concrete, added to rates
      inside the log when ``log_input=False`` (torch also takes a negative
      ``eps``, and returns NaN for small rates; here a concrete one raises).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> log_rate = jnp.log(jnp.array([2.0, 0.5]))
    >>> print(jaxloss.poisson_nll_loss(log_rate, jnp.array([3.0, 0.0])))
    [-0.0794  0.5   ]

  References:
    ``torch.nn.PoissonNLLLoss`` / ``torch.nn.functional.poisson_nll_loss``.
  """
  fn = "poisson_nll_loss"
  log_input = _checks.flag(fn, "log_input", log_input)
  full = _checks.flag(fn, "full", full)
  predictions, targets = pair(fn, predictions, targets, upcast=False)
  if not log_input:
    non_negative(fn, "predictions", predictions)
  non_negative(fn, "targets", targets)
  dtype = _reduction.stat_dtype(jnp.result_type(predictions, targets))

  def form(terms, apart=False, converts=False):
    def loss(x, y):
      # Upcast in each form's own pass (see _reduction.reduce_terms); with
      # ``apart`` behind one barrier, so that the gradient's conversions
      # are not the value's. ``terms`` that ``converts`` takes the inputs
      # as given.
      if apart:
        x, y = lax.optimization_barrier((x, y))
      out = terms(x, y) if converts else terms(x.astype(dtype),
                                                y.astype(dtype))
      if full:
        y = y.astype(dtype)
        big = y > 1
        y = jnp.where(big, y, 2)
        stirling = y * jnp.log(y) - y + 0.5 * jnp.log(y) + _HALF_LOG_2PI
        out = out + jnp.where(big, stirling, 0)
      return out
    return loss

  if log_input:
    # The plain formula is exact unless NaN: 0 * -inf, a zero count at
    # log-rate -inf, where the exact terms read 0.
    return _reduction.reduce_terms(
        fn, form(lambda x, y: jnp.exp(x) - y * x),
        form(_poisson_log_terms, apart=reduction != "none", converts=True),
        (predictions, targets), reduction)
  loss = form(lambda rates, y: rates - _rate_terms(
      y, rates, eps, _jit.known_positive("eps", eps)))(predictions, targets)
  return _reduction.reduce(fn, loss, reduction)


@jax.custom_jvp
def _poisson_log_terms(log_rate, counts):
  """``e^x - y x`` with a zero count at log-rate -inf (rate 0) costing 0,
  not ``0 * -inf``, and a positive one costing inf.

  No select: the log-rate is clamped at -max where the count is 0 (a cap
  that overflows to -inf, no clamp, wherever it is not), so that XLA fuses
  the terms with their sum. The derivatives are written out: ``e^x - y`` in
  the log-rate, finite at -inf, and ``-x`` in the count, 0 where the value
  reads 0. Half-precision inputs are upcast here, in the value's pass, and
  apart in the derivatives': sharing one conversion, XLA:CPU wrote both
  inputs and the exponentials out in float32 for the value's sum and the
  gradient's pass (48 MiB of temporaries on bfloat16 [16384, 256]).
  """
  dtype = _reduction.stat_dtype(jnp.result_type(log_rate, counts))
  log_rate, counts = log_rate.astype(dtype), counts.astype(dtype)
  floor = _rows.cap_unless_zero(counts, -1)
  return jnp.exp(log_rate) - counts * jnp.maximum(log_rate, floor)


def _poisson_log_terms_jvp(primals, tangents):
  (x, y), (dx, dy) = primals, tangents
  out = _poisson_log_terms(x, y)
  x, y = (_reduction.upcast_apart(a, out.dtype) for a in (x, y))
  d = jnp.zeros_like(out)
  if not isinstance(dx, SymbolicZero):
    d = d + (jnp.exp(x) - y) * dx.astype(out.dtype)
  if not isinstance(dy, SymbolicZero):
    d = d - jnp.where((y == 0) & jnp.isinf(x), 0, x) * dy.astype(out.dtype)
  return out, d


_poisson_log_terms.defjvp(_jit.inlined(_poisson_log_terms_jvp),
                          symbolic_zeros=True)


def _gaussian_var(fn, var, shape):
  """Broadcasts ``var`` to ``shape`` by torch's ``GaussianNLLLoss`` rules.

  None of them enlarges ``shape``. A scalar is accepted at every rank
  (torch: a Python number at every rank, a 0-d tensor only against 1-D
  input).
  """
  if var.ndim == 0 or var.shape == shape:
    return jnp.broadcast_to(var, shape)
  if var.shape == shape[:-1]:
    return jnp.broadcast_to(var[..., None], shape)
  if var.ndim == len(shape) and sum(
      v for s, v in zip(shape, var.shape) if s != v) == 1:
    return jnp.broadcast_to(var, shape)
  _checks.fail(fn, f"var shape {var.shape} does not fit predictions shape "
               f"{shape}: expected a scalar, that shape, that shape without "
               "its last dimension, or that shape with one dimension of "
               "size 1 (torch's rules)")


def _no_negative_var(predictions, targets, var, **_):
  """torch raises on a negative variance: here where it is known on the host."""
  del predictions, targets
  concrete = (int, float, list, tuple, np.ndarray, np.number)
  if (isinstance(var, concrete) and not isinstance(var, bool)
      and np.any(np.asarray(var) < 0)):
    _checks.fail("gaussian_nll_loss", "var must be non-negative, got a "
                 "negative entry")


@_jit.precheck(_no_negative_var)
@_jit.jit("full", "reduction", eps=_jit.NON_NEGATIVE)
@_reduction.elementwise
def gaussian_nll_loss(predictions, targets, var, *, full=False, eps=1e-6,
                      reduction="none"):
  r"""Gaussian negative log-likelihood with a predicted variance.

  .. math::
    \ell = \tfrac12 \left(\log \max(\sigma^2, \varepsilon)
      + \frac{(\hat y - y)^2}{\max(\sigma^2, \varepsilon)}\right)
      \;\left[+ \tfrac12 \log 2\pi\right]

  As torch's ``GaussianNLLLoss``: the clamp at :math:`\varepsilon` changes
  the value only, the gradient with respect to ``var`` passes straight
  through it (the gradient with respect to :math:`\varepsilon` is that of
  the clamped value: nonzero where :math:`\sigma^2 < \varepsilon`);
  ``var`` may have the shape of ``predictions``, that shape without its last
  dimension (one variance per row), or that shape with exactly one dimension
  of size 1; a scalar ``var`` is used everywhere.

  A negative variance raises ``ValueError`` when ``var`` is a Python number,
  list or NumPy array, as torch does; for JAX arrays (whose values are not
  known at trace time) its elements give NaN, and :func:`jaxloss.checked`
  raises.

  Args:
    predictions: floating array, the predicted means.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it.
    var: predicted variances :math:`\sigma^2 \ge 0` (see the shapes above).
    full: add the constant :math:`\tfrac12 \log 2\pi`.
    eps: variance clamp :math:`\varepsilon \ge 0`, traced or concrete
      (torch also takes a negative one, which clamps nothing, like 0).
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> mean = jnp.array([[0.0, 1.0], [2.0, 2.0]])
    >>> target = jnp.array([[0.5, 1.0], [0.0, 2.0]])
    >>> var = jnp.array([1.0, 4.0])   # one per row
    >>> print(jaxloss.gaussian_nll_loss(mean, target, var))
    [[0.125     0.       ]
     [1.1931472 0.6931472]]

  References:
    ``torch.nn.GaussianNLLLoss`` / ``torch.nn.functional.gaussian_nll_loss``;
    Nix and Weigend, `Estimating the mean and variance of the target
    probability distribution <https://doi.org/10.1109/ICNN.1994.374138>`_,
    1994.
  """
  fn = "gaussian_nll_loss"
  full = _checks.flag(fn, "full", full)
  predictions, targets = pair(fn, predictions, targets)
  var = _checks.numeric(fn, "var", var)
  non_negative(fn, "var", var)
  var = _gaussian_var(fn, var, predictions.shape).astype(predictions.dtype)
  eps = None if _jit.is_zero(eps) else _jit.cast(eps, var.dtype)
  loss = _gaussian_nll(predictions - targets, var, eps)
  if full:
    loss = loss + _HALF_LOG_2PI
  return _reduction.reduce(fn, loss, reduction)


def _gaussian_nll_value(errors, var, eps):
  # The log of the variance itself is NaN below 0, the negative variance's
  # flag, and the maximum keeps that NaN (XLA's propagates it): log(max(var,
  # eps)) is max(log var, log eps), the log monotonic, with no flag of its
  # own to compute (a square root per element took the value 1.2x the plain
  # formula's time). A negative eps clamps nothing: its log is -inf.
  if eps is None:
    return 0.5 * (jnp.log(var) + errors**2 / var)
  floor = jnp.log(jnp.maximum(eps, 0))
  return 0.5 * (jnp.maximum(jnp.log(var), floor)
                + errors**2 / jnp.maximum(var, eps))


@_value_form.value_form(_gaussian_nll_value)
def _gaussian_nll(errors, var, eps):
  """The Gaussian NLL of ``errors`` at variance ``var`` clamped to ``eps``
  (None: no clamp), NaN where ``var < 0``."""
  clamped = var
  if eps is not None:
    # torch clamps a clone under no_grad: the value is max(var, eps), the
    # gradient passes straight through to var; eps gets the clamp's own.
    clamped = jnp.where(var < eps, eps + (var - lax.stop_gradient(var)), var)
  loss = 0.5 * (jnp.log(clamped) + errors**2 / clamped)
  # torch raises on a negative variance; under jit the flag is a NaN.
  return jnp.where(var < 0, jnp.nan, loss)


# ---------------------------------------------------------------------------
# Keras names.

_KERAS_EPSILON = 1e-7


@_jit.jit("reduction", epsilon=_jit.POSITIVE)
@_reduction.elementwise(derivatives_apart=True)
def mean_absolute_percentage_error(predictions, targets, *,
                                   epsilon=_KERAS_EPSILON, reduction="none"):
  r"""Absolute error as a percentage of the target, as Keras's MAPE.

  .. math::
    \ell = 100\, \frac{|\hat y - y|}{\max(|y|, \varepsilon)}

  Per element: Keras's ``mean_absolute_percentage_error(y_true, y_pred)``
  (note its order, targets first) averages over the last axis, which is
  ``mean_absolute_percentage_error(y_pred, y_true).mean(-1)`` here.

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it.
    epsilon: floor :math:`\varepsilon > 0` of :math:`|y|`, traced or
      concrete; Keras's ``backend.epsilon()`` by default.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p, y = jnp.array([110.0, 45.0]), jnp.array([100.0, 50.0])
    >>> print(jaxloss.mean_absolute_percentage_error(p, y))
    [10. 10.]

  References:
    ``keras.losses.mean_absolute_percentage_error``.
  """
  fn = "mean_absolute_percentage_error"
  predictions, targets = pair(fn, predictions, targets)
  # 100 over the denominator, the error times that: 100 first made XLA:CPU
  # materialize the error and a full array of 100s for the value's sum
  # beside the gradient's pass (48 against 16 MiB of temporaries, twice the
  # time), and 100 last did the same once the loss was traced into the
  # caller's program (32 MiB).
  loss = abs_zero_slope(predictions - targets) * (100 / jnp.maximum(
      jnp.abs(targets), _jit.cast(epsilon, predictions.dtype)))
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("reduction", epsilon=_jit.NON_NEGATIVE)
@_reduction.elementwise
def mean_squared_logarithmic_error(predictions, targets, *,
                                   epsilon=_KERAS_EPSILON, reduction="none"):
  r"""Squared error between :math:`\log(1 + \cdot)` of prediction and target.

  .. math::
    \ell = \left(\mathrm{log1p}(\max(\hat y, \varepsilon))
      - \mathrm{log1p}(\max(y, \varepsilon))\right)^2

  Per element, Keras's order reversed: Keras's
  ``mean_squared_logarithmic_error(y_true, y_pred)`` is
  ``mean_squared_logarithmic_error(y_pred, y_true).mean(-1)`` here. The clamp
  at :math:`\varepsilon` (Keras's) keeps the log finite for negative inputs,
  whose gradient is then 0.

  Args:
    predictions: floating array of any shape.
    targets: numeric array that broadcasts to the shape of ``predictions``
      without enlarging it.
    epsilon: floor :math:`\varepsilon \ge 0` of both arguments, traced or
      concrete; Keras's ``backend.epsilon()`` by default.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> p, y = jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0])
    >>> print(jaxloss.mean_squared_logarithmic_error(p, y))
    [0.     0.4805]

  References:
    ``keras.losses.mean_squared_logarithmic_error``.
  """
  fn = "mean_squared_logarithmic_error"
  predictions, targets = pair(fn, predictions, targets)
  epsilon = _jit.cast(epsilon, predictions.dtype)
  loss = (jnp.log1p(jnp.maximum(predictions, epsilon))
          - jnp.log1p(jnp.maximum(targets, epsilon)))**2
  return _reduction.reduce(fn, loss, reduction)


@_jit.jit("reduction", epsilon=_jit.NON_NEGATIVE)
@_reduction.elementwise(derivatives_apart=True)
def poisson(predictions, targets, *, epsilon=_KERAS_EPSILON,
            reduction="none"):
  r"""Poisson loss on predicted rates, as Keras's ``poisson``.

  .. math::
    \ell = \hat y - y \log(\hat y + \varepsilon)

  Per element, Keras's order reversed: ``keras.losses.poisson(y_true,
  y_pred)`` is ``poisson(y_pred, y_true).mean(-1)`` here. A zero target
  contributes exactly :math:`\hat y` (``xlogy``), also at rate 0 with
  :math:`\varepsilon = 0` (no ``0 * log 0``). Equal to
  :func:`poisson_nll_loss` with ``log_input=False`` and ``eps=epsilon``.

  Args:
    predictions: floating array of rates.
    targets: counts (numeric) that broadcast to the shape of
      ``predictions`` without enlarging it.
    epsilon: :math:`\varepsilon \ge 0` added inside the log, traced or
      concrete; Keras's ``backend.epsilon()`` by default.
    reduction: ``"none"``, ``"mean"`` or ``"sum"``.

  Returns:
    float32 loss (float64 for float64 input): the shape of ``predictions``
    for ``"none"``, else a scalar.

  Example:
    >>> import jaxloss
    >>> print(jaxloss.poisson(jnp.array([2.0, 0.5]), jnp.array([3.0, 0.0])))
    [-0.0794  0.5   ]

  References:
    ``keras.losses.poisson``.
  """
  fn = "poisson"
  predictions, targets = pair(fn, predictions, targets)
  non_negative(fn, "predictions", predictions)
  non_negative(fn, "targets", targets)
  loss = predictions - _rate_terms(targets, predictions, epsilon,
                                   _jit.known_positive("epsilon", epsilon))
  return _reduction.reduce(fn, loss, reduction)


def _rate_terms(counts, rates, eps, eps_positive):
  """``y log(rate + eps)``, 0 at a zero count.

  Only ``rate + eps = 0`` needs a guard (``0 * -inf``): with ``eps`` known
  positive, every valid rate (``>= 0``) keeps the sum positive, and the
  plain product is exact; the guard cost XLA:CPU's fused sum a third of
  its time. A negative rate is out of the domain either way (``checked``
  flags it): a zero count's guarded product is 0 down to a rate of
  ``-1 - eps``, the plain one NaN from ``-eps`` down, as in Keras's and
  torch's formula.
  """
  if _jit.is_zero(eps):
    return _xlogy(counts, rates)
  rates = rates + _jit.cast(eps, rates.dtype)
  return (_xlogy_positive if eps_positive else _xlogy)(counts, rates)
