"""torch.nn's loss classes over jaxloss's functions, for porting PyTorch code.

Each class takes torch's constructor arguments, with the same names and
defaults (``reduction="mean"``, ``ignore_index=-100``, ...), and is called as
torch's is, on the same layouts: ``loss(input, target)``, class dimension 1
for :class:`CrossEntropyLoss` and :class:`NLLLoss`, time first for
:class:`CTCLoss`. It gives torch's numbers, including torch's denominators.

Differences from torch:

* The deprecated ``size_average`` and ``reduce`` arguments are not accepted:
  use ``reduction``. Arguments that torch lists after them are keyword-only
  here, so a positional call that would bind differently fails loudly.
* A ``"mean"`` over nothing (every target ignored) is 0 with zero gradient,
  where torch returns NaN.
* :class:`LinearCrossEntropyLoss` holds no ``Linear`` layer (torch's class
  owns one): it is called as ``torch.nn.functional.linear_cross_entropy``,
  ``loss(input, linear_weight, target, linear_bias)``.
* Instances are frozen dataclasses: immutable, hashable (array options are
  hashed by value) and pytrees whose leaves are the array options (``weight``,
  ``pos_weight``), everything else static. They can be passed through
  ``jax.jit``, closed over, or used wherever an optax-style
  ``loss(predictions, targets)`` callable is expected. They hold no state and
  no parameters: each call is one of jaxloss's functions.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _binary
from jaxloss import _checks
from jaxloss import _classification
from jaxloss import _ctc
from jaxloss import _divergence
from jaxloss import _embedding
from jaxloss import _jit
from jaxloss import _linear
from jaxloss import _multiclass
from jaxloss import _reduction
from jaxloss import _regression

__all__ = (
    "BCELoss",
    "BCEWithLogitsLoss",
    "CTCLoss",
    "CosineEmbeddingLoss",
    "CrossEntropyLoss",
    "GaussianNLLLoss",
    "HingeEmbeddingLoss",
    "HuberLoss",
    "KLDivLoss",
    "L1Loss",
    "LinearCrossEntropyLoss",
    "MSELoss",
    "MarginRankingLoss",
    "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss",
    "MultiMarginLoss",
    "NLLLoss",
    "PoissonNLLLoss",
    "SmoothL1Loss",
    "SoftMarginLoss",
    "TripletMarginLoss",
    "TripletMarginWithDistanceLoss",
)


def _fingerprint(value):
  """What equality and hashing see of an option: arrays by value."""
  if isinstance(value, (jax.Array, np.ndarray)):
    if isinstance(value, jax.core.Tracer):
      return ("traced", id(value))
    a = np.asarray(value)
    return ("array", a.shape, a.dtype.str, a.tobytes())
  return value


class _Loss:
  """Equality, hashing and option checks shared by the loss classes."""

  _arrays = ()
  _reductions = _checks.REDUCTIONS

  def __post_init__(self):
    name = type(self).__name__
    _checks.reduction(name, self.reduction, self._reductions)
    for field in dataclasses.fields(self):
      # Switches (torch's full, log_input, zero_infinity, swap, ...) are
      # Python bools: a string or a traced value would read as True.
      if isinstance(field.default, bool):
        _checks.flag(name, field.name, getattr(self, field.name))
    for field in self._arrays:
      value = getattr(self, field)
      if value is None:
        continue
      if not isinstance(value, jax.Array):
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
          _checks.fail(name, f"{field} must be numeric, got {value.dtype}",
                       TypeError)
      # A copy: the caller's array may change, the option may not.
      value = _checks.numeric(name, field, jnp.array(value))
      object.__setattr__(self, field, value)

  def _key(self):
    return tuple(_fingerprint(getattr(self, f.name))
                 for f in dataclasses.fields(self))

  def __eq__(self, other):
    if type(other) is not type(self):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    return hash((type(self).__name__, self._key()))


def _loss_class(*arrays):
  """A frozen dataclass whose array options are pytree leaves."""
  def wrap(cls):
    cls._arrays = arrays
    cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    static = tuple(n for n in names if n not in arrays)

    def flatten(obj):
      return ([getattr(obj, n) for n in arrays],
              tuple(getattr(obj, n) for n in static))

    def unflatten(aux, children):
      # Bypasses __init__: leaves may be tracers or placeholders.
      obj = object.__new__(cls)
      for n, v in zip(static, aux):
        object.__setattr__(obj, n, v)
      for n, v in zip(arrays, children):
        object.__setattr__(obj, n, v)
      return obj

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls
  return wrap


def _same_shape(fn, x, target):
  """torch's rule for the binary cross entropies: equal shapes, no
  broadcast (torch raises ``ValueError`` too)."""
  if jnp.shape(x) != jnp.shape(target):
    _checks.fail(fn, f"target shape {jnp.shape(target)} does not match "
                 f"input shape {jnp.shape(x)} (torch requires equal shapes)")


def _torch_vector_or_matrix(fn, x, target):
  """torch's margin-loss layouts: input (N, C), (C,) or (), C > 0."""
  x, target = jnp.asarray(x), jnp.asarray(target)
  if x.ndim > 2 or (x.ndim and x.shape[-1] == 0):
    _checks.fail(fn, "input must be a non-empty vector or a matrix (N, C) "
                 f"with C > 0, as in torch, got shape {x.shape}")
  return x, target


def _class_axis(fn, x):
  x = _checks.floating(fn, "input", x)
  return 0 if x.ndim == 1 else 1


@_loss_class()
class L1Loss(_Loss):
  r"""Mean absolute error, torch's ``nn.L1Loss``: :math:`|x - y|`.

  Args:
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``: ``target`` of ``input``'s shape, or one that
    broadcasts to it without enlarging it (torch warns and broadcasts; here
    a larger ``target`` is an error). Complex input gives the real
    :math:`|x - y|`, as torch. Returns a scalar, or ``input``'s shape for
    ``"none"``. See :func:`jaxloss.l1_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.L1Loss()
    >>> print(loss(jnp.array([1.0, 2.0, 4.0]), jnp.array([1.5, 2.0, 3.0])))
    0.5

  References:
    ``torch.nn.L1Loss``.
  """
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    return _regression.l1_loss(input, target, reduction=self.reduction)


