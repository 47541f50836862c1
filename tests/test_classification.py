"""Margins, poly, ranking, smoothing, torch's margin losses and Keras's focal."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import catalogue
import jaxloss
from jaxloss import _classification
from jaxloss.kernels import cross_entropy as kernel_ce
from helpers import check_autodiff_modes, count_equations, temporaries

rng = np.random.default_rng(5)
N, C = 4, 5
X = rng.normal(0, 1.5, (N, C))
SIGNS = rng.choice([-1.0, 1.0], (N, C))
LABELS = np.array([0, 3, 4, 1])
PROBS = rng.dirichlet(np.ones(C), N)
ONE_HOT = np.eye(C)[LABELS]
KEEP = rng.random((N, C)) > 0.3
KEEP[:, 0] = True
RELEVANCE = rng.integers(0, 3, (N, C)).astype(np.float64)
BINARY = rng.integers(0, 2, (N, C)).astype(np.float64)
P = rng.uniform(0.05, 0.95, (N, C))
EPS = 1e-7                                   # Keras's backend.epsilon()


def f32(a):
  return jnp.asarray(a, jnp.float32)


def value_and_grad(fn, x, *args, **kwargs):
  return jax.jit(jax.value_and_grad(
      lambda x, *a: jnp.sum(fn(x, *a, **kwargs))))(x, *args)


# ----------------------------------------------------------------------------
# Float64 NumPy references.


def log_softmax(x, keep=None):
  x = np.where(keep, x, -np.inf) if keep is not None else x
  m = np.max(x, -1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), -1, keepdims=True))


def ref_poly(x, y, eps, keep=None):
  keep = np.ones(x.shape, bool) if keep is None else keep
  lp = log_softmax(x, keep)
  with np.errstate(invalid="ignore"):
    ce = -np.sum(np.where(keep & (y != 0), y * lp, 0), -1)
  one_minus = np.sum(np.where(keep, y * (1 - np.exp(lp)), 0), -1)
  return ce + eps * one_minus


def ref_multi_margin(x, y, p, margin, w=None):
  xy = np.take_along_axis(x, y[:, None], -1)
  h = np.maximum(margin - xy + x, 0) ** p
  h[np.arange(len(y)), y] = 0
  loss = h.sum(-1) / x.shape[-1]
  return loss * (w[y] if w is not None else 1)


def ref_multilabel_margin(x, t):
  out = []
  for row, targ in zip(x, t):
    listed = []
    for j in targ:
      if j < 0:
        break
      listed.append(j)
    total = sum(max(0, 1 - (row[j] - row[i])) for j in listed
                for i in range(len(row)) if i not in listed)
    out.append(total / len(row))
  return np.array(out)


def log_sigmoid(x):
  return -np.logaddexp(0, -x)


def ref_keras_binary_focal(pred, y, balance=False, alpha=0.25, gamma=2.0,
                           from_logits=False, smoothing=0.0):
  """Keras 3's binary_focal_crossentropy, without its probability clip."""
  if smoothing:
    y = y * (1 - smoothing) + 0.5 * smoothing
  if from_logits:
    bce = -(y * log_sigmoid(pred) + (1 - y) * log_sigmoid(-pred))
    pred = 1 / (1 + np.exp(-pred))
  else:
    bce = -(y * np.log(pred) + (1 - y) * np.log(1 - pred))
  p_t = y * pred + (1 - y) * (1 - pred)
  loss = (1 - p_t) ** gamma * bce
  if balance:
    loss = (y * alpha + (1 - y) * (1 - alpha)) * loss
  return loss.mean(-1)


def ref_keras_categorical_focal(pred, y, alpha=0.25, gamma=2.0,
                                from_logits=False, smoothing=0.0):
  """Keras 3's categorical_focal_crossentropy, without its clip."""
  if smoothing:
    y = y * (1 - smoothing) + smoothing / y.shape[-1]
  if from_logits:
    pred = np.exp(log_softmax(pred))
  out = pred / pred.sum(-1, keepdims=True)
  return np.sum(alpha * (1 - out) ** gamma * -y * np.log(out), -1)


def keras_hinge_labels(t):
  return 2 * t - 1 if np.all((t == 0) | (t == 1)) else t


def ref_squared_hinge(x, t):
  return np.mean(np.maximum(1 - keras_hinge_labels(t) * x, 0) ** 2, -1)


def ref_categorical_hinge(x, t):
  return np.maximum(np.max((1 - t) * x, -1) - np.sum(t * x, -1) + 1, 0)


def ref_multilabel_soft_margin(x, y, w=None):
  terms = -(y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))
  return np.mean(terms * (w if w is not None else 1), -1)


MULTILABEL = np.array([[3, 0, -1, 1, 2], [1, -1, -1, -1, -1],
                       [0, 1, 2, 3, 4], [2, 2, -1, 0, 0]])

# name: (keyword options, float64 reference, inputs (model output, target)).
REFERENCES = {
    "hinge_loss": ({}, lambda x, y: np.maximum(0, 1 - x * y), (X, SIGNS)),
    "perceptron_loss": ({}, lambda x, y: np.maximum(0, -x * y), (X, SIGNS)),
    "multiclass_hinge_loss": (
        {}, lambda x, y: np.max(x + 1 - np.eye(C)[y], -1)
        - np.take_along_axis(x, y[:, None], -1)[:, 0], (X, LABELS)),
    "multiclass_perceptron_loss": (
        {}, lambda x, y: np.max(x, -1)
        - np.take_along_axis(x, y[:, None], -1)[:, 0], (X, LABELS)),
    "poly_loss_cross_entropy": (
        {"epsilon": 1.5}, lambda x, y: ref_poly(x, y, 1.5), (X, PROBS)),
    "safe_softmax_cross_entropy": (
        {}, lambda x, y: -np.sum(y * log_softmax(x), -1), (X, PROBS)),
    "ranking_softmax_loss": (
        {"reduce_fn": None}, lambda x, y: -np.sum(y * log_softmax(x), -1),
        (X, RELEVANCE)),
    "multi_margin_loss": (
        {"p": 2, "margin": 0.7}, lambda x, y: ref_multi_margin(x, y, 2, 0.7),
        (X, LABELS)),
    "multilabel_margin_loss": ({}, ref_multilabel_margin, (X, MULTILABEL)),
    "soft_margin_loss": ({}, lambda x, y: np.logaddexp(0, -x * y),
                         (X, SIGNS)),
    "multilabel_soft_margin_loss": ({}, ref_multilabel_soft_margin,
                                    (X, BINARY)),
    "squared_hinge": ({}, ref_squared_hinge, (X, BINARY)),
    "categorical_hinge": ({}, ref_categorical_hinge, (X, ONE_HOT)),
    "binary_focal_cross_entropy": (
        {"apply_class_balancing": True, "alpha": 0.3, "gamma": 1.5,
         "from_logits": True, "label_smoothing": 0.1},
        lambda x, y: ref_keras_binary_focal(x, y, True, 0.3, 1.5, True, 0.1),
        (X, BINARY)),
    "categorical_focal_cross_entropy": (
        {"alpha": 0.4, "gamma": 0.5, "from_logits": True,
         "label_smoothing": 0.2},
        lambda x, y: ref_keras_categorical_focal(x, y, 0.4, 0.5, True, 0.2),
        (X, ONE_HOT)),
}


def call(name, **extra):
  kwargs = {**REFERENCES[name][0], **extra}
  if "reduction" in extra:
    kwargs.pop("reduce_fn", None)
  return lambda x, y: getattr(jaxloss, name)(x, y, **kwargs)


def inputs32(name):
  x, y = REFERENCES[name][2]
  return f32(x), (jnp.asarray(y) if y.dtype.kind == "i" else f32(y))


# Where finite differences check the gradient: the losses whose gradient
# takes more than one line of algebra (log space, custom derivatives, masks),
# at inputs away from any hinge's kink.
CHECK_GRADS = ("poly_loss_cross_entropy", "ranking_softmax_loss",
               "multi_margin_loss", "multilabel_soft_margin_loss",
               "binary_focal_cross_entropy", "categorical_focal_cross_entropy")
# Losses with a row structure, where vmap over rows is worth checking.
VMAP = ("multiclass_hinge_loss", "poly_loss_cross_entropy",
        "ranking_softmax_loss", "multi_margin_loss", "multilabel_margin_loss",
        "categorical_focal_cross_entropy")


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_float64_and_half_precision(name):
  fn, ref, (x, y) = call(name), REFERENCES[name][1], REFERENCES[name][2]
  with jax.enable_x64(True):
    got = fn(jnp.asarray(x), jnp.asarray(y))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref(x, y), rtol=1e-12, atol=1e-14)
    if name in CHECK_GRADS:
      check_grads(lambda x: fn(x, jnp.asarray(y)), (jnp.asarray(x),),
                  order=1, modes=("rev",), eps=1e-6)
  xf, yf = inputs32(name)
  for dtype in (jnp.float16, jnp.bfloat16):
    half = fn(xf.astype(dtype), yf)
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(
        half, ref(np.asarray(xf.astype(dtype), np.float64), y), rtol=1e-5,
        atol=1e-5)
  if name in VMAP:
    np.testing.assert_allclose(jax.vmap(fn)(xf, yf), fn(xf, yf), rtol=1e-5,
                               atol=1e-6)


def test_jit_and_eager_agree():
  # Op by op is costly (every primitive compiles on its own): two losses.
  for name in ("hinge_loss", "multiclass_hinge_loss"):
    xf, yf = inputs32(name)
    with jax.disable_jit():
      eager = call(name)(xf, yf)
    np.testing.assert_allclose(eager, call(name)(xf, yf), rtol=1e-6,
                               atol=1e-7)


def test_reductions():
  # Every loss reduces through the same helper: one of each kind of loss.
  for name in ("hinge_loss", "multiclass_perceptron_loss",
               "binary_focal_cross_entropy"):
    xf, yf = inputs32(name)
    per = call(name)(xf, yf)
    np.testing.assert_allclose(call(name, reduction="mean")(xf, yf),
                               per.mean(), rtol=1e-6)
    np.testing.assert_allclose(call(name, reduction="sum")(xf, yf),
                               per.sum(), rtol=1e-6)


# Large logits: every loss stays finite with finite gradients at +-1e4.
EXTREME = np.array([[1e4, -1e4, 0.5, -0.5, 1e4],
                    [-1e4, 1e4, -1e4, 1e4, 0.0],
                    [0.0, 0.0, 0.0, 0.0, -1e4],
                    [1e4, 1e4, 1e4, 1e4, 1e4]])


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_extreme_inputs_finite_gradients(name):
  _, yf = inputs32(name)
  value, grad = value_and_grad(call(name), f32(EXTREME), yf)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------