@_loss_class()
class MSELoss(_Loss):
  r"""Mean squared error, torch's ``nn.MSELoss``: :math:`(x - y)^2`.

  Args:
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``: ``target`` of ``input``'s shape, or one that
    broadcasts to it without enlarging it (torch warns and broadcasts; here
    a larger ``target`` is an error). Returns a scalar, or ``input``'s shape
    for ``"none"``. See :func:`jaxloss.mse_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.MSELoss()
    >>> print(loss(jnp.array([1.0, 2.0, 4.0]), jnp.array([1.5, 2.0, 3.0])))
    0.4166667

  References:
    ``torch.nn.MSELoss``.
  """
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    return _regression.mse_loss(input, target, reduction=self.reduction)


@_loss_class("weight")
class CrossEntropyLoss(_Loss):
  r"""Softmax cross entropy, torch's ``nn.CrossEntropyLoss``.

  .. math::
    \ell = -w_y \log \mathrm{softmax}(x)_y
    \quad\text{or}\quad
    \ell = -\sum_c w_c\, y_c \log \mathrm{softmax}(x)_c

  for class-index targets (integer dtype) and class-probability targets
  (floating dtype) respectively, with torch's label smoothing. ``"mean"``
  divides by the summed weights :math:`w_y` of the non-ignored targets for
  class indices, by the number of rows for probabilities, as torch does; a
  mean over no target at all is 0 (torch: NaN).

  Args:
    weight: optional (C,) class weights.
    ignore_index: class-index target value that is skipped.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.
    label_smoothing: in [0, 1].

  Call:
    ``loss(input, target)``: ``input`` (C,), (N, C) or (N, C, d1, ...) logits
    (classes on dimension 1, or 0 when unbatched); ``target`` integer (),
    (N,) or (N, d1, ...) class indices, or floating probabilities of
    ``input``'s shape. Returns a scalar, or the target's batch shape for
    ``"none"``. See :func:`jaxloss.softmax_cross_entropy_with_integer_labels`
    and :func:`jaxloss.softmax_cross_entropy`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.CrossEntropyLoss()
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> print(loss(logits, jnp.array([0, 1])))
    1.6139
    >>> print(loss(logits, jnp.array([0, -100])))
    0.2761

  References:
    ``torch.nn.CrossEntropyLoss``.
  """
  weight: jax.Array | None = None
  _: dataclasses.KW_ONLY
  ignore_index: int = -100
  reduction: str = "mean"
  label_smoothing: float = 0.0

  def __call__(self, input, target):  # noqa: A002
    fn = "CrossEntropyLoss"
    axis = _class_axis(fn, input)
    target = _checks.numeric(fn, "target", target)
    if jnp.issubdtype(target.dtype, jnp.floating):
      # Probabilities, in torch's one layout: floating class indices (or a
      # row of probabilities meant for every example) would otherwise read
      # as probabilities broadcast over the batch.
      if jnp.shape(target) != jnp.shape(input):
        _checks.fail(fn, "a floating target holds class probabilities of "
                     f"input's shape {tuple(jnp.shape(input))}, got shape "
                     f"{tuple(target.shape)}; class indices need an integer "
                     "dtype")
      if self.ignore_index != -100:
        _checks.fail(fn, "ignore_index applies to class-index targets, got "
                     f"ignore_index={self.ignore_index} with probability "
                     f"targets of dtype {target.dtype} (torch raises too)")
      return _multiclass.softmax_cross_entropy(
          input, target, axis=axis, weight=self.weight,
          label_smoothing=self.label_smoothing, reduction=self.reduction)
    return _multiclass.softmax_cross_entropy_with_integer_labels(
        input, target, axis=axis, ignore_index=self.ignore_index,
        weight=self.weight, label_smoothing=self.label_smoothing,
        reduction=self.reduction)


@_loss_class("weight")
class LinearCrossEntropyLoss(_Loss):
  r"""Cross entropy of a linear layer's logits, never materialized: torch's
  ``nn.functional.linear_cross_entropy``.

  .. math::
    x = W h + b, \qquad
    \ell = -w_y \log \mathrm{softmax}(x)_y
    \quad\text{or}\quad
    \ell = -\sum_c w_c\, y_c \log \mathrm{softmax}(x)_c

  :class:`CrossEntropyLoss` of ``input @ linear_weight.T + linear_bias``
  (class indices or probabilities, torch's smoothing and denominators),
  computed by :func:`jaxloss.linear_softmax_cross_entropy` over chunks, so
  that the (N, C) logits never exist in memory. With a K-dimensional
  ``linear_weight`` (C, d1, ..., dK, in_features), each position
  :math:`(d_1, \ldots, d_K)` has its own (C, in_features) projection and a
  softmax over its C classes, as torch's logits
  ``(input @ linear_weight.reshape(-1, in_features).T).reshape(N, C, d1,
  ..., dK)`` have; ``"mean"`` is taken over every position.

  torch's ``nn.LinearCrossEntropyLoss`` owns a ``Linear`` layer (its
  constructor takes ``in_features`` and ``num_classes``); like every class
  here, this one holds no parameters: the projection is an argument of the
  call, as in ``torch.nn.functional.linear_cross_entropy``. Its ``options``
  (torch's chunking) has no counterpart: chunking is always on.

  Args:
    weight: optional (C,) class weights.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.
    ignore_index: class-index target value that is skipped. torch's default
      ``None`` means -100 for class indices; with probability targets any
      value other than -100 or None is an error, as in torch.
    label_smoothing: in [0, 1].

  Call:
    ``loss(input, linear_weight, target, linear_bias=None)``: ``input``
    (in_features,) or (N, in_features); ``linear_weight`` (C, in_features)
    or (C, d1, ..., dK, in_features), torch's layout (the transpose of a
    JAX kernel); ``target`` integer (), (N,) or (N, d1, ..., dK) class
    indices, or floating probabilities (C,), (N, C) or (N, C, d1, ..., dK)
    (broadcast along the batch, never enlarging it); ``linear_bias``
    optional (C,) or (C, d1, ..., dK). Returns a scalar, or the target's
    batch shape for ``"none"``: float32 (float64 for float64 input).
    Gradients flow to ``input``, ``linear_weight``, ``linear_bias`` and
    probability targets.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.LinearCrossEntropyLoss()
    >>> h = jnp.array([[1.0, -0.5], [0.2, 0.7], [-1.0, 0.3]])
    >>> w = jnp.array([[0.5, 1.5], [-1.0, 0.2], [0.3, -0.4]])  # (C, D)
    >>> print(loss(h, w, jnp.array([0, 2, 1])))
    1.1727
    >>> print(loss(h, w, jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5],
    ...                             [0.0, 1.0, 0.0]])))
    1.146

  References:
    ``torch.nn.functional.linear_cross_entropy`` and
    ``torch.nn.LinearCrossEntropyLoss`` (torch 2.13).
  """
  # The constructor's order: torch's deprecated positional size_average and
  # reduce never existed here, so every option may be given by position.
  weight: jax.Array | None = None
  reduction: str = "mean"
  ignore_index: int | None = -100
  label_smoothing: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    if self.ignore_index is not None:
      _checks.optional_int("LinearCrossEntropyLoss", "ignore_index",
                           self.ignore_index)

  def __call__(self, input, linear_weight, target,  # noqa: A002
               linear_bias=None):
    fn = "LinearCrossEntropyLoss"
    x = _checks.floating(fn, "input", input)
    w = _checks.floating(fn, "linear_weight", linear_weight)
    if x.ndim not in (1, 2):
      _checks.fail(fn, "input must have shape (in_features,) or (N, "
                   f"in_features), as in torch, got shape {x.shape}")
    if w.ndim < 2 or w.shape[-1] != x.shape[-1]:
      _checks.fail(fn, "linear_weight must have shape (C, in_features) or "
                   f"(C, d1, ..., dK, in_features) with in_features "
                   f"{x.shape[-1]} (input shape {x.shape}), got shape "
                   f"{w.shape}")
    num_classes, positions, dim = w.shape[0], w.shape[1:-1], w.shape[-1]
    if positions and x.ndim == 1:
      _checks.fail(fn, f"a K-dimensional linear_weight (shape {w.shape}) "
                   f"needs batched input (N, {dim}), got shape {x.shape}")
    bias = linear_bias
    if bias is not None:
      bias = _checks.floating(fn, "linear_bias", bias)
      _checks.shape_is(fn, "linear_bias", bias, (num_classes, *positions),
                       "linear_weight's shape without in_features")
    target = _checks.numeric(fn, "target", target)
    batch = x.shape[:-1]
    probabilities = jnp.issubdtype(target.dtype, jnp.floating)
    ignore_index = self.ignore_index
    if probabilities:
      if ignore_index not in (None, -100):
        _checks.fail(fn, "ignore_index applies to class-index targets, got "
                     f"ignore_index={ignore_index} with probability targets "
                     f"of dtype {target.dtype}")
      ignore_index = None
      shape = (*batch, num_classes, *positions)
      target = _checks.conform(fn, "target", target, "the logits", shape,
                               class_axes=(len(batch),))
    else:
      ignore_index = -100 if ignore_index is None else ignore_index
      target = _checks.conform(fn, "target",
                               _checks.integer(fn, "target", target),
                               "the logits' batch shape",
                               (*batch, *positions))
    kw = dict(weight=self.weight, ignore_index=ignore_index,
              label_smoothing=self.label_smoothing)
    if not positions:
      return _linear.linear_softmax_cross_entropy(
          x, w.T, target, bias=bias, reduction=self.reduction, **kw)
    # One (C, in_features) projection per position: the loss at each is a
    # linear cross entropy of its own, one position after the other (a
    # vmap would hold every position's chunk of logits at once).
    n, count = batch[0], int(np.prod(positions))
    kernels = jnp.moveaxis(w.reshape(num_classes, count, dim), 1, 0)
    kernels = jnp.swapaxes(kernels, 1, 2)
    biases = None if bias is None else bias.reshape(num_classes, count).T
    if probabilities:
      labels = jnp.moveaxis(target.reshape(n, num_classes, count), 2, 0)
    else:
      labels = target.reshape(n, count).T
    reduction = "sum" if self.reduction == "mean" else self.reduction

    def one(kernel, bias, labels):
      return _linear.linear_softmax_cross_entropy(
          x, kernel, labels, bias=bias, reduction=reduction, **kw)

    loss = jax.lax.map(lambda a: one(*a), (kernels, biases, labels))
    if self.reduction == "none":
      return loss.T.reshape(n, *positions)
    loss = jnp.sum(loss)
    if self.reduction == "sum":
      return loss
    # torch's mean: over the positions' summed label weights (class
    # indices) or their count (probabilities); over nothing, 0.
    if probabilities:
      return loss / max(n * count, 1)
    kept = _checks.not_ignored(labels, ignore_index)
    if kept is None:
      kept = jnp.ones(labels.shape, bool)
    if self.weight is None:
      total = jnp.sum(kept, dtype=loss.dtype)
    else:
      safe = jnp.where(kept & (labels >= 0) & (labels < num_classes),
                       labels, 0)
      total = jnp.sum(jnp.where(kept, self.weight.astype(loss.dtype)[safe],
                                0))
    return loss / jnp.where(total == 0, 1, total)


@_loss_class("weight")
class NLLLoss(_Loss):
  r"""Negative log-likelihood of class indices, torch's ``nn.NLLLoss``.

  .. math::
    \ell = -w_y\, x_y

  on log-probabilities :math:`x`. ``"mean"`` divides by the summed weights of
  the non-ignored targets, as torch does; a mean over none is 0 (torch:
  NaN).

  Args:
    weight: optional (C,) class weights.
    ignore_index: target value that is skipped.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``: ``input`` (C,), (N, C) or (N, C, d1, ...)
    log-probabilities, ``target`` integer (), (N,) or (N, d1, ...). Returns a
    scalar, or the target's shape for ``"none"``. See
    :func:`jaxloss.nll_loss`.

  Example:
    >>> import jaxloss
    >>> log_probs = jnp.log(jnp.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    >>> print(jaxloss.nn.NLLLoss()(log_probs, jnp.array([0, 2])))
    0.5108

  References:
    ``torch.nn.NLLLoss``.
  """
  weight: jax.Array | None = None
  _: dataclasses.KW_ONLY
  ignore_index: int = -100
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    return _multiclass.nll_loss(
        input, target, axis=_class_axis("NLLLoss", input),
        ignore_index=self.ignore_index, weight=self.weight,
        reduction=self.reduction)