# optax parity.

OPTAX = {
    "hinge_loss": ({}, (X, SIGNS)),
    "perceptron_loss": ({}, (X, SIGNS)),
    "multiclass_hinge_loss": ({}, (X, LABELS)),
    "multiclass_perceptron_loss": ({}, (X, LABELS)),
    "poly_loss_cross_entropy": ({"epsilon": 1.5}, (X, PROBS)),
    "poly_loss_cross_entropy-where": ({"where": KEEP}, (X, PROBS)),
    "safe_softmax_cross_entropy": ({}, (X, PROBS)),
    "ranking_softmax_loss": ({}, (X, RELEVANCE)),
    "ranking_softmax_loss-options": (
        {"where": KEEP, "weights": P, "reduce_fn": None}, (X, RELEVANCE)),
    "ranking_softmax_loss-sum": ({"where": KEEP, "reduce_fn": jnp.sum},
                                 (X, RELEVANCE)),
}


@pytest.mark.parametrize("case", sorted(OPTAX))
def test_optax_parity(case):
  name = case.split("-")[0]
  kwargs, (x, y) = OPTAX[case]
  kwargs = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v)
            for k, v in kwargs.items()}
  xf = f32(x)
  yf = jnp.asarray(y) if y.dtype.kind == "i" else f32(y)
  ours, our_grad = value_and_grad(getattr(jaxloss, name), xf, yf, **kwargs)
  theirs, their_grad = value_and_grad(getattr(optax.losses, name), xf, yf,
                                      **kwargs)
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  np.testing.assert_allclose(our_grad, their_grad, rtol=1e-5, atol=1e-6)
  per_ours = getattr(jaxloss, name)(xf, yf, **kwargs)
  per_theirs = jax.jit(lambda x, y: getattr(optax.losses, name)(
      x, y, **kwargs))(xf, yf)
  assert per_ours.shape == per_theirs.shape
  np.testing.assert_allclose(per_ours, per_theirs, rtol=1e-6, atol=1e-7)


def test_smooth_labels_optax_parity_and_where():
  y = f32(ONE_HOT)
  np.testing.assert_allclose(jaxloss.smooth_labels(y, 0.1),
                             optax.losses.smooth_labels(y, 0.1), rtol=1e-6)
  keep = jnp.asarray(KEEP)
  ours = jaxloss.smooth_labels(y, 0.1, where=keep)
  theirs = optax.losses.smooth_labels(y, 0.1, where=keep)
  np.testing.assert_allclose(jnp.where(keep, ours, 0),
                             jnp.where(keep, theirs, 0), rtol=1e-6)
  # Dropped classes get no smoothing mass (optax adds alpha / K there too).
  np.testing.assert_allclose(jnp.where(keep, 0, ours), 0)
  np.testing.assert_allclose(ours.sum(-1), 1, rtol=1e-6)
  assert not np.allclose(jnp.where(keep, 0, theirs), 0)
  # Integer labels, per-row alpha, tuple axes, half precision.
  np.testing.assert_allclose(
      jaxloss.smooth_labels(jnp.asarray(LABELS[:, None] == np.arange(C)),
                            0.1), jaxloss.smooth_labels(y, 0.1))
  alpha = jnp.linspace(0, 1, N)[:, None]
  np.testing.assert_allclose(jaxloss.smooth_labels(y, alpha),
                             (1 - alpha) * y + alpha / C, rtol=1e-6)
  cube = f32(rng.dirichlet(np.ones(6), 2).reshape(2, 3, 2))
  np.testing.assert_allclose(
      jaxloss.smooth_labels(cube, 0.3, axis=(1, 2)), 0.7 * cube + 0.05,
      rtol=1e-6)
  assert jaxloss.smooth_labels(y.astype(jnp.bfloat16), 0.1).dtype == \
      jnp.bfloat16


# ----------------------------------------------------------------------------
# Edges where jaxloss deliberately differs from optax.


FLAGGED = ["multiclass_hinge_loss", "multiclass_perceptron_loss",
           "softmax_cross_entropy_with_integer_labels"]


@pytest.mark.parametrize("name", FLAGGED)
def test_out_of_range_rows_nan_alone_and_differentiated_zero_gradient(name):
  x, bad = f32(X), jnp.array([0, 5, -1, 2])
  fn = getattr(jaxloss, name)
  value = jax.jit(fn)(x, bad)
  (alive, grad) = jax.jit(jax.value_and_grad(
      lambda x: jnp.sum(jnp.where(jnp.isnan(fn(x, bad)), 0, fn(x, bad)))))(x)
  np.testing.assert_array_equal(np.isnan(value), [False, True, True, False])
  np.testing.assert_array_equal(
      jax.jit(lambda x: jax.jvp(lambda x: fn(x, bad), (x,),
                                (jnp.ones_like(x),))[0])(x), value)
  np.testing.assert_array_equal(grad[1:3], 0)
  assert np.isfinite(alive) and np.all(np.isfinite(grad))
  # Zero there also when the NaN rows' cotangents are not: the sum of every
  # row, and the mean, are NaN, their gradients 0 on those rows.
  for reduction, scale in (("sum", 1), ("mean", 1 / len(bad))):
    whole = np.asarray(jax.jit(jax.grad(
        lambda x: fn(x, bad, reduction=reduction)))(x))
    np.testing.assert_array_equal(whole[1:3], 0)
    np.testing.assert_allclose(whole[[0, 3]], np.asarray(grad)[[0, 3]] * scale,
                               rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusions")
@pytest.mark.parametrize("name", FLAGGED)
def test_label_check_costs_no_loop_of_its_own(name):
  # The NaN of an out-of-range label rides on the label's score, computed
  # with its gather: the mean compiles to no more loops than optax's (at a
  # size where XLA:CPU hands the reductions to its library; compiled, not
  # run).
  x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)
  labels = jax.ShapeDtypeStruct((4096,), jnp.int32)

  def loops(fn, grad):
    def mean(x, y):
      return jnp.mean(fn(x, y))
    text = jax.jit(jax.value_and_grad(mean) if grad else mean).lower(
        x, labels).compile().as_text()
    return len(re.findall(r"= \S+ fusion\(", text))

  # With the gradient too: zero gradients on those rows come from one
  # select in the loop that writes the gradient (jaxloss._rows.gate_rows).
  for grad in (False, True):
    assert (loops(getattr(jaxloss, name), grad)
            <= loops(getattr(optax.losses, name), grad)), grad


_MAX_ROWS = [[1.0, 3.0, 3.0, 2.0], [-np.inf] * 4, [np.inf, 1.0, np.inf, 0.0],
             [np.nan, 1.0, 2.0, 3.0], [0.0] * 4, [5.0, -np.inf, 1.0, 5.0]]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_row_max_is_jnp_max_with_its_derivatives(dtype):
  # The margin losses' maximum: jnp.max's value, and its derivative (ties
  # share it, NaN on a row holding a NaN) from one pass, in forward and
  # reverse mode, at second order and under vmap.
  from jaxloss._rows import row_max

  def plain(v):
    return jnp.max(v, axis=-1)

  v = jnp.asarray(_MAX_ROWS, dtype)

  def weighted(f):
    return lambda v: jnp.sum(f(v).astype(jnp.float32)
                             * jnp.arange(1.0, v.shape[0] + 1))

  np.testing.assert_array_equal(row_max(v), plain(v))
  np.testing.assert_array_equal(jax.grad(weighted(row_max))(v),
                                jax.grad(weighted(plain))(v))
  ones = jnp.ones_like(v)
  np.testing.assert_array_equal(jax.jvp(row_max, (v,), (ones,))[1],
                                jax.jvp(plain, (v,), (ones,))[1])
  # 1500 ties in a row: a count half precision does not hold (jnp.max's
  # own derivative counts them in the input's dtype: 1/1504 in bfloat16).
  many = jnp.zeros((2, 1500), dtype).at[1, 7].set(1)
  grad = jax.grad(weighted(row_max))(many)
  np.testing.assert_array_equal(grad[0], jnp.full(1500, 1 / 1500, dtype))
  np.testing.assert_array_equal(grad[1], jnp.zeros(1500).at[7].set(2))
  # A nonlinear function of the maximum: its derivative depends on the
  # maximum's value, so second order reads the maximum's derivative too.
  u = jnp.asarray(_tied_rows(), jnp.float32)

  def curved(f):
    return lambda u: jnp.sum(jnp.sin(f(u)) ** 2 + f(u) ** 3)

  np.testing.assert_allclose(jax.hessian(curved(row_max))(u),
                             jax.hessian(curved(plain))(u), rtol=1e-6)
  np.testing.assert_allclose(jax.jacrev(jax.grad(curved(row_max)))(u),
                             jax.hessian(curved(plain))(u), rtol=1e-6)
  np.testing.assert_array_equal(
      jax.vmap(jax.grad(lambda r: row_max(r[None])[0]))(u),
      jax.vmap(jax.grad(jnp.max))(u))


def _tied_rows():
  u = np.random.default_rng(7).normal(size=(3, 5))
  u[0, 1] = u[0, 3] = u[0].max() + 1   # a tie at the top
  return u


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's buffers")
@pytest.mark.parametrize("name,targets", [
    ("multiclass_hinge_loss", jnp.int32), ("categorical_hinge", jnp.float32)])
def test_margin_gradient_keeps_no_class_sized_temporary(name, targets):
  # jnp.max's own derivative writes an indicator of the ties and its
  # broadcast count: with the margins, two [rows, classes] temporaries
  # (optax and the plain formula keep them), which XLA:CPU allocates afresh
  # on every call (compiled, not run). multiclass_perceptron_loss keeps
  # jnp.max's: its one [rows, classes] temporary costs less time than the
  # one-pass derivative's reduction over long rows.
  x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)
  y = jax.ShapeDtypeStruct((4096,) if targets == jnp.int32 else x.shape,
                           targets)

  def mean(x, y):
    return jnp.mean(getattr(jaxloss, name)(x, y))

  assert temporaries(jax.value_and_grad(mean), x, y) < 4096 * 1024


@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_out_of_range_rows_nan_with_zero_gradient(p):
  # The NaN rides on the target's score; relu's derivative gives the row an
  # exact zero gradient, an infinite score in it included.
  x = f32(X).at[2, 1].set(jnp.inf)
  bad = jnp.array([0, 5, -1, 2])
  for weight in (None, jnp.arange(1.0, 1.0 + X.shape[1])):
    def total(x, weight=weight):
      return jaxloss.multi_margin_loss(x, bad, p=p, weight=weight,
                                       reduction="sum")
    value, grad = jax.jit(jax.value_and_grad(total))(x)
    assert np.isnan(value)
    grad = np.asarray(grad)
    np.testing.assert_array_equal(grad[1:3], 0)
    assert np.all(np.isfinite(grad)) and np.any(grad[[0, 3]] != 0)