@_loss_class()
class PoissonNLLLoss(_Loss):
  r"""Poisson negative log-likelihood, torch's ``nn.PoissonNLLLoss``.

  .. math::
    \ell = e^{x} - y\,x \quad\text{(log input)},\qquad
    \ell = x - y \log(x + \varepsilon)

  plus, with ``full``, Stirling's approximation of :math:`\log y!` where
  :math:`y > 1`.

  Args:
    log_input: whether ``input`` is the log of the rate.
    full: add the Stirling term.
    eps: :math:`\varepsilon \ge 0`, keeps the log finite when
      ``log_input`` is False.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``, ``target`` broadcasting to ``input``'s shape
    without enlarging it. See :func:`jaxloss.poisson_nll_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.PoissonNLLLoss()
    >>> print(loss(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0])))
    0.8591

  References:
    ``torch.nn.PoissonNLLLoss``.
  """
  log_input: bool = True
  full: bool = False
  _: dataclasses.KW_ONLY
  eps: float = 1e-8
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        eps=(self.eps, _regression.poisson_nll_loss.hyperparameters["eps"]))

  def __call__(self, input, target):  # noqa: A002
    return _regression.poisson_nll_loss(
        input, target, log_input=self.log_input, full=self.full,
        eps=self.eps, reduction=self.reduction)


@_loss_class()
class GaussianNLLLoss(_Loss):
  r"""Gaussian negative log-likelihood, torch's ``nn.GaussianNLLLoss``.

  .. math::
    \ell = \tfrac12 \left(\log \max(v, \varepsilon)
      + \frac{(x - y)^2}{\max(v, \varepsilon)}\right)
      \;[+\; \tfrac12 \log 2\pi]

  with the variance clamp ignored by the gradient, as torch does.

  Args:
    full: add the constant :math:`\frac12 \log 2\pi`.
    eps: :math:`\varepsilon \ge 0`, the variance clamp.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target, var)``: ``target`` broadcasting to ``input``'s
    shape without enlarging it; ``var`` of ``input``'s shape, or with one
    dimension of size 1, or one dimension fewer, or a scalar, as torch
    broadcasts it. See :func:`jaxloss.gaussian_nll_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.GaussianNLLLoss()
    >>> print(loss(jnp.array([0.0, 1.0]), jnp.array([1.0, 1.0]),
    ...            jnp.array([1.0, 2.0])))
    0.4233

  References:
    ``torch.nn.GaussianNLLLoss``.
  """
  _: dataclasses.KW_ONLY
  full: bool = False
  eps: float = 1e-6
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        eps=(self.eps, _regression.gaussian_nll_loss.hyperparameters["eps"]))

  def __call__(self, input, target, var):  # noqa: A002
    return _regression.gaussian_nll_loss(
        input, target, var, full=self.full, eps=self.eps,
        reduction=self.reduction)


@_loss_class()
class KLDivLoss(_Loss):
  r"""Kullback-Leibler divergence on log-input, torch's ``nn.KLDivLoss``.

  .. math::
    \ell = y (\log y - x) \quad\text{or, with log\_target,}\quad
    \ell = e^{y} (y - x)

  pointwise, 0 where :math:`y = 0`. ``"batchmean"`` divides the sum by the
  batch size (the mathematically meaningful mean); ``"mean"``, torch's
  default, by the number of elements.

  Args:
    reduction: ``"none"``, ``"batchmean"``, ``"mean"`` (default) or
      ``"sum"``.
    log_target: whether ``target`` holds log-probabilities.

  Call:
    ``loss(input, target)``: floating log-probabilities ``input`` and the
    target of the same shape, or broadcasting to it; a target that would
    enlarge ``input`` (torch broadcasts both ways, silently) is an error.
    See :func:`jaxloss.kl_div`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.KLDivLoss(reduction="batchmean")
    >>> log_p = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> print(loss(log_p, jnp.array([[0.9, 0.1], [0.9, 0.1]])))
    0.1840

  References:
    ``torch.nn.KLDivLoss``.
  """
  _: dataclasses.KW_ONLY
  reduction: str = "mean"
  log_target: bool = False
  _reductions = ("none", "batchmean", "mean", "sum")

  def __call__(self, input, target):  # noqa: A002
    return _divergence.kl_div(input, target, log_target=self.log_target,
                          reduction=self.reduction)


@_loss_class("weight")
class BCELoss(_Loss):
  r"""Binary cross entropy on probabilities, torch's ``nn.BCELoss``.

  .. math::
    \ell = -w \left[y \max(\log p, -100) + (1 - y) \max(\log(1 - p), -100)
    \right]

  Args:
    weight: optional weights broadcasting to ``input``'s shape.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)`` on probabilities and targets of the same shape
    (torch raises for other shapes, and so does this class). See
    :func:`jaxloss.binary_cross_entropy`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.BCELoss()
    >>> print(loss(jnp.array([0.9, 0.2]), jnp.array([1.0, 0.0])))
    0.1643

  References:
    ``torch.nn.BCELoss``.
  """
  weight: jax.Array | None = None
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    _same_shape(type(self).__name__, input, target)
    return _binary.binary_cross_entropy(input, target, weight=self.weight,
                                        reduction=self.reduction)


@_loss_class("weight", "pos_weight")
class BCEWithLogitsLoss(_Loss):
  r"""Binary cross entropy on logits, torch's ``nn.BCEWithLogitsLoss``.

  .. math::
    \ell = -w \left[p_c\, y \log \sigma(x) + (1 - y) \log \sigma(-x)\right]

  Args:
    weight: optional weights broadcasting to ``input``'s shape.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.
    pos_weight: optional weight :math:`p_c` of positives, broadcasting to
      ``input``'s shape from the right (one per class on the last
      dimension).

  Call:
    ``loss(input, target)`` on logits and targets of the same shape (torch
    raises for other shapes, and so does this class). See
    :func:`jaxloss.sigmoid_binary_cross_entropy`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.BCEWithLogitsLoss(pos_weight=jnp.array([2.0]))
    >>> print(loss(jnp.array([0.0, 2.0]), jnp.array([1.0, 0.0])))
    1.7566

  References:
    ``torch.nn.BCEWithLogitsLoss``.
  """
  weight: jax.Array | None = None
  _: dataclasses.KW_ONLY
  reduction: str = "mean"
  pos_weight: jax.Array | None = None

  def __call__(self, input, target):  # noqa: A002
    _same_shape(type(self).__name__, input, target)
    return _binary.sigmoid_binary_cross_entropy(
        input, target, weight=self.weight, pos_weight=self.pos_weight,
        reduction=self.reduction)


@_loss_class()
class MarginRankingLoss(_Loss):
  r"""Margin ranking loss, torch's ``nn.MarginRankingLoss``.

  .. math::
    \ell = \max(0, -y (x_1 - x_2) + \mathrm{margin})

  Args:
    margin: the margin.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input1, input2, target)`` with ``target`` in {1, -1}: 1 when
    ``input1`` should rank higher; ``input2`` and ``target`` broadcast to
    ``input1``'s shape without enlarging it. See
    :func:`jaxloss.margin_ranking_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.MarginRankingLoss(margin=0.5)
    >>> print(loss(jnp.array([1.0, 0.2]), jnp.array([0.8, 0.0]),
    ...            jnp.array([1.0, -1.0])))
    0.5

  References:
    ``torch.nn.MarginRankingLoss``.
  """
  margin: float = 0.0
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        margin=(self.margin,
                _embedding.margin_ranking_loss.hyperparameters["margin"]))

  def __call__(self, input1, input2, target):
    return _embedding.margin_ranking_loss(input1, input2, target,
                                          margin=self.margin,
                                          reduction=self.reduction)


@_loss_class()
class HingeEmbeddingLoss(_Loss):
  r"""Hinge embedding loss, torch's ``nn.HingeEmbeddingLoss``.

  .. math::
    \ell = x \text{ if } y = 1,\qquad
    \ell = \max(0, \mathrm{margin} - x) \text{ if } y = -1

  Args:
    margin: the margin.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)`` with ``target`` in {1, -1}, of ``input``'s
    shape or broadcasting to it without enlarging it. See
    :func:`jaxloss.hinge_embedding_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.HingeEmbeddingLoss()
    >>> print(loss(jnp.array([0.3, 0.4]), jnp.array([1.0, -1.0])))
    0.45

  References:
    ``torch.nn.HingeEmbeddingLoss``.
  """
  margin: float = 1.0
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        margin=(self.margin,
                _embedding.hinge_embedding_loss.hyperparameters["margin"]))

  def __call__(self, input, target):  # noqa: A002
    return _embedding.hinge_embedding_loss(input, target, margin=self.margin,
                                           reduction=self.reduction)


@_loss_class()
class MultiLabelMarginLoss(_Loss):
  r"""Multi-label hinge loss, torch's ``nn.MultiLabelMarginLoss``.

  .. math::
    \ell = \sum_{j \in Y} \sum_{i \notin Y}
      \frac{\max(0, 1 - (x_j - x_i))}{C}

  over the target classes :math:`Y`: the leading entries of ``target`` up to
  the first -1.

  Args:
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``: ``input`` (N, C), (C,) or (), integer
    ``target`` of the same shape (a single class may also pair () with
    (1,), as in torch). See :func:`jaxloss.multilabel_margin_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.MultiLabelMarginLoss()
    >>> print(loss(jnp.array([[0.1, 0.2, 0.4, 0.8]]),
    ...            jnp.array([[3, 0, -1, 1]])))
    0.85

  References:
    ``torch.nn.MultiLabelMarginLoss``.
  """
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    name = type(self).__name__
    x, target = _torch_vector_or_matrix(name, input, target)
    if target.shape != x.shape and not (
        x.ndim <= 1 and target.ndim <= 1 and x.size == target.size):
      _checks.fail(name, f"target shape {target.shape} does not match input "
                   f"shape {x.shape} (torch requires equal shapes)")
    return _classification.multilabel_margin_loss(x, target,
                                                  reduction=self.reduction)


@_loss_class()
class HuberLoss(_Loss):
  r"""Huber loss, torch's ``nn.HuberLoss``.

  .. math::
    \ell = \tfrac12 (x - y)^2 \text{ if } |x - y| \le \delta,\qquad
    \ell = \delta \left(|x - y| - \tfrac12 \delta\right) \text{ otherwise}

  Args:
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.
    delta: :math:`\delta > 0` (checked when the class is built; torch
      checks it when called).

  Call:
    ``loss(input, target)``: ``target`` of ``input``'s shape, or one that
    broadcasts to it without enlarging it (torch warns and broadcasts; here
    a larger ``target`` is an error). See :func:`jaxloss.huber_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.HuberLoss(delta=1.0)
    >>> print(loss(jnp.array([0.5, 3.0]), jnp.array([0.0, 0.0])))
    1.3125

  References:
    ``torch.nn.HuberLoss``.
  """
  reduction: str = "mean"
  delta: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        delta=(self.delta, _regression.huber_loss.hyperparameters["delta"]))

  def __call__(self, input, target):  # noqa: A002
    return _regression.huber_loss(input, target, delta=self.delta,
                                  reduction=self.reduction)


@_loss_class()
class SmoothL1Loss(_Loss):
  r"""Smooth L1 loss, torch's ``nn.SmoothL1Loss``.

  .. math::
    \ell = \frac{(x - y)^2}{2\beta} \text{ if } |x - y| < \beta,\qquad
    \ell = |x - y| - \tfrac12 \beta \text{ otherwise}

  (the L1 loss for :math:`\beta = 0`).

  Args:
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.
    beta: :math:`\beta \ge 0` (checked when the class is built; torch
      checks it when called).

  Call:
    ``loss(input, target)``: ``target`` of ``input``'s shape, or one that
    broadcasts to it without enlarging it (torch warns and broadcasts; here
    a larger ``target`` is an error). See :func:`jaxloss.smooth_l1_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.SmoothL1Loss(beta=1.0)
    >>> print(loss(jnp.array([0.5, 3.0]), jnp.array([0.0, 0.0])))
    1.3125

  References:
    ``torch.nn.SmoothL1Loss``.
  """
  _: dataclasses.KW_ONLY
  reduction: str = "mean"
  beta: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        beta=(self.beta, _regression.smooth_l1_loss.hyperparameters["beta"]))

  def __call__(self, input, target):  # noqa: A002
    return _regression.smooth_l1_loss(input, target, beta=self.beta,
                                      reduction=self.reduction)