def test_out_of_range_labels_give_nan():
  x, bad = f32(X), jnp.array([0, 5, -1, 2])
  for name in ("multiclass_hinge_loss", "multiclass_perceptron_loss"):
    ours = getattr(jaxloss, name)(x, bad)
    theirs = getattr(optax.losses, name)(x, bad)
    np.testing.assert_array_equal(np.isnan(ours), [False, True, True, False])
    assert np.all(np.isfinite(theirs))            # optax: a plausible number
    np.testing.assert_allclose(np.asarray(ours)[[0, 3]],
                               np.asarray(theirs)[[0, 3]], rtol=1e-6)
  loss = jaxloss.multi_margin_loss(x, bad)
  np.testing.assert_array_equal(np.isnan(loss), [False, True, True, False])
  bad_multi = MULTILABEL.copy()
  bad_multi[0, 0] = C
  bad_multi[1, 1] = -2
  np.testing.assert_array_equal(
      np.isnan(jaxloss.multilabel_margin_loss(x, jnp.asarray(bad_multi))),
      [True, True, False, False])
  # After a row's terminator nothing is read, not even an index out of
  # range or a second terminator below -1, as torch stops at the first -1.
  after = jnp.array([[1, -1, -2, C, 0], [0, 2, -1, C, -7]])
  ours = jaxloss.multilabel_margin_loss(x[:2], after)
  assert np.all(np.isfinite(ours))
  np.testing.assert_allclose(
      ours, jaxloss.multilabel_margin_loss(
          x[:2], jnp.array([[1, -1, 0, 0, 0], [0, 2, -1, 0, 0]])), rtol=1e-6)
  # Masked rows are dropped before the label is read.
  np.testing.assert_array_equal(
      jaxloss.multiclass_hinge_loss(x, bad, where=jnp.array([1, 0, 0, 1],
                                                            bool))[1:3], 0)


def test_minus_inf_logits():
  x = f32(X).at[0, 1].set(-jnp.inf).at[2, :2].set(-jnp.inf)
  y = f32(PROBS).at[0, 1].set(0).at[2, :2].set(0)
  y = y / y.sum(-1, keepdims=True)
  for name, kwargs in (("poly_loss_cross_entropy", {}),
                       ("safe_softmax_cross_entropy", {}),
                       ("ranking_softmax_loss", {"reduce_fn": None})):
    value, grad = value_and_grad(getattr(jaxloss, name), x, y, **kwargs)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), name
    np.testing.assert_array_equal(grad[0, 1], 0)
  # optax's poly loss and ranking loss read 0 * -inf.
  their_poly = jax.jit(optax.losses.poly_loss_cross_entropy)
  assert np.isnan(their_poly(x, y)[0])
  assert np.isnan(jax.jit(lambda x, y: optax.losses.ranking_softmax_loss(
      x, y, reduce_fn=None))(x, y)[0])
  keep = jnp.isfinite(x)
  np.testing.assert_allclose(
      jaxloss.poly_loss_cross_entropy(x, y),
      their_poly(jnp.where(keep, x, 0), y, where=keep), rtol=1e-5)
  # Keras's categorical focal loss on logits: -inf marks impossible classes.
  value, grad = value_and_grad(jaxloss.categorical_focal_cross_entropy,
                               x, y, from_logits=True, label_smoothing=0.1)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  # A probability on a -inf class costs inf.
  assert jaxloss.poly_loss_cross_entropy(x, f32(PROBS))[0] == jnp.inf


CROSS_SUMS = {
    "ranking_softmax_loss": lambda x, y: jaxloss.ranking_softmax_loss(
        x, y, reduce_fn=None),
    "softmax_cross_entropy": jaxloss.softmax_cross_entropy,
    "softmax_cross_entropy(reference)": lambda x, y:
        jaxloss.softmax_cross_entropy(x, y, implementation="reference"),
}


@pytest.mark.parametrize("name", CROSS_SUMS)
def test_row_of_minus_inf_costs_inf_with_mass_and_0_without(name):
  # The value alone and the value under differentiation agree, and every
  # implementation reads the same.
  x = f32(X).at[1].set(-jnp.inf).at[2].set(-jnp.inf)
  y = f32(PROBS).at[2].set(0)
  fn = CROSS_SUMS[name]
  value = jax.jit(fn)(x, y)
  np.testing.assert_array_equal(value[1:3], [np.inf, 0])
  assert np.all(np.isfinite(np.asarray(value)[[0, 3]]))
  differentiated = jax.jit(lambda x: jax.jvp(lambda x: fn(x, y), (x,),
                                             (jnp.ones_like(x),))[0])(x)
  np.testing.assert_array_equal(differentiated, value)