@_loss_class()
class SoftMarginLoss(_Loss):
  r"""Two-class logistic loss, torch's ``nn.SoftMarginLoss``.

  .. math::
    \ell = \log(1 + e^{-y x})

  Args:
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)`` with ``target`` in {1, -1}, ``input``'s shape
    or broadcasting to it (as torch; never enlarging it). See
    :func:`jaxloss.soft_margin_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.SoftMarginLoss()
    >>> print(loss(jnp.array([2.0, -1.0]), jnp.array([1.0, 1.0])))
    0.7201

  References:
    ``torch.nn.SoftMarginLoss``.
  """
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    return _classification.soft_margin_loss(input, target, reduction=self.reduction)


@_loss_class("weight")
class MultiLabelSoftMarginLoss(_Loss):
  r"""Multi-label one-versus-all logistic loss, torch's
  ``nn.MultiLabelSoftMarginLoss``.

  .. math::
    \ell = -\frac1C \sum_c w_c \left[y_c \log \sigma(x_c)
      + (1 - y_c) \log \sigma(-x_c)\right]

  one value per sample.

  Args:
    weight: optional (C,) class weights (or weights broadcasting to
      ``input``'s shape).
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``: ``input`` (C,) or (N, C), ``target`` in {0, 1}
    of the same shape, or broadcasting to it over the batch (a (N, 1) target
    is an error: torch spreads it over the classes). See
    :func:`jaxloss.multilabel_soft_margin_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.MultiLabelSoftMarginLoss()
    >>> print(loss(jnp.array([[2.0, -1.0]]), jnp.array([[1.0, 0.0]])))
    0.2201

  References:
    ``torch.nn.MultiLabelSoftMarginLoss``.
  """
  weight: jax.Array | None = None
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __call__(self, input, target):  # noqa: A002
    return _classification.multilabel_soft_margin_loss(
        input, target, weight=self.weight, reduction=self.reduction)


@_loss_class()
class CosineEmbeddingLoss(_Loss):
  r"""Cosine embedding loss, torch's ``nn.CosineEmbeddingLoss``.

  .. math::
    \ell = 1 - \cos(x_1, x_2) \text{ if } y = 1,\qquad
    \ell = \max(0, \cos(x_1, x_2) - \mathrm{margin}) \text{ if } y = -1

  Args:
    margin: in [-1, 1].
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input1, input2, target)``: ``input1`` (N, D) or (D,), ``input2``
    broadcasting to its shape without enlarging it, ``target`` (N,), (1,)
    or () in {1, -1}. See :func:`jaxloss.cosine_embedding_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.CosineEmbeddingLoss()
    >>> print(loss(jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 1.0]]),
    ...            jnp.array([1.0])))
    0.2929

  References:
    ``torch.nn.CosineEmbeddingLoss``.
  """
  margin: float = 0.0
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__,
        margin=(self.margin,
                _embedding.cosine_embedding_loss.hyperparameters["margin"]))

  def __call__(self, input1, input2, target):
    return _embedding.cosine_embedding_loss(input1, input2, target,
                                            margin=self.margin,
                                            reduction=self.reduction)


@_loss_class("weight")
class MultiMarginLoss(_Loss):
  r"""Multi-class hinge loss, torch's ``nn.MultiMarginLoss``.

  .. math::
    \ell = \frac1C \sum_{i \ne y} w_y \max(0, \mathrm{margin} - x_y + x_i)^p

  Args:
    p: 1 or 2 (checked when the loss is built, as torch).
    margin: the margin, any number.
    weight: optional (C,) class weights.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(input, target)``: ``input`` (N, C), (C,) or (), integer
    ``target`` (N,), () or (1,) as torch pairs them; ``"none"`` returns
    ``target``'s shape, as torch. See :func:`jaxloss.multi_margin_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.MultiMarginLoss()
    >>> print(loss(jnp.array([[0.1, 0.2, 0.4, 0.8]]), jnp.array([3])))
    0.325

  References:
    ``torch.nn.MultiMarginLoss``.
  """
  p: int = 1
  margin: float = 1.0
  weight: jax.Array | None = None
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.p, (int, np.integer)) or isinstance(
        self.p, bool) or self.p not in (1, 2):
      _checks.fail(type(self).__name__, f"p must be 1 or 2, got {self.p!r}")
    if self.weight is not None and self.weight.ndim != 1:
      _checks.fail(type(self).__name__, "weight must be None or a 1-D array "
                   f"(one per class), got shape {self.weight.shape}")

  def __call__(self, input, target):  # noqa: A002
    name = type(self).__name__
    x, target = _torch_vector_or_matrix(name, input, target)
    rows = x.shape[0] if x.ndim == 2 else 1
    allowed = ((rows,),) + (((),) if rows == 1 else ())
    if target.shape not in allowed:
      _checks.fail(name, f"target shape {target.shape} does not match input "
                   f"shape {x.shape}: torch wants a target of shape "
                   f"{' or '.join(map(str, allowed))}")
    loss = _classification.multi_margin_loss(
        x, target, p=self.p, margin=self.margin, weight=self.weight,
        reduction=self.reduction)
    # torch's "none" has the target's shape: (1, C) with () gives ().
    return loss.reshape(target.shape) if self.reduction == "none" else loss


# torch's rule for both triplet classes: the margin is positive.
_TORCH_TRIPLET_MARGIN = (
    _embedding.triplet_margin_with_distance_loss.hyperparameters["margin"])


@_loss_class()
class TripletMarginLoss(_Loss):
  r"""Triplet margin loss with p-norm distances, torch's
  ``nn.TripletMarginLoss``.

  .. math::
    \ell = \max(0, d(a, p) - d(a, n) + \mathrm{margin}),\qquad
    d(u, v) = \lVert u - v + \varepsilon \rVert_p

  With ``swap``, :math:`d(a, n)` becomes :math:`\min(d(a, n), d(p, n))`.

  Args:
    margin: the margin, positive (checked when the class is built, as
      torch does).
    p: the norm degree, positive or ``inf`` (torch also takes
      :math:`p \le 0`, which is no norm).
    eps: :math:`\varepsilon`, added to the difference as torch does.
    swap: use the distance swap of Balntas et al.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(anchor, positive, negative)`` on (N, D), (D,) or 0-d embeddings;
    ``positive`` and ``negative`` broadcast to ``anchor``'s shape without
    enlarging it (torch also broadcasts a (1, D) anchor). See
    :func:`jaxloss.triplet_margin_loss`.

  Example:
    >>> import jaxloss
    >>> loss = jaxloss.nn.TripletMarginLoss()
    >>> a = jnp.array([[0.0, 0.0]])
    >>> print(loss(a, jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 1.0]])))
    0.5858

  References:
    ``torch.nn.TripletMarginLoss``; Balntas et al., `Learning local feature
    descriptors with triplets and shallow convolutional neural networks
    <https://bmva-archive.org.uk/bmvc/2016/papers/paper119/>`_, 2016.
  """
  margin: float = 1.0
  p: float = 2.0
  eps: float = 1e-6
  swap: bool = False
  _: dataclasses.KW_ONLY
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(
        type(self).__name__, margin=(self.margin, _TORCH_TRIPLET_MARGIN),
        p=(self.p, _embedding.triplet_margin_loss.hyperparameters[
            "norm_degree"]),
        eps=(self.eps, _embedding.triplet_margin_loss.hyperparameters["eps"]))

  def __call__(self, anchor, positive, negative):
    return _embedding.triplet_margin_loss(
        anchor, positive, negative, norm_degree=self.p, margin=self.margin,
        eps=self.eps, swap=self.swap, distance="torch",
        reduction=self.reduction)


@_loss_class()
class TripletMarginWithDistanceLoss(_Loss):
  r"""Triplet margin loss with any distance, torch's
  ``nn.TripletMarginWithDistanceLoss``.

  .. math::
    \ell = \max(0, d(a, p) - d(a, n) + \mathrm{margin})

  Args:
    distance_function: ``d(x1, x2)`` on batches of embeddings, returning one
      distance per row; None for the Euclidean distance (torch's
      ``pairwise_distance``). It is part of the hashed, static configuration:
      pass the same function object to reuse compilations.
    margin: the margin, positive (checked when the class is built, as
      torch does).
    swap: use :math:`\min(d(a, n), d(p, n))` for the negative distance.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.

  Call:
    ``loss(anchor, positive, negative)``, ``positive`` and ``negative``
    broadcasting to ``anchor``'s shape without enlarging it. See
    :func:`jaxloss.triplet_margin_with_distance_loss`.

  Example:
    >>> import jaxloss
    >>> def l_inf(x1, x2):
    ...   return jnp.max(jnp.abs(x1 - x2), axis=-1)
    >>> loss = jaxloss.nn.TripletMarginWithDistanceLoss(distance_function=l_inf)
    >>> a = jnp.array([[0.0, 0.0]])
    >>> print(loss(a, jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 2.0]])))
    0.0

  References:
    ``torch.nn.TripletMarginWithDistanceLoss``.
  """
  _: dataclasses.KW_ONLY
  distance_function: object = None
  margin: float = 1.0
  swap: bool = False
  reduction: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    _jit.check_options(type(self).__name__,
                              margin=(self.margin, _TORCH_TRIPLET_MARGIN))

  def __call__(self, anchor, positive, negative):
    return _embedding.triplet_margin_with_distance_loss(
        anchor, positive, negative, distance_function=self.distance_function,
        margin=self.margin, swap=self.swap, reduction=self.reduction)


def _lengths(fn, name, lengths, batch):
  """One integer length per sequence; torch reads any shape of that size."""
  lengths = _checks.integer(fn, name, lengths)
  if lengths.size != batch:
    _checks.fail(fn, f"{name} must have shape ({batch},) (one length per "
                 f"sequence), got shape {lengths.shape}")
  return lengths.reshape(batch)


def _class_indices(fn, name, targets):
  """Targets as torch's CTC reads them: integers, or booleans and floats
  truncated to integers (``checked`` flags a fractional float)."""
  targets = _checks.numeric(fn, name, targets)
  if jnp.issubdtype(targets.dtype, jnp.floating):
    _checks.values(fn, name, targets == jnp.trunc(targets),
                   "must be whole numbers (class indices)", targets)
  return targets if jnp.issubdtype(targets.dtype, jnp.integer) else (
      targets.astype(jnp.int32))


def _concrete(lengths):
  """The lengths as a NumPy array when known at trace time, else None."""
  try:
    return np.asarray(lengths)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def _check_lengths(fn, name, lengths, low, high, what):
  """Torch's range checks: at trace time where the lengths are known, else
  under :func:`jaxloss.checked`."""
  known = _concrete(lengths)
  if known is None:
    _checks.values(fn, name, (lengths >= low) & (lengths <= high),
                   f"must be in [{low}, {high}] ({what})", lengths)
  elif known.size and (known.min() < low or known.max() > high):
    _checks.fail(fn, f"{name} must be in [{low}, {high}] ({what}), got "
                 f"{known.tolist()}")


def _padded_targets(targets, target_lengths, width):
  """(N, S) targets from the concatenated form, torch's 1-D layout."""
  total = targets.shape[0]
  if width is None:
    # Lengths only known at run time: the concatenation bounds every one.
    width = total
  batch = target_lengths.shape[0]
  if total == 0 or width == 0:
    return jnp.zeros((batch, 0), targets.dtype)
  starts = jnp.cumsum(target_lengths) - target_lengths
  index = starts[:, None] + jnp.arange(width)[None, :]
  return targets[jnp.clip(index, 0, total - 1)]