@pytest.mark.parametrize("form", [{}, {"squared": True},
                                  {"nonnegative": True}],
                         ids=["abs", "squared", "nonnegative"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_cap_is_the_largest_number_at_zero_and_inf_elsewhere(dtype, jit,
                                                             form):
  from jaxloss._rows import cap_unless_zero
  cap_of = functools.partial(cap_unless_zero, **form)
  info = jnp.finfo(dtype)
  c = jnp.array([0.0, -0.0, float(info.tiny), -float(info.tiny), 0.5, -1.0,
                 float(info.max), np.inf, -np.inf], dtype)
  signed = not form.get("nonnegative")
  if not signed:
    c = c[jnp.signbit(c) == 0]
  cap = (jax.jit(cap_of) if jit else cap_of)(c)
  assert cap.dtype == dtype
  np.testing.assert_array_equal(np.asarray(cap, np.float64),
                                [float(info.max)] * (2 if signed else 1)
                                + [np.inf] * (c.size - (2 if signed else 1)))
  # The smallest subnormal: inf, or the largest number where XLA flushes it
  # to 0 (or where the squared form squares it to nothing). Never NaN.
  tiny = jnp.array([float(info.smallest_subnormal)] * 2, dtype) * jnp.array(
      [1, -1 if signed else 1], dtype)
  cap = (jax.jit(cap_of) if jit else cap_of)(tiny)
  assert np.all(np.isin(np.asarray(cap, np.float64), [float(info.max), np.inf]))


def test_negative_label_on_minus_inf_logit_costs_minus_inf():
  # torch takes any real targets: a negative one on an impossible class
  # reads -inf, as the sum of its terms does; zero labels there read 0.
  x = f32(X).at[0, 1].set(-jnp.inf)
  y = f32(PROBS).at[0, 1].set(-0.5)
  assert jax.jit(jaxloss.softmax_cross_entropy)(x, y)[0] == -jnp.inf
  assert np.isfinite(jax.jit(jaxloss.softmax_cross_entropy)(
      x, y.at[0, 1].set(0))[0])


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusion of a sum")
def test_ranking_value_fuses_with_its_mean_and_gradient_keeps_rows():
  x, y = jnp.tile(f32(X), (64, 8)), jnp.tile(f32(PROBS), (64, 8))
  compiled = jax.jit(jaxloss.ranking_softmax_loss).lower(x, y).compile()
  # Row statistics only: the terms are not written out.
  assert compiled.memory_analysis().temp_size_in_bytes < x.nbytes / 8
  # With the gradient, written out derivatives: no [lists, items] array is
  # kept besides the gradient itself.
  compiled = jax.jit(jax.value_and_grad(jaxloss.ranking_softmax_loss)).lower(
      x, y).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < x.nbytes / 2


def masked_max(a, where=None):
  return jnp.max(a, where=where, initial=-jnp.inf)


def test_poly_and_ranking_masks():
  x, y, keep = f32(X), f32(PROBS), jnp.asarray(KEEP)
  rows = jnp.array([True, False, True, True])
  full = jaxloss.poly_loss_cross_entropy(x, y)
  np.testing.assert_allclose(
      jaxloss.poly_loss_cross_entropy(x, y, where=rows),
      jnp.where(rows, full, 0), rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.poly_loss_cross_entropy(x, y, where=rows, reduction="mean"),
      full[rows].mean(), rtol=1e-6)
  with jax.enable_x64(True):
    np.testing.assert_allclose(
        jaxloss.poly_loss_cross_entropy(jnp.asarray(X), jnp.asarray(PROBS),
                                        epsilon=jnp.arange(N) / 2.0,
                                        where=jnp.asarray(KEEP)),
        ref_poly(X, PROBS, np.arange(N) / 2.0, KEEP), rtol=1e-12)
  # A list with no valid item: 0, out of the mean, zero gradient.
  none = keep.at[1].set(False)
  value, grad = value_and_grad(jaxloss.ranking_softmax_loss, x, y, where=none)
  per = jaxloss.ranking_softmax_loss(x, y, where=none, reduce_fn=None)
  assert per[1] == 0 and np.all(grad[1] == 0)
  np.testing.assert_allclose(value, per.sum() / 3, rtol=1e-6)
  assert jaxloss.ranking_softmax_loss(x, y, where=jnp.zeros_like(keep)) == 0
  np.testing.assert_allclose(
      jaxloss.ranking_softmax_loss(x, y, reduction="sum"),
      jaxloss.ranking_softmax_loss(x, y, reduce_fn=jnp.sum), rtol=1e-6)
  # Any other reduce_fn is called with the valid lists, as optax does.
  np.testing.assert_allclose(
      jaxloss.ranking_softmax_loss(x, y, where=none, reduce_fn=masked_max),
      jnp.max(jnp.where(jnp.arange(N) != 1, per, -jnp.inf)), rtol=1e-6)


def test_binary_margin_options():
  x, t = f32(X), f32(SIGNS)
  w, keep = f32(P), jnp.asarray(KEEP)
  for fn in (jaxloss.hinge_loss, jaxloss.perceptron_loss):
    plain = fn(x, t)
    np.testing.assert_allclose(fn(x, t, weight=w, where=keep),
                               jnp.where(keep, plain * w, 0), rtol=1e-6)
    np.testing.assert_allclose(fn(x, t, where=keep, reduction="mean"),
                               plain[keep].mean(), rtol=1e-6)
    # Broadcasting, as optax: one target row against every row.
    np.testing.assert_allclose(fn(x, t[0]),
                               fn(x, jnp.broadcast_to(t[0], x.shape)))


# ----------------------------------------------------------------------------
# Keras losses: options against the reference formulas.


def test_binary_focal_options_against_keras():
  y = BINARY
  with jax.enable_x64(True):
    for balance, alpha, gamma, from_logits, smoothing in [
        (False, 0.25, 2.0, False, 0.0), (True, 0.25, 2.0, False, 0.2),
        (False, 0.25, 0.0, True, 0.0), (True, 0.6, 0.5, True, 0.0)]:
      pred = X if from_logits else P
      got = jaxloss.binary_focal_cross_entropy(
          jnp.asarray(pred), jnp.asarray(y),
          apply_class_balancing=balance, alpha=alpha, gamma=gamma,
          from_logits=from_logits, label_smoothing=smoothing)
      np.testing.assert_allclose(
          got, ref_keras_binary_focal(pred, y, balance, alpha, gamma,
                                      from_logits, smoothing), rtol=1e-12)
    # axis and reduction.
    got = jaxloss.binary_focal_cross_entropy(jnp.asarray(P), jnp.asarray(y),
                                             axis=0, reduction="sum")
    np.testing.assert_allclose(
        got, ref_keras_binary_focal(P.T, y.T).sum(), rtol=1e-12)
  # Keras clips probabilities to [1e-7, 1 - 1e-7]: so does jaxloss on
  # probabilities; on logits jaxloss stays exact where Keras saturates.
  edge = f32([[0.0, 1.0]])
  top = np.float32(1) - np.float32(EPS)          # 1 - 1e-7 in float32
  np.testing.assert_allclose(
      jaxloss.binary_focal_cross_entropy(edge, f32([[1.0, 0.0]]), gamma=0.0),
      -(np.log(EPS) + np.log(1 - top)) / 2, rtol=1e-5)
  logits = f32([[40.0, -40.0]])
  np.testing.assert_allclose(
      jaxloss.binary_focal_cross_entropy(logits, f32([[0.0, 1.0]]),
                                         gamma=0.0, from_logits=True), 40.0,
      rtol=1e-6)


def test_categorical_focal_options_against_keras():
  y = ONE_HOT
  with jax.enable_x64(True):
    for alpha, gamma, from_logits, smoothing in [
        (0.25, 2.0, False, 0.0), (0.25, 2.0, False, 0.1),
        (0.5, 0.0, True, 0.0), (np.linspace(0.1, 0.5, C), 3.0, True, 0.3)]:
      pred = X if from_logits else PROBS
      got = jaxloss.categorical_focal_cross_entropy(
          jnp.asarray(pred), jnp.asarray(y), alpha=jnp.asarray(alpha),
          gamma=gamma, from_logits=from_logits, label_smoothing=smoothing)
      np.testing.assert_allclose(
          got, ref_keras_categorical_focal(pred, y, alpha, gamma,
                                           from_logits, smoothing),
          rtol=1e-10)
    got = jaxloss.categorical_focal_cross_entropy(
        jnp.asarray(PROBS.T), jnp.asarray(y.T), axis=0, reduction="mean")
    np.testing.assert_allclose(
        got, ref_keras_categorical_focal(PROBS, y).mean(), rtol=1e-12)
    # Probabilities are renormalised first, as Keras does.
    np.testing.assert_allclose(
        jaxloss.categorical_focal_cross_entropy(jnp.asarray(PROBS * 3),
                                                jnp.asarray(y)),
        ref_keras_categorical_focal(PROBS, y), rtol=1e-12)


def test_categorical_focal_gradient_at_certainty():
  # p = 1 for the true class: (1 - p)^gamma * log p has derivative 0 for
  # every gamma > 0; autodiff through the power gives 0 * inf = NaN there
  # for gamma < 1.
  x = f32([[60.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  y = f32([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  for gamma in (0.5, 2.0):
    value, grad = value_and_grad(jaxloss.categorical_focal_cross_entropy,
                                 x, y, gamma=gamma, from_logits=True)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), gamma
    np.testing.assert_allclose(grad[0], 0, atol=1e-12)
  with jax.enable_x64(True):
    check_grads(
        lambda x: jaxloss.categorical_focal_cross_entropy(
            x, jnp.asarray(ONE_HOT), gamma=0.5, from_logits=True),
        (jnp.asarray(X),), order=1, modes=("fwd",), eps=1e-6)



def test_categorical_focal_from_logits_target_gradients():
  # d/dy_c is the class's focal term, zero target or not: the -inf guard
  # must not zero it on finite logits (which also zeroed the derivative by
  # label_smoothing at 0).
  with jax.enable_x64(True):
    x, y = jnp.asarray(X), jnp.asarray(ONE_HOT)
    p = jax.nn.softmax(x)

    def on(pred, from_logits):
      return lambda y, eps: jnp.sum(jaxloss.categorical_focal_cross_entropy(
          pred, y, from_logits=from_logits, label_smoothing=eps))

    for eps in (0.0, 0.2):
      got = jax.grad(on(x, True), (0, 1))(y, eps)
      want = jax.grad(on(p, False), (0, 1))(y, eps)
      assert np.all(np.asarray(got[0])[np.asarray(y) == 0] != 0)
      np.testing.assert_allclose(got[0], want[0], rtol=1e-9)
      np.testing.assert_allclose(got[1], want[1], rtol=1e-9)
    # A zero target on a -inf logit: nothing, with zero derivatives.
    x = x.at[0, 1].set(-jnp.inf)
    y = y.at[0].set(jnp.eye(C)[0])
    value, grads = jax.value_and_grad(on(x, True), (0, 1))(y, 0.0)
    assert np.isfinite(value)
    assert grads[0][0, 1] == 0 and np.isfinite(grads[1])
    assert np.all(np.isfinite(grads[0]))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_focal_values_on_probabilities_fuse_with_their_sum(dtype):
  # On CPUs the values clip by two maxima (a clamp had XLA:CPU write the
  # clipped probabilities out, 16 MiB at [4096, 1024]), the categorical
  # one's row sums in a pass of their own, and half-precision predictions
  # are converted apart from other passes: no array of the input's size.
  x = jax.ShapeDtypeStruct((512, 1024), dtype)
  for fn in (jaxloss.binary_focal_cross_entropy,
             jaxloss.categorical_focal_cross_entropy):
    value = lambda p, y, fn=fn: jnp.mean(fn(p, y))
    assert temporaries(value, x, x) < 0.01 * x.size * 4, fn.__name__
  # The same numbers as under differentiation (the clamp's form), at and
  # past the clip's bounds, NaN included, from half precision too.
  edge = [0.0, 1e-9, EPS, 0.3, 1 - EPS, 1.0, 2.0, 0.01]
  p = np.tile(np.array(edge, np.float32), (5, 8))        # rows of 64
  p[1:, 0] = 1e3       # renormalised rows with probabilities under EPS
  p[0, -1] = np.nan
  y = np.random.default_rng(0).uniform(size=p.shape).astype(np.float32)
  p, y = jnp.asarray(p, dtype), jnp.asarray(y, dtype)
  for fn in (jaxloss.binary_focal_cross_entropy,
             jaxloss.categorical_focal_cross_entropy):
    for gamma in (0.0, 2.0):
      loss = functools.partial(fn, gamma=gamma)
      value = jax.jit(loss)(p, y)
      exact, _ = jax.jvp(loss, (p, y), (jnp.zeros_like(p),
                                        jnp.zeros_like(y)))
      np.testing.assert_array_equal(value, exact)
      assert np.isnan(value[0]).any() and np.isfinite(value[1:]).all()
  # bfloat16 probabilities are converted, not rounded, before the clip.
  p = jnp.array([[0.0, 0.25, 0.5, 1.0]], jnp.bfloat16)
  y = jnp.array([[0.0, 1.0, 0.0, 1.0]], jnp.bfloat16)
  np.testing.assert_allclose(
      jax.jit(jaxloss.binary_focal_cross_entropy)(p, y),
      jaxloss.binary_focal_cross_entropy(p.astype(jnp.float32),
                                         y.astype(jnp.float32)), rtol=1e-6)


def test_binary_focal_modulation_at_certainty():
  # On probabilities, 1 - p_t is exactly 0 where the prediction equals its
  # target: (1 - p_t)^gamma is 0 ** gamma (1 at gamma = 0) with zero
  # derivatives, for a traced gamma as for a concrete one; autodiff through
  # the power gives 0 * inf = NaN there for gamma < 1.
  p = f32([[1.0, 0.0, 0.3, 0.8]])
  y = f32([[1.0, 0.0, 1.0, 0.0]])
  base = np.array([0.0, 0.0, 0.7, 0.8])

  def ref(p, y, gamma):
    clipped = jnp.clip(p, EPS, 1 - EPS)
    bce = -(y * jnp.log(clipped) + (1 - y) * jnp.log(1 - clipped))
    return jnp.mean(bce * (y * (1 - p) + (1 - y) * p) ** gamma)

  loss = jax.jit(lambda p, gamma: jaxloss.binary_focal_cross_entropy(
      p, y, gamma=gamma, reduction="sum"))
  for gamma in (0.0, 0.5, 1.0, 2.0):
    value, (grad_p, grad_gamma) = jax.value_and_grad(loss, argnums=(0, 1))(
        p, jnp.float32(gamma))
    np.testing.assert_allclose(value, ref(p, y, gamma), rtol=1e-6)
    np.testing.assert_allclose(value, jaxloss.binary_focal_cross_entropy(
        p, y, gamma=gamma, reduction="sum"), rtol=1e-6)
    # At the certain elements the clip holds the cross entropy still and
    # the modulation's derivatives are 0; elsewhere autodiff of the
    # formula is exact.
    want_p = jax.grad(ref)(p, y, gamma)
    np.testing.assert_allclose(grad_p[0, :2], 0, atol=0)
    np.testing.assert_allclose(grad_p[0, 2:], want_p[0, 2:], rtol=1e-5)
    clipped = np.clip(np.asarray(p[0], np.float64), EPS, 1 - EPS)
    bce = -(y[0] * np.log(clipped) + (1 - y[0]) * np.log(1 - clipped))
    with np.errstate(divide="ignore", invalid="ignore"):
      terms = np.where(base > 0, bce * base**gamma * np.log(base), 0)
    np.testing.assert_allclose(grad_gamma, terms.mean(), rtol=1e-5)
  # gamma = 0 traced: 0 ** 0 = 1, as a concrete 0 leaves the factor out.
  np.testing.assert_allclose(
      loss(p, jnp.float32(0.0)),
      jaxloss.binary_focal_cross_entropy(p, y, gamma=0.0, reduction="sum"),
      rtol=1e-6)

def test_squared_hinge_value_writes_nothing_out():
  # Whether the targets are {0, 1} is a maximum of arithmetic, and their
  # map to {-1, 1} arithmetic: XLA:CPU fuses both with their sums. An `all`
  # of compares and a select wrote a mask, the targets and two broadcast
  # constants out.
  x = jax.ShapeDtypeStruct((512, 256), jnp.float32)
  step = lambda x, t: jnp.mean(jaxloss.squared_hinge(x, t))
  assert temporaries(step, x, x) < 0.01 * x.size * 4


def test_keras_hinges():
  x = f32(X)
  # All-binary targets map to -1/1; mixed ones are left alone, as Keras.
  mixed = SIGNS.copy()
  mixed[0, 0] = 0
  np.testing.assert_allclose(jaxloss.squared_hinge(x, f32(mixed)),
                             ref_squared_hinge(X, mixed), rtol=1e-5)
  np.testing.assert_allclose(jaxloss.squared_hinge(x, f32(BINARY)),
                             jaxloss.squared_hinge(x, f32(2 * BINARY - 1)),
                             rtol=1e-6)
  # Near 0 and 1 is not binary; an infinite target is left as it is.
  for odd in (1 + 2.0 ** -23, 2.0 ** -126, -2.0 ** -126, np.inf):
    near = BINARY.astype(np.float32)
    near[0, 0] = odd
    with np.errstate(invalid="ignore", over="ignore"):
      np.testing.assert_allclose(jaxloss.squared_hinge(x, near),
                                 ref_squared_hinge(X, near), rtol=1e-5)
  # The true class enters Keras's max as 0.
  neg = f32([[1.0, -2.0, -3.0]])
  np.testing.assert_allclose(jaxloss.categorical_hinge(neg, f32([[1, 0, 0]])),
                             0.0)


# ----------------------------------------------------------------------------
# Argument checks.


def test_errors():
  x2, y2 = jnp.ones((2, 3)), jnp.zeros(2, int)
  cases = [
      (TypeError, "hinge_loss: predictor_outputs must have a floating dtype",
       lambda: jaxloss.hinge_loss(jnp.ones(3, int), jnp.ones(3))),
      (ValueError, r"perceptron_loss: targets shape \(2,\) does not "
       r"broadcast to predictor_outputs shape \(3,\)",
       lambda: jaxloss.perceptron_loss(jnp.ones(3), jnp.ones(2))),
      (TypeError, "hinge_loss: where must be a boolean mask",
       lambda: jaxloss.hinge_loss(jnp.ones(3), jnp.ones(3), where=jnp.ones(3))),
      (TypeError, "multiclass_hinge_loss: labels must have an integer dtype",
       lambda: jaxloss.multiclass_hinge_loss(x2, jnp.zeros(2))),
      (ValueError, r"multiclass_perceptron_loss: labels shape \(3,\) does not "
       r"broadcast to the batch shape of scores \(2,\).*; scores has shape "
       r"\(2, 3\)",
       lambda: jaxloss.multiclass_perceptron_loss(x2, jnp.zeros(3, int))),
      (ValueError, r"multiclass_hinge_loss: where must be a row mask with the "
       r"batch shape \(2,\), got shape \(2, 3\)",
       lambda: jaxloss.multiclass_hinge_loss(x2, y2,
                                             where=jnp.ones((2, 3), bool))),
      (ValueError, r"poly_loss_cross_entropy: epsilon shape \(3,\) does not "
       r"broadcast to the batch shape of logits \(2,\)",
       lambda: jaxloss.poly_loss_cross_entropy(x2, x2, epsilon=jnp.ones(3))),
      (ValueError, "safe_softmax_cross_entropy: label_smoothing must be in",
       lambda: jaxloss.safe_softmax_cross_entropy(x2, x2,
                                                  label_smoothing=2.0)),
      (ValueError, "ranking_softmax_loss: pass reduce_fn or reduction, not "
       "both", lambda: jaxloss.ranking_softmax_loss(
           x2, x2, reduce_fn=jnp.sum, reduction="sum")),
      (ValueError, "ranking_softmax_loss: reduction must be one of",
       lambda: jaxloss.ranking_softmax_loss(x2, x2, reduction="avg")),
      (TypeError, "ranking_softmax_loss: reduce_fn must be callable or None",
       lambda: jaxloss.ranking_softmax_loss(x2, x2, reduce_fn="mean")),
      (ValueError, r"ranking_softmax_loss: weights shape \(4,\) does not "
       r"broadcast to logits shape \(2, 3\)",
       lambda: jaxloss.ranking_softmax_loss(x2, x2, weights=jnp.ones(4))),
      (ValueError, r"smooth_labels: alpha must be in \[0, 1\], got 1.5",
       lambda: jaxloss.smooth_labels(x2, 1.5)),
      (ValueError, "multi_margin_loss: p must be 1 or 2, got 3",
       lambda: jaxloss.multi_margin_loss(x2, y2, p=3)),
      (ValueError, r"multi_margin_loss: weight must have shape \(3,\) \(one "
       r"per class\), got \(2,\)",
       lambda: jaxloss.multi_margin_loss(x2, y2, weight=jnp.ones(2))),
      (TypeError, "multi_margin_loss: targets must have an integer dtype",
       lambda: jaxloss.multi_margin_loss(x2, jnp.zeros(2))),
      (ValueError, "multi_margin_loss: predictions must have at least one "
       r"class, got shape \(2, 0\)",
       lambda: jaxloss.multi_margin_loss(jnp.ones((2, 0)), y2)),
      (ValueError, r"multilabel_margin_loss: targets shape \(2,\) does not "
       r"broadcast to predictions shape \(2, 3\): the class axis 1 must have "
       "length 3",
       lambda: jaxloss.multilabel_margin_loss(x2, y2)),
      (ValueError, r"soft_margin_loss: targets shape \(2,\) does not "
       r"broadcast to predictions shape \(2, 3\)",
       lambda: jaxloss.soft_margin_loss(x2, jnp.ones(2))),
      (ValueError, r"multilabel_soft_margin_loss: weight shape \(2,\) does "
       r"not broadcast to predictions shape \(2, 3\)",
       lambda: jaxloss.multilabel_soft_margin_loss(x2, x2,
                                                   weight=jnp.ones(2))),
      (ValueError, r"squared_hinge: predictions must have at least 1 "
       r"dimension", lambda: jaxloss.squared_hinge(jnp.ones(()), 1.0)),
      (TypeError, "categorical_hinge: targets must be real, got complex64",
       lambda: jaxloss.categorical_hinge(x2, x2.astype(jnp.complex64))),
      (ValueError, r"binary_focal_cross_entropy: gamma must be in \[0, inf\)",
       lambda: jaxloss.binary_focal_cross_entropy(x2, x2, gamma=-1.0)),
      (TypeError, "binary_focal_cross_entropy: apply_class_balancing must be "
       "a bool, got 1", lambda: jaxloss.binary_focal_cross_entropy(
           x2, x2, apply_class_balancing=1)),
      (ValueError, r"binary_focal_cross_entropy: alpha must be in \[0, 1\]",
       lambda: jaxloss.binary_focal_cross_entropy(x2, x2, alpha=2.0)),
      (TypeError, "categorical_focal_cross_entropy: from_logits must be a "
       "bool", lambda: jaxloss.categorical_focal_cross_entropy(
           x2, x2, from_logits="yes")),
      (TypeError, "categorical_focal_cross_entropy: axis must be an int, got "
       r"\(0, 1\)", lambda: jaxloss.categorical_focal_cross_entropy(
           x2, x2, axis=(0, 1))),
      (ValueError, r"categorical_focal_cross_entropy: alpha must have shape "
       r"\(3,\) \(one per class\), got \(2,\)",
       lambda: jaxloss.categorical_focal_cross_entropy(x2, x2,
                                                       alpha=jnp.ones(2))),
      (ValueError, r"categorical_focal_cross_entropy: label_smoothing must be "
       r"in \[0, 1\], got -0.1", lambda: jaxloss.categorical_focal_cross_entropy(
           x2, x2, label_smoothing=-0.1)),
  ]
  for error, message, call in cases:
    with pytest.raises(error, match=message):
      call()


# ----------------------------------------------------------------------------
# Hyperparameters: traced, vmapped, differentiated, compiled once.


# (function, hyperparameter, two valid values, an invalid one, keywords,
# inputs): the gradient is checked at the first value.
HYPERS = [
    ("poly_loss_cross_entropy", "epsilon", 1.5, -0.5, np.inf, {},
     (X, PROBS)),
    ("smooth_labels", "alpha", 0.1, 0.4, 1.5, {"axis": -1}, (PROBS,)),
    ("multi_margin_loss", "margin", 0.7, -0.3, np.nan, {"p": 2},
     (X, LABELS)),
    ("binary_focal_cross_entropy", "gamma", 0.5, 2.5, -1.0, {}, (P, BINARY)),
    ("binary_focal_cross_entropy", "gamma", 0.5, 2.5, -1.0,
     {"from_logits": True}, (X, BINARY)),
    ("binary_focal_cross_entropy", "alpha", 0.3, 0.6, 1.2,
     {"apply_class_balancing": True}, (P, BINARY)),
    ("binary_focal_cross_entropy", "label_smoothing", 0.1, 0.3, -0.1, {},
     (P, BINARY)),
    ("categorical_focal_cross_entropy", "gamma", 0.5, 3.0, -1.0,
     {"from_logits": True}, (X, ONE_HOT)),
    ("categorical_focal_cross_entropy", "gamma", 0.5, 3.0, -1.0, {},
     (PROBS, ONE_HOT)),
    ("categorical_focal_cross_entropy", "alpha", 0.3, 0.9, -0.5,
     {"from_logits": True}, (X, ONE_HOT)),
    ("categorical_focal_cross_entropy", "label_smoothing", 0.1, 0.2, 1.1,
     {"from_logits": True}, (X, ONE_HOT)),
    ("categorical_generalized_cross_entropy", "q", 0.3, 1.0, 0.0, {},
     (PROBS, LABELS)),
]


def _arrays(inputs, dtype):
  return tuple(jnp.asarray(a) if a.dtype.kind == "i" else jnp.asarray(a, dtype)
               for a in inputs)


@pytest.mark.parametrize(
    "name,hyper,a,b,bad,kwargs,inputs", HYPERS,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(HYPERS)])
def test_hyperparameter_traced_vmapped_differentiated(name, hyper, a, b, bad,
                                                      kwargs, inputs):
  fn = getattr(jaxloss, name)
  assert hyper in fn.hyperparameters
  args = _arrays(inputs, jnp.float32)
  concrete = [fn(*args, **kwargs, **{hyper: v}) for v in (a, b)]
  compiles = fn.compiled._cache_size()
  fn(*args, **kwargs, **{hyper: (a + b) / 2})
  assert fn.compiled._cache_size() == compiles   # a new value: no compile
  # A jit argument under vmap: a batch of values, one program.
  traced = jax.jit(jax.vmap(lambda v: fn(*args, **kwargs, **{hyper: v})))(
      jnp.array([a, b]))
  np.testing.assert_allclose(traced, np.stack(concrete), rtol=2e-6,
                             atol=1e-7)
  with pytest.raises(ValueError, match=rf"{name}: {hyper} must be in"):
    fn(*args, **kwargs, **{hyper: bad})
  with pytest.raises(jaxloss.CheckError, match=rf"{name}: {hyper} must be "
                     "in"):
    jaxloss.checked(jax.jit(lambda v: fn(*args, **kwargs, **{hyper: v})))(
        bad)
  with jax.enable_x64(True):
    args = _arrays(inputs, jnp.float64)

    def total(v):
      out = fn(*args, **kwargs, **{hyper: v})
      # Weighted: smooth_labels' rows sum to 1 whatever alpha is.
      return jnp.vdot(jnp.linspace(1.0, 2.0, out.size), out.reshape(-1))
    eps = 1e-6
    numeric = (total(a + eps) - total(a - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(total)(a), numeric, rtol=1e-6)


@pytest.mark.parametrize("name,hyper,kwargs,inputs", [
    ("smooth_labels", "alpha", {}, (PROBS,)),
    ("binary_focal_cross_entropy", "gamma", {}, (P, BINARY)),
    ("binary_focal_cross_entropy", "label_smoothing", {}, (P, BINARY)),
    ("categorical_focal_cross_entropy", "gamma", {"from_logits": True},
     (X, ONE_HOT)),
    ("categorical_focal_cross_entropy", "gamma", {}, (PROBS, ONE_HOT)),
    ("categorical_focal_cross_entropy", "label_smoothing",
     {"from_logits": True}, (X, ONE_HOT)),
])
def test_an_exact_zero_leaves_its_term_out(name, hyper, kwargs, inputs):
  fn = getattr(jaxloss, name)
  x, *rest = _arrays(inputs, jnp.float32)
  zero = jax.make_jaxpr(lambda x: fn(x, *rest, **kwargs, **{hyper: 0.0}))(x)
  other = jax.make_jaxpr(lambda x: fn(x, *rest, **kwargs, **{hyper: 0.5}))(x)
  assert count_equations(zero.jaxpr) < count_equations(other.jaxpr)
  np.testing.assert_allclose(
      jax.jit(lambda v: fn(x, *rest, **kwargs, **{hyper: v}))(0.0),
      fn(x, *rest, **kwargs, **{hyper: 0.0}), rtol=1e-6, atol=1e-7)


def test_poly_loss_with_a_zero_epsilon_compiles_to_the_cross_entropy():
  # PolyLoss's value takes a guarded pass of its own (no condition), the
  # cross entropy a condition between its plain and guarded passes: fewer
  # equations for epsilon=0.5 than for 0, so the count above cannot tell.
  # The compiled programs can: an exact 0 leaves only the cross entropy.
  x, y = _arrays((X, PROBS), jnp.float32)

  def cost(f):
    analysis = jax.jit(f).lower(x).compile().cost_analysis()
    return {k: analysis[k] for k in ("flops", "transcendentals",
                                     "bytes accessed")}

  zero = cost(lambda x: jaxloss.poly_loss_cross_entropy(x, y, epsilon=0.0))
  assert zero == cost(lambda x: jaxloss.softmax_cross_entropy(x, y))
  assert zero != cost(
      lambda x: jaxloss.poly_loss_cross_entropy(x, y, epsilon=0.5))
  np.testing.assert_allclose(
      jax.jit(lambda v: jaxloss.poly_loss_cross_entropy(x, y, epsilon=v))(
          0.0), jaxloss.softmax_cross_entropy(x, y), rtol=1e-6, atol=1e-7)


def test_poly_loss_value_writes_no_rows_out():
  # With few, long rows XLA:CPU wrote the shifted logits and their
  # exponentials out ([R, C] each) when the last pass shared them with the
  # sum of exponentials; that pass takes its own.
  x = jax.ShapeDtypeStruct((16, 8192), jnp.float32)
  step = lambda x, y: jnp.mean(jaxloss.poly_loss_cross_entropy(x, y))
  assert temporaries(step, x, x) < 0.01 * x.size * 4


def test_guarded_chain_floors_start_its_reductions():
  # The guarded chain's floors (the row maximum at -max, the sum of
  # exponentials at tiny) are its reductions' initial values: a floor taken
  # after a reduction was a loop of its own for XLA:CPU to compile, and kept
  # `x - shift` out of the fused sums (with long rows an [R, C] loop, over a
  # quarter of the cross entropy's compile time). PolyLoss's value is the
  # guarded chain; the cross entropy's holds it in a condition.
  x, y = _arrays((X, PROBS), jnp.float32)
  for f in (jaxloss.poly_loss_cross_entropy, jaxloss.softmax_cross_entropy):
    jaxpr = jax.make_jaxpr(f)(x, y).jaxpr
    assert count_equations(jaxpr, "max", rank=1) == 0
  # The floors' numbers: a row of -inf logits costs 0 without label mass
  # and inf with it; a zero label on a -inf logit costs nothing.
  inf = -jnp.inf
  x = jnp.array([[inf, inf, inf], [inf, inf, inf], [inf, 0.0, 1.0]])
  y = jnp.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
  want = [0.0, np.inf, float(-(0.25 * jax.nn.log_softmax(x[2])[1]
                                + 0.75 * jax.nn.log_softmax(x[2])[2]))]
  for f in (jaxloss.poly_loss_cross_entropy, jaxloss.softmax_cross_entropy):
    got = jax.jit(f)(x, y)
    np.testing.assert_allclose(got[:2], want[:2])
    if f is jaxloss.softmax_cross_entropy:
      np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
  # Its statistics (the cross sums, log-sum-exps and label sums) are the
  # variadic form's, the floored sum's log on a row of -inf logits.
  config = kernel_ce.default_config(x)
  chain = jax.jit(lambda x, y: kernel_ce.label_chain(
      x, y, None, None, statistics=True))(x, y)
  variadic = jax.jit(lambda x, y: kernel_ce._label_forward(
      config, x, y, None, None, None)[0])(x, y)
  for a, b in zip(chain, variadic, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_probability_value_is_the_chain_in_every_precision(dtype):
  # On CPUs the value alone is the chain of plain sums, which XLA:CPU fuses
  # into one pass (half-precision logits upcast inside it), not the
  # derivative rule's variadic reduction with its select (3.74x optax's
  # time on bfloat16 [4096, 1024] inputs, 0.99x as the chain).
  def variadic(jaxpr):
    return count_equations(jaxpr, "reduce", min_outputs=2)

  x, y = _arrays((X, PROBS), dtype)
  for f in (jaxloss.softmax_cross_entropy, jaxloss.poly_loss_cross_entropy):
    mean = lambda x, y, f=f: jnp.mean(f(x, y))
    assert variadic(jax.make_jaxpr(mean)(x, y).jaxpr) == 0, f.__name__
    assert variadic(jax.make_jaxpr(jax.grad(mean))(x, y).jaxpr) > 0, (
        f.__name__)


def test_categorical_focal_at_certainty_second_order_and_in_gamma():
  # Row 0 is certain (p = 1 to float32, cross entropy 0): the derivatives
  # in the logits and in gamma are 0 there, the hessian finite; row 1 is
  # not, and its hessian in gamma matches finite differences.
  x = f32([[60.0, 0.0, 0.0], [0.5, -1.0, 2.0]])
  y = f32([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

  def total(x, g):
    return jaxloss.categorical_focal_cross_entropy(x, y, gamma=g,
                                                   from_logits=True)

  @jax.jit
  def probe(g):
    return (jax.jacobian(total, argnums=(0, 1))(x, g),
            jax.hessian(lambda x: total(x, g).sum())(x))

  for gamma in (0.25, 0.5, 2.0):
    jac, hessian = probe(jnp.float32(gamma))
    assert_all_finite((jac, hessian))
    np.testing.assert_array_equal(jac[0][0], 0)
    np.testing.assert_array_equal(jac[1][0], 0)
  with jax.enable_x64(True):
    x64, y64 = jnp.asarray(x, jnp.float64)[1:], jnp.asarray(y, jnp.float64)[1:]

    def row(g):
      return jaxloss.categorical_focal_cross_entropy(
          x64, y64, gamma=g, from_logits=True, reduction="sum")
    eps = 1e-5
    grad = jax.jit(jax.grad(row))
    d2 = (grad(0.5 + eps) - grad(0.5 - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.jit(jax.hessian(row))(0.5), d2, rtol=1e-6)


def assert_all_finite(tree):
  for leaf in jax.tree_util.tree_leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf))), leaf


# ----------------------------------------------------------------------------
# categorical_generalized_cross_entropy (Keras 3's).


def ref_gce(p, labels, q, weight=None):
  """Float64 NumPy reference: (1 - p_y^q) / q, times the class weight."""
  p_y = np.take_along_axis(p, labels[..., None], -1)[..., 0]
  loss = (1 - p_y**q) / q
  return loss * (1 if weight is None else weight[labels])


def test_generalized_cross_entropy_reference_keras_and_options():
  gce = jaxloss.categorical_generalized_cross_entropy
  # Keras 3's own test: q = 0.5 on four binary rows.
  keras_probs = f32([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
  np.testing.assert_allclose(
      gce(keras_probs, jnp.array([0, 1, 0, 1])),
      2 * (1 - np.sqrt([0.7, 0.8, 0.6, 0.6])), rtol=1e-6)
  w = rng.uniform(0.5, 2.0, C)
  keep = np.array([True, False, True, True])
  with jax.enable_x64(True):
    p, labels = jnp.asarray(PROBS), jnp.asarray(LABELS)
    for q in (0.3, 1.0):
      np.testing.assert_allclose(gce(p, labels, q=q), ref_gce(PROBS, LABELS, q),
                                 rtol=1e-12)
      want = ref_gce(PROBS, LABELS, q, w)
      got = gce(p, labels, q=q, weight=jnp.asarray(w),
                where=jnp.asarray(keep), reduction="mean")
      np.testing.assert_allclose(got, want[keep].sum() / w[LABELS][keep].sum(),
                                 rtol=1e-12)
      # d/dp_y = -p_y^(q - 1), at the label only.
      g = jax.grad(lambda p: gce(p, labels, q=q, reduction="sum"))(p)
      want_g = np.zeros_like(PROBS)
      p_y = PROBS[np.arange(N), LABELS]
      want_g[np.arange(N), LABELS] = -p_y ** (q - 1)
      np.testing.assert_allclose(g, want_g, rtol=1e-12)
    # The class axis anywhere, tuple axes in the order given.
    np.testing.assert_allclose(gce(p.T, labels, axis=0), gce(p, labels),
                               rtol=1e-12)
    cube = p.reshape(N, 1, C)
    np.testing.assert_allclose(gce(cube, labels[:, None], axis=-1),
                               gce(p, labels)[:, None], rtol=1e-12)
  # Half precision in, float32 out.
  for dtype in (jnp.float16, jnp.bfloat16):
    half = f32(PROBS).astype(dtype)
    got = gce(half, jnp.asarray(LABELS))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, ref_gce(np.asarray(half, np.float64), LABELS, 0.5), rtol=1e-6)


def test_generalized_cross_entropy_small_q_and_edges():
  gce = jaxloss.categorical_generalized_cross_entropy
  labels = jnp.asarray(LABELS)
  # As q -> 0 it tends to the cross entropy; its q-derivative to
  # -log(p)^2 / 2. Autodiff of (1 - p^q) / q loses every digit there.
  with jax.enable_x64(True):
    p64 = jnp.asarray(PROBS)

    def total64(q):
      return gce(p64, labels, q=q, reduction="sum")
    grad64 = jax.jit(jax.grad(total64))
  grad32 = jax.jit(jax.grad(lambda q: gce(f32(PROBS), labels, q=q,
                                          reduction="sum")))
  for q in (1e-2, 1e-6):
    with jax.enable_x64(True):
      h = q * 1e-2
      numeric = (total64(q + h) - total64(q - h)) / (2 * h)
      np.testing.assert_allclose(grad64(q), numeric, rtol=1e-7)
    np.testing.assert_allclose(grad32(jnp.float32(q)), numeric, rtol=2e-5)
  np.testing.assert_allclose(gce(f32(PROBS), labels, q=1e-6),
                             -np.log(PROBS[np.arange(N), LABELS]), rtol=1e-5)
  # p_y = 0: 1 / q, slope -inf (q < 1) or -1 (q = 1), d/dq = -1 / q^2;
  # p_y = 1: 0, slope -1, d/dq = 0.
  edge = f32([[0.0, 1.0], [1.0, 0.0]])
  zero_one = jnp.array([0, 0])
  for q in (0.5, 1.0):
    np.testing.assert_array_equal(gce(edge, zero_one, q=q), [1 / q, 0])
    gp, gq = jax.jacobian(lambda p, q: gce(p, zero_one, q=q),
                          argnums=(0, 1))(edge, jnp.float32(q))
    np.testing.assert_array_equal(gp[0, 0, 0], -np.inf if q < 1 else -1)
    np.testing.assert_array_equal(gp[1, 1, 0], -1)
    np.testing.assert_allclose(gq, [-1 / q**2, 0], rtol=1e-6)


def test_generalized_cross_entropy_masks_labels_and_checks():
  gce = jaxloss.categorical_generalized_cross_entropy
  p = f32(PROBS).at[1].set(jnp.nan).at[2, 0].set(0.0)
  bad = jnp.array([0, 7, 0, -1])
  keep = jnp.array([True, False, True, True])
  loss = gce(p, bad, where=keep)
  # Dropped rows cost 0 whatever they hold; labels outside [0, C) give NaN.
  assert loss[1] == 0 and np.isnan(loss[3])
  np.testing.assert_allclose(loss[2], 2.0)            # p_y = 0, q = 0.5
  g = jax.grad(lambda p: gce(p, bad, where=keep)[:3].sum())(p)
  np.testing.assert_array_equal(g[1], 0)
  assert gce(p, bad, where=jnp.zeros(N, bool), reduction="mean") == 0
  with pytest.raises(jaxloss.CheckError, match=r"categorical_generalized_"
                     r"cross_entropy: probs must be in \[0, 1\]; first "
                     r"offending element probs\[0, 1\] = 1.5"):
    jaxloss.checked(gce)(f32(PROBS).at[0, 1].set(1.5), jnp.asarray(LABELS))
  with pytest.raises(jaxloss.CheckError, match=r"labels must be in \[0, 5\)"):
    jaxloss.checked(gce)(f32(PROBS), bad)
  with pytest.raises(ValueError, match=r"categorical_generalized_cross_"
                     r"entropy: q must be in \(0, 1\], got 1.5"):
    gce(f32(PROBS), jnp.asarray(LABELS), q=1.5)
  with pytest.raises(TypeError, match="labels must have an integer dtype"):
    gce(f32(PROBS), f32(LABELS))
  with pytest.raises(ValueError, match=r"where must be a row mask"):
    gce(f32(PROBS), jnp.asarray(LABELS), where=jnp.ones((N, C), bool))


# ----------------------------------------------------------------------------
# torch's layouts: 0-d inputs, (C,) with (1,), as torch's OpInfo samples.


def test_torch_layouts_of_the_margin_losses():
  x = f32([0.1, 0.5, 0.3])
  row = jaxloss.multi_margin_loss(x, jnp.array(1))
  assert row.shape == ()
  np.testing.assert_allclose(row, (0.6 + 0.8) / 3, rtol=1e-6)
  one = jaxloss.multi_margin_loss(x, jnp.array([1]))    # a batch of one
  assert one.shape == (1,)
  np.testing.assert_allclose(one, [row], rtol=1e-6)
  # A 0-d input is one class: nothing to compare it with.
  for t in (jnp.array(0), jnp.array([0])):
    got = jaxloss.multi_margin_loss(jnp.float32(0.5), t)
    assert got.shape == t.shape and np.all(got == 0)
  assert jaxloss.multilabel_margin_loss(jnp.float32(0.5), jnp.array(0)) == 0
  assert jaxloss.multilabel_margin_loss(jnp.float32(0.5), jnp.array(-1)) == 0
  assert jaxloss.multilabel_margin_loss(f32([0.5]), jnp.array(0)) == 0
  assert np.isnan(jaxloss.multilabel_margin_loss(jnp.float32(0.5),
                                                 jnp.array(3)))
  # Batch axes of the targets broadcast; a lone target row is every row's.
  xs = f32(X)
  np.testing.assert_allclose(
      jaxloss.multilabel_margin_loss(xs, jnp.asarray(MULTILABEL[0])),
      jaxloss.multilabel_margin_loss(
          xs, jnp.broadcast_to(MULTILABEL[0], (N, C))), rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.multi_margin_loss(xs, jnp.array(2)),
      jaxloss.multi_margin_loss(xs, jnp.full(N, 2)), rtol=1e-6)


def _autodiff_multilabel_margin(x, t):
  """The pair sum as autodiff differentiates it: relu and a select on every
  (target slot, class) pair."""
  c = x.shape[-1]
  listed = (jnp.cumsum(t < 0, axis=-1) == 0) & (t < c)
  safe = jnp.where(listed, t, 0)
  is_target = jnp.any(listed[..., :, None]
                      & (safe[..., :, None] == jnp.arange(c)[None, None]),
                      axis=-2)
  tx = jnp.take_along_axis(x, safe, axis=-1)
  h = jax.nn.relu(1 - tx[..., :, None] + x[..., None, :])
  h = jnp.where(listed[..., :, None] & ~is_target[..., None, :], h, 0)
  return jnp.sum(h, axis=(-2, -1)) / c


def _multilabel_targets(c, rng, every_slot=True):
  """Six rows of torch's layout over ``c`` classes: duplicates, an empty
  row, entries after the -1, and (``every_slot``) a row listing every
  class; else at most three slots listed."""
  t = np.array([[1, 0, -1, 2, 2], [0, 3, 3, -1, 0], [4, -1, 0, 0, 0],
                [-1, 1, 2, 3, 4], [0, 1, 2, 3, 4], [2, 2, -1, 1, 1]])
  t = np.concatenate([t, rng.integers(0, c, (6, c - 5))], axis=1)
  t[0, :3] = [1, c - 1, -1]
  t[4] = np.arange(c) if every_slot else [c - 2, 3] + [-1] * (c - 2)
  return t


@pytest.mark.parametrize("c", [5, 40])
def test_multilabel_margin_derivatives_are_autodiffs(c):
  # Integer scores put pairs on the hinge's kink (derivative 0 there, as
  # torch's strict >); a class listed twice counts twice; infinite scores.
  # 40 classes take the loop over target slots (_slot_loop), 5 the pairs
  # of every slot at once.
  assert _classification._slot_loop(c) == (c == 40)
  rng = np.random.default_rng(3)
  x = rng.integers(-2, 3, (6, c)).astype(np.float32)
  x[0, 1], x[1, 0] = np.inf, -np.inf
  if c == 5:
    t = np.array([[1, 0, -1, 2, 2], [0, 3, 3, -1, 0], [4, -1, 0, 0, 0],
                  [-1, 1, 2, 3, 4], [0, 1, 2, 3, 4], [2, 2, -1, 1, 1]])
  else:
    t = _multilabel_targets(c, rng)
  x, t = jnp.asarray(x), jnp.asarray(t)
  ours = lambda x: jaxloss.multilabel_margin_loss(x, t)
  plain = lambda x: _autodiff_multilabel_margin(x, t)
  np.testing.assert_array_equal(ours(x), plain(x))
  cotangent = jnp.arange(1.0, 7.0)
  # The same counts of positive pairs; over 40 classes their scaled sums
  # are rounded in another order (an ulp apart).
  same = (np.testing.assert_array_equal if c == 5 else
          functools.partial(np.testing.assert_allclose, rtol=2e-7))
  same(jax.vjp(ours, x)[1](cotangent), jax.vjp(plain, x)[1](cotangent))
  tangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  finite = jnp.isfinite(x).all(axis=1)
  np.testing.assert_allclose(jax.jvp(ours, (x,), (tangent,))[1][finite],
                             jax.jvp(plain, (x,), (tangent,))[1][finite],
                             rtol=1e-6)
  finite_rows = lambda f: lambda x: f(x, t[2:]).sum()  # noqa: E731
  np.testing.assert_array_equal(
      jax.hessian(finite_rows(jaxloss.multilabel_margin_loss))(x[2:]),
      jax.hessian(finite_rows(_autodiff_multilabel_margin))(x[2:]))


@pytest.mark.parametrize("c", [16, 64])
def test_multilabel_margin_gradient_keeps_no_pairs_of_its_own(c):
  # On short rows the value writes its [N, C, C] hinges once; autodiff's
  # gradient kept two such arrays (its residuals), the derivative rule
  # keeps [N, C] counts. From SHORT_ROWS classes the loop over target slots
  # keeps no pairs at all, value or gradient.
  n = 256
  x = jax.ShapeDtypeStruct((n, c), jnp.float32)
  t = jax.ShapeDtypeStruct((n, c), jnp.int32)
  pairs = n * c * c * 4
  loss = lambda x, t: jaxloss.multilabel_margin_loss(x, t, reduction="sum")
  grad = jax.value_and_grad(loss)
  if _classification._slot_loop(c):
    assert temporaries(loss, x, t) < 0.1 * pairs
    assert temporaries(grad, x, t) < 0.1 * pairs
  else:
    assert temporaries(grad, x, t) < 1.25 * pairs
  plain = jax.value_and_grad(
      lambda x, t: _autodiff_multilabel_margin(x, t).sum())
  assert temporaries(plain, x, t) > 1.75 * pairs


@pytest.mark.parametrize("every_slot", [True, False])
def test_multilabel_margin_slot_loop_against_the_reference(every_slot):
  # Real scores over 40 classes: the loop over target slots against the
  # pairs written out (ref_multilabel_margin), torch's layout throughout;
  # a target out of range gives its row NaN; batch axes and vmap.
  rng = np.random.default_rng(5)
  x = rng.normal(0, 1.5, (6, 40))
  t = _multilabel_targets(40, rng, every_slot)
  got = jaxloss.multilabel_margin_loss(f32(x), jnp.asarray(t))
  np.testing.assert_allclose(got, ref_multilabel_margin(x, t), rtol=1e-5)
  with jax.enable_x64(True):
    got = jaxloss.multilabel_margin_loss(jnp.asarray(x), jnp.asarray(t))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref_multilabel_margin(x, t), rtol=1e-12)
  half = f32(x).astype(jnp.bfloat16)
  got = jaxloss.multilabel_margin_loss(half, jnp.asarray(t))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(
      got, ref_multilabel_margin(np.asarray(half, np.float64), t), rtol=1e-5)
  bad = t.copy()
  bad[3, 0] = 40
  got = jaxloss.multilabel_margin_loss(f32(x), jnp.asarray(bad))
  assert np.isnan(got[3]) and np.all(np.isfinite(np.delete(got, 3)))
  np.testing.assert_allclose(  # one row, torch's (C,) layout
      jaxloss.multilabel_margin_loss(f32(x[4]), jnp.asarray(t[4])),
      ref_multilabel_margin(x[4:5], t[4:5])[0], rtol=1e-5)
  x3, t3 = f32(x).reshape(2, 3, 40), jnp.asarray(t).reshape(2, 3, 40)
  np.testing.assert_allclose(jaxloss.multilabel_margin_loss(x3, t3),
                             ref_multilabel_margin(x, t).reshape(2, 3),
                             rtol=1e-5)
  np.testing.assert_allclose(
      jax.vmap(jaxloss.multilabel_margin_loss)(x3, t3),
      ref_multilabel_margin(x, t).reshape(2, 3), rtol=1e-5)


# ----------------------------------------------------------------------------
# The shape contract: [N] against [N, 1] and spread classes are errors that
# name the function, both arguments and both shapes.


def _contract_message(name, arg, arg_shape, first, first_shape):
  return (rf"{name}: {arg} shape {re.escape(str(arg_shape))} does not "
          rf"broadcast to .*{first} shape {re.escape(str(first_shape))}")


ELEMENTWISE = ["hinge_loss", "perceptron_loss", "soft_margin_loss",
               "squared_hinge", "categorical_hinge",
               "multilabel_soft_margin_loss", "binary_focal_cross_entropy",
               "categorical_focal_cross_entropy", "poly_loss_cross_entropy",
               "safe_softmax_cross_entropy", "ranking_softmax_loss"]
FIRST = {"hinge_loss": ("predictor_outputs", "targets"),
         "perceptron_loss": ("predictor_outputs", "targets"),
         "poly_loss_cross_entropy": ("logits", "labels"),
         "safe_softmax_cross_entropy": ("logits", "labels"),
         "ranking_softmax_loss": ("logits", "labels")}


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_no_silent_broadcast_of_targets(name):
  fn = getattr(jaxloss, name)
  first, second = FIRST.get(name, ("predictions", "targets"))
  cases = [((N, C), (N, 1))]          # a target spread over the classes
  if name in ("hinge_loss", "perceptron_loss", "soft_margin_loss"):
    cases += [((N,), (N, 1)), ((N, 1), (N,))]
  else:
    cases += [((N, C), (N, C, 1))]
  for x_shape, t_shape in cases:
    if name in ("hinge_loss", "perceptron_loss", "soft_margin_loss") and (
        t_shape == (N, 1) and x_shape == (N, C)):
      # Elementwise losses: a per-row target broadcasts, as torch's.
      assert fn(jnp.ones(x_shape), jnp.ones(t_shape)).shape == x_shape
      continue
    with pytest.raises(ValueError, match=_contract_message(
        name, second, t_shape, first, x_shape)):
      fn(jnp.full(x_shape, 0.5), jnp.full(t_shape, 0.5))


@pytest.mark.parametrize("name,first", [
    ("multiclass_hinge_loss", "scores"),
    ("multiclass_perceptron_loss", "scores"),
    ("multi_margin_loss", "predictions"),
    ("categorical_generalized_cross_entropy", "probs")])
def test_no_silent_broadcast_of_integer_labels(name, first):
  fn = getattr(jaxloss, name)
  second = "targets" if name == "multi_margin_loss" else "labels"
  for shape in ((N, 1), (N + 1,), (2, N)):
    with pytest.raises(ValueError, match=(
        rf"{name}: {second} shape {re.escape(str(shape))} does not broadcast "
        rf"to the batch shape of {first} \({N},\).*; {first} has shape "
        rf"\({N}, {C}\)")):
      fn(jnp.full((N, C), 0.2), jnp.zeros(shape, jnp.int32))


def test_weights_and_masks_never_enlarge():
  x, t = jnp.ones((N, C)), jnp.ones((N, C))
  cases = [
      (lambda: jaxloss.hinge_loss(x, t, weight=jnp.ones((N, C, 1))),
       "hinge_loss", "weight", (N, C, 1), "predictor_outputs"),
      (lambda: jaxloss.perceptron_loss(x, t, where=jnp.ones((2, N, C), bool)),
       "perceptron_loss", "where", (2, N, C), "predictor_outputs"),
      (lambda: jaxloss.multilabel_soft_margin_loss(
          x, t, weight=jnp.ones((N, 1, C))),
       "multilabel_soft_margin_loss", "weight", (N, 1, C), "predictions"),
      (lambda: jaxloss.binary_focal_cross_entropy(
          x / 2, t, apply_class_balancing=True, alpha=np.ones((C, 1)) / 2),
       "binary_focal_cross_entropy", "alpha", (C, 1), "predictions"),
      (lambda: jaxloss.smooth_labels(t, jnp.ones((N, 2)) / 2),
       "smooth_labels", "alpha", (N, 2), "labels"),
      (lambda: jaxloss.ranking_softmax_loss(x, t, weights=jnp.ones((N, C, 1))),
       "ranking_softmax_loss", "weights", (N, C, 1), "logits"),
  ]
  for call, name, arg, shape, first in cases:
    with pytest.raises(ValueError, match=_contract_message(
        name, arg, shape, first, (N, C))):
      call()


MODULE_LOSSES = [name for name in catalogue.SPECS if getattr(
    jaxloss.get(name), "__module__", "") == "jaxloss._classification"]


@pytest.mark.parametrize("name", MODULE_LOSSES)
def test_empty_batch(name):
  args = catalogue.inputs(name, 0)
  loss = catalogue.loss(name)

  def summed(x, reduction):
    return jnp.sum(loss(x, *args[1:], reduction=reduction))
  none, mean, total, grad = jax.jit(lambda x: (
      loss(x, *args[1:], reduction="none"), summed(x, "mean"),
      summed(x, "sum"),
      jax.grad(summed)(x, "mean")))(args[0])
  assert none.shape[0] == 0 and grad.shape == args[0].shape
  assert mean == 0 and total == 0


# ----------------------------------------------------------------------------
# Every autodiff mode, against float64 finite differences.


@pytest.mark.parametrize("name", ["categorical_focal_cross_entropy",
                                  "categorical_generalized_cross_entropy",
                                  "multi_margin_loss"])
def test_autodiff_modes_against_finite_differences(name):
  kwargs = {"categorical_focal_cross_entropy": {"gamma": 0.5},
            "multi_margin_loss": {"p": 2}}.get(name, {})
  with jax.enable_x64(True):
    x, *rest = catalogue.inputs(name, 2, seed=3, dtype=jnp.float64)
    loss = catalogue.loss(name)
    v = jnp.asarray(rng.normal(size=x.shape))

    def total(x):
      return jnp.sum(loss(x, *rest, **kwargs))

    check_autodiff_modes(total, x, v)


def test_tuple_class_axes_flatten_in_the_order_given():
  # axis=(2, 1): the flat class index runs fastest along axis 1, as optax's
  # flattening of the axes in the order given.
  cube = f32(rng.normal(size=(N, 2, 3)))
  flat = cube.transpose(0, 2, 1).reshape(N, 6)
  labels = jnp.array([0, 5, 2, 4])
  probs = jax.nn.softmax(flat)
  for name, x, flat_x in [("multiclass_hinge_loss", cube, flat),
                          ("categorical_generalized_cross_entropy",
                           probs.reshape(N, 3, 2).transpose(0, 2, 1), probs)]:
    fn = getattr(jaxloss, name)
    np.testing.assert_allclose(fn(x, labels, axis=(2, 1)),
                               fn(flat_x, labels), rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True], ids=["all", "where"])
def test_ranking_list_of_minus_inf_scores_without_labels_has_zero_gradient(
    masked):
  # Its sum of exponentials is 0: a bare log there made the gradient NaN on
  # the whole list, though no label weighs it.
  x = jax.random.normal(jax.random.key(0), (3, 8)).at[1].set(-jnp.inf)
  y = jnp.zeros((3, 8)).at[0, 2].set(1.0).at[2, 3].set(1.0)
  kw = {"where": jnp.ones((3, 8), bool).at[0, 5].set(False)} if masked else {}
  loss, grad = jax.jit(jax.value_and_grad(
      lambda x: jaxloss.ranking_softmax_loss(x, y, reduce_fn=jnp.sum,
                                             **kw)))(x)
  assert np.isfinite(loss)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[1], 0)
  if masked:
    np.testing.assert_array_equal(grad[0, 5], 0)