@_loss_class()
class CTCLoss(_Loss):
  r"""Connectionist temporal classification loss, torch's ``nn.CTCLoss``.

  .. math::
    \ell_n = -\log \sum_{\pi \in \mathcal{B}^{-1}(y_n)} \prod_t p_t(\pi_t)

  over the alignments of the first ``input_lengths[n]`` frames that reduce
  to the first ``target_lengths[n]`` targets once repeats are merged and
  blanks dropped. A target sequence that cannot fit in its frames costs
  ``inf`` (0 with ``zero_infinity``). ``"mean"`` divides each loss by its
  target length (at least 1), then averages over the batch, as torch does;
  ``"sum"`` adds the losses as they are.

  The input is normalized again with ``log_softmax`` (a no-op on
  log-probabilities), so the gradient with respect to it is
  :math:`\mathrm{softmax}(x) - \gamma`, the posterior :math:`\gamma` of each
  class at each frame: the gradient torch's CTC returns. An ``inf`` loss has
  zero gradient (torch: NaN unless ``zero_infinity``). The loss is never
  negative (see :func:`jaxloss.ctc_loss`).

  Args:
    blank: class of the blank symbol.
    reduction: ``"none"``, ``"mean"`` (default) or ``"sum"``.
    zero_infinity: replace infinite losses, and their gradients, by 0.

  Call:
    ``loss(log_probs, targets, input_lengths, target_lengths)``:
    ``log_probs`` (T, N, C) or (T, C) log-probabilities, time first;
    ``targets`` class indices, (N, S) padded or (sum(target_lengths),)
    concatenated, or (S,) or (1, S) when unbatched (booleans and floats
    are truncated to integers, as torch does); ``input_lengths`` and
    ``target_lengths`` integer, N of them in any shape ((N,), or () when
    unbatched; arrays, tuples or lists). Returns (N,) (or () unbatched) for
    ``"none"``, else a scalar; an empty batch gives an empty array or 0
    (torch raises). With concatenated targets, concrete ``target_lengths``
    size the padded targets by their maximum; traced ones, by the
    concatenated length.

  Example:
    >>> import jaxloss
    >>> log_probs = jnp.log(jnp.array([[[0.2, 0.7, 0.1]], [[0.6, 0.1, 0.3]],
    ...                                [[0.1, 0.1, 0.8]]]))
    >>> loss = jaxloss.nn.CTCLoss()
    >>> print(loss(log_probs, jnp.array([[1, 2]]), [3], [2]))
    0.2579

  References:
    ``torch.nn.CTCLoss``; Graves et al., `Connectionist temporal
    classification <https://www.cs.toronto.edu/~graves/icml_2006.pdf>`_,
    2006.
  """
  blank: int = 0
  reduction: str = "mean"
  zero_infinity: bool = False

  def __post_init__(self):
    super().__post_init__()
    if isinstance(self.blank, bool) or not isinstance(self.blank,
                                                      (int, np.integer)):
      _checks.fail("CTCLoss", f"blank must be an int, got {self.blank!r}",
                   TypeError)
    if self.blank < 0:
      _checks.fail("CTCLoss", f"blank must be a class index, at least 0, got "
                   f"{self.blank}")

  def __call__(self, log_probs, targets, input_lengths, target_lengths):
    fn = "CTCLoss"
    log_probs = _checks.floating(fn, "log_probs", log_probs)
    targets = _class_indices(fn, "targets", targets)
    if log_probs.ndim not in (2, 3):
      _checks.fail(fn, "log_probs must have shape (T, N, C) or (T, C), got "
                   f"shape {log_probs.shape}")
    unbatched = log_probs.ndim == 2
    if unbatched:
      if not (targets.ndim == 1 or targets.ndim == 2
              and targets.shape[0] == 1):
        _checks.fail(fn, "targets must have shape (S,) or (1, S) for "
                     f"unbatched log_probs shape {log_probs.shape}, got shape "
                     f"{targets.shape}")
      log_probs = log_probs[:, None, :]
      targets = targets.reshape(1, -1)
    time, batch, num_classes = log_probs.shape
    if not 0 <= self.blank < num_classes:
      _checks.fail(fn, f"blank must be in [0, {num_classes}) (a class of "
                   f"log_probs shape {log_probs.shape}), got {self.blank}")
    input_lengths = _lengths(fn, "input_lengths", input_lengths, batch)
    target_lengths = _lengths(fn, "target_lengths", target_lengths, batch)
    _check_lengths(fn, "input_lengths", input_lengths, 0, time,
                   "at most T, the length of log_probs")
    known = _concrete(target_lengths)
    if targets.ndim == 1:
      if known is None:
        _checks.values(fn, "target_lengths",
                       jnp.sum(target_lengths) == targets.shape[0],
                       f"must add up to the length {targets.shape[0]} of "
                       "the concatenated targets (their sum)",
                       jnp.sum(target_lengths))
      elif known.sum() != targets.shape[0]:
        _checks.fail(fn, f"target_lengths must add up to the length "
                     f"{targets.shape[0]} of the concatenated targets, got "
                     f"{known.tolist()}")
      _check_lengths(fn, "target_lengths", target_lengths, 0,
                     targets.shape[0], "within the concatenated targets")
      width = None if known is None else int(known.max(initial=0))
      targets = _padded_targets(targets, target_lengths, width)
    elif targets.ndim != 2 or targets.shape[0] != batch:
      _checks.fail(fn, f"targets must have shape ({batch}, S) or "
                   f"(sum(target_lengths),), got shape {targets.shape}")
    else:
      _check_lengths(fn, "target_lengths", target_lengths, 0,
                     targets.shape[1], "at most S, the width of targets")
    frame_pad = jnp.arange(time)[None, :] >= input_lengths[:, None]
    label_pad = (jnp.arange(targets.shape[1])[None, :]
                 >= target_lengths[:, None])
    loss = _ctc.ctc_loss(
        jnp.transpose(log_probs, (1, 0, 2)), frame_pad, targets, label_pad,
        blank_id=int(self.blank), log_epsilon=-jnp.inf)
    if self.zero_infinity:
      loss = jnp.where(jnp.isinf(loss), 0, loss)
    if self.reduction == "mean":
      loss = loss / jnp.maximum(target_lengths, 1).astype(loss.dtype)
    if unbatched and self.reduction == "none":
      return loss[0]
    return _reduction.reduce(fn, loss, self.reduction)
