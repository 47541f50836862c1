import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
import reference as ref
from helpers import FLOATS, MODES, RTOL, assert_finite, dtype_context, rounded, run

CE = jaxloss.softmax_cross_entropy_with_integer_labels
rng = np.random.default_rng(2)
N, C = 7, 5
X = rng.normal(0, 2, (N, C))
LABELS = rng.integers(0, C, (N,))
IGNORED = LABELS.copy()
IGNORED[[2, 5]] = -100
W = rng.uniform(0.5, 2, (C,))
PROBS = rng.dirichlet(np.ones(C), N)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction,weight,ignore,smoothing,z", [
    combo for combo in itertools.product(
        ("none", "mean", "sum"), (False, True), (False, True), (0.0, 0.3),
        (0.0, 1e-2))
    if combo[3] == 0.0 or combo[4] == 0.0])
def test_integer_labels_reference(mode, reduction, weight, ignore, smoothing,
                                  z):
  kw = dict(weight=W if weight else None,
            ignore_index=-100 if ignore else None,
            label_smoothing=smoothing, z_loss=z, reduction=reduction)
  labels = IGNORED if ignore else LABELS
  got = run(mode, CE, X, labels, **kw)
  want = ref.softmax_cross_entropy_with_integer_labels(X, labels, **kw)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("implementation,order,modes", [
    ("reference", 2, ("rev", "fwd")), ("xla", 1, ("rev",))])
def test_integer_labels_gradients(implementation, order, modes):
  def f(x):
    return CE(x, IGNORED, weight=jnp.asarray(W), ignore_index=-100,
              label_smoothing=0.2, z_loss=1e-2, reduction="mean",
              implementation=implementation)
  with jax.enable_x64(True):
    check_grads(f, (jnp.asarray(X),), order=order, modes=modes)


def test_integer_labels_equal_optax_by_default():
  x = jnp.asarray(X, jnp.float32)
  np.testing.assert_allclose(
      CE(x, LABELS),
      optax.losses.softmax_cross_entropy_with_integer_labels(x, LABELS),
      rtol=1e-6)
  where = jnp.asarray(rng.uniform(size=(N, C)) > 0.3).at[:, 0].set(True)
  np.testing.assert_allclose(
      CE(x, LABELS, where=where),
      optax.losses.softmax_cross_entropy_with_integer_labels(
          x, LABELS, where=where), rtol=1e-6)


def test_integer_labels_tuple_axis_like_optax():
  x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 12, (2, 5)))
  np.testing.assert_allclose(
      CE(x, labels, axis=(1, 2)),
      optax.losses.softmax_cross_entropy_with_integer_labels(
          x, labels, axis=(1, 2)), rtol=1e-6)


def test_integer_labels_class_axis_1_like_torch():
  x = rng.normal(size=(3, C, 4))
  labels = rng.integers(0, C, (3, 4))
  got = CE(x, labels, axis=1)
  want = ref.softmax_cross_entropy_with_integer_labels(
      np.moveaxis(x, 1, -1).reshape(-1, C), labels.reshape(-1))
  np.testing.assert_allclose(got, want.reshape(3, 4), rtol=2e-5)


def test_out_of_range_labels_give_nan_not_a_wrapped_class():
  labels = jnp.array([0, -100, C, -1, 2, 3, 4])
  got = CE(X, labels)
  assert np.isnan(got[1:4]).all()
  assert np.isfinite(np.asarray(got)[[0, 4, 5, 6]]).all()
  # optax wraps a negative label: -1 reads class C - 1, a plausible, wrong
  # number (and -100 reads class V - 100 once V > 100).
  wrapped = optax.losses.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(X, jnp.float32), labels)
  np.testing.assert_allclose(
      wrapped[3], ref.softmax_cross_entropy_with_integer_labels(
          X[3:4], [C - 1])[0], rtol=1e-5)
  assert np.isnan(CE(X, labels, reduction="mean"))
  # ... unless it is the ignore_index.
  assert CE(X, labels.at[2:4].set(-100), ignore_index=-100)[1] == 0
  assert np.isnan(jaxloss.nll_loss(X, labels)[1])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ignored_rows_have_zero_loss_and_gradient(reduction):
  x = jnp.asarray(X, jnp.float32).at[2].set(-jnp.inf).at[5, 0].set(jnp.nan)
  f = lambda x: CE(x, IGNORED, ignore_index=-100, weight=W,  # noqa: E731
                   label_smoothing=0.1, reduction=reduction)
  g = jax.grad(f)(x)
  assert_finite(g)
  np.testing.assert_array_equal(g[2], 0)
  np.testing.assert_array_equal(g[5], 0)
  assert np.isfinite(f(x))


def test_mean_over_nothing_is_zero_with_zero_gradient():
  labels = jnp.full((N,), -100)
  f = lambda x: CE(x, labels, ignore_index=-100, reduction="mean")  # noqa: E731
  assert f(X) == 0
  np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(X)), 0)
  keep = jnp.zeros((N,), bool)
  assert CE(X, LABELS, where=keep, reduction="mean") == 0
  assert jaxloss.nll_loss(X, labels, ignore_index=-100, reduction="mean") == 0


def test_row_where_equals_ignore_index():
  keep = jnp.asarray(IGNORED != -100)
  np.testing.assert_allclose(
      CE(X, LABELS, where=keep, weight=W, reduction="mean"),
      CE(X, IGNORED, ignore_index=-100, weight=W, reduction="mean"),
      rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_minus_inf_logits_off_the_label(smoothing):
  x = jnp.asarray(X, jnp.float32).at[:, 1].set(-jnp.inf)
  labels = jnp.where(LABELS == 1, 0, LABELS)
  f = lambda x: CE(x, labels, label_smoothing=smoothing)  # noqa: E731
  loss = f(x)
  assert_finite(loss)
  want = ref.softmax_cross_entropy_with_integer_labels(
      np.asarray(x), np.asarray(labels), label_smoothing=smoothing)
  np.testing.assert_allclose(loss, want, rtol=2e-5)
  g = jax.grad(lambda x: f(x).sum())(x)
  assert_finite(g)
  np.testing.assert_array_equal(g[:, 1], 0)
  # Masking the class with where is the same thing.
  np.testing.assert_allclose(
      CE(X, labels, label_smoothing=smoothing,
         where=jnp.ones((N, C), bool).at[:, 1].set(False)), loss, rtol=1e-6)


def test_minus_inf_at_the_label_costs_inf_with_finite_gradient():
  x = jnp.asarray(X, jnp.float32).at[0, LABELS[0]].set(-jnp.inf)
  assert CE(x, LABELS)[0] == jnp.inf
  assert_finite(jax.grad(lambda x: CE(x, LABELS)[0])(x))


def test_large_logits():
  x = jnp.asarray(X * 1e4, jnp.float32)
  want = ref.softmax_cross_entropy_with_integer_labels(X * 1e4, LABELS)
  np.testing.assert_allclose(CE(x, LABELS), want, rtol=1e-5)
  assert_finite(jax.grad(lambda x: CE(x, LABELS).sum())(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_integer_labels_dtypes(dtype):
  with dtype_context(dtype):
    x = jnp.asarray(X, dtype)
    got = CE(x, LABELS, label_smoothing=0.1, z_loss=1e-3)
    assert got.dtype == (jnp.float64 if dtype == "float64" else jnp.float32)
    want = ref.softmax_cross_entropy_with_integer_labels(
        rounded(X, dtype), LABELS, label_smoothing=0.1, z_loss=1e-3)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=1e-6)
    g = jax.grad(lambda x: CE(x, LABELS, reduction="mean"))(x)
    assert g.dtype == x.dtype


def test_bfloat16_large_vocabulary_uses_float32_statistics():
  v = 32000
  x = jnp.asarray(np.random.default_rng(3).normal(0, 4, (8, v)), jnp.bfloat16)
  labels = jnp.arange(8) * 1000
  want = ref.softmax_cross_entropy_with_integer_labels(
      np.asarray(x).astype(np.float64), np.asarray(labels))
  got = CE(x, labels)
  np.testing.assert_allclose(got, want, rtol=1e-3)
  naive = optax.losses.softmax_cross_entropy_with_integer_labels(x, labels)
  # optax keeps bfloat16 statistics: an order of magnitude further off.
  assert np.max(np.abs(np.asarray(naive, np.float64) - want) / want) > 3e-3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight,smoothing", [(False, 0.0), (True, 0.25)])
def test_probability_labels_reference(mode, reduction, weight, smoothing):
  kw = dict(weight=W if weight else None, label_smoothing=smoothing,
            reduction=reduction)
  got = run(mode, jaxloss.softmax_cross_entropy, X, PROBS, **kw)
  want = ref.softmax_cross_entropy(X, PROBS, **kw)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_probability_labels_equal_optax_and_fix_its_nan():
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(PROBS, jnp.float32)
  np.testing.assert_allclose(jaxloss.softmax_cross_entropy(x, y),
                             optax.losses.softmax_cross_entropy(x, y),
                             rtol=1e-6)
  x = x.at[:, 0].set(-jnp.inf)
  y = jax.nn.one_hot(jnp.asarray(LABELS % (C - 1) + 1), C)
  assert np.isnan(optax.losses.softmax_cross_entropy(x, y)).all()
  got = jaxloss.softmax_cross_entropy(x, y)
  np.testing.assert_allclose(got, CE(x, LABELS % (C - 1) + 1), rtol=1e-6)
  g = jax.grad(lambda x: jaxloss.softmax_cross_entropy(
      x, y, label_smoothing=0.1).sum())(x)
  assert_finite(g)
  np.testing.assert_array_equal(g[:, 0], 0)


def test_probability_labels_with_one_hot_equal_integer_labels():
  onehot = jax.nn.one_hot(LABELS, C)
  for kw in ({}, {"weight": W}, {"label_smoothing": 0.3}):
    np.testing.assert_allclose(
        jaxloss.softmax_cross_entropy(X, onehot, **kw),
        CE(X, LABELS, **kw), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nll_loss_reference(reduction):
  lp = np.asarray(jax.nn.log_softmax(X))
  got = jaxloss.nll_loss(lp, IGNORED, weight=W, ignore_index=-100,
                         reduction=reduction)
  want = ref.nll_loss(lp, IGNORED, weight=W, ignore_index=-100,
                      reduction=reduction)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_nll_of_log_softmax_is_cross_entropy():
  lp = jaxloss.log_softmax(X)
  np.testing.assert_allclose(jaxloss.nll_loss(lp, LABELS, weight=W),
                             CE(X, LABELS, weight=W), rtol=1e-5)


@pytest.mark.parametrize("fn,labels", [
    (CE, LABELS), (jaxloss.softmax_cross_entropy, PROBS),
    (jaxloss.nll_loss, LABELS)])
def test_vmap_jit_checkpoint(fn, labels):
  batched = fn(X, labels)
  np.testing.assert_allclose(jax.vmap(fn)(X, labels), batched, rtol=1e-6)
  f = jax.checkpoint(lambda x: fn(x, labels, reduction="sum"))
  v, g = jax.jit(jax.value_and_grad(f))(jnp.asarray(X, jnp.float32))
  np.testing.assert_allclose(v, batched.sum(), rtol=1e-6)
  assert_finite(g)


@pytest.mark.parametrize("call,error,message", [
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(3, jnp.int32)),
     ValueError, r"softmax_cross_entropy_with_integer_labels: "
     r"labels shape \(3,\) does not broadcast to the batch shape of logits "
     r"\(4,\)"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4)),
     TypeError, "labels must have an integer dtype .*got float32"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), reduction="max"),
     ValueError, "reduction must be one of 'none', 'mean', 'sum', got 'max'"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32),
                label_smoothing=-0.1),
     ValueError, r"label_smoothing must be in \[0, 1\], got -0.1"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), z_loss=-1.0),
     ValueError, r"z_loss must be in \[0, inf\), got -1.0"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), axis=2),
     ValueError, "axis 2 is out of bounds for logits of rank 2"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32),
                weight=jnp.ones(4)),
     ValueError, r"weight must have shape \(3,\) \(one per class\), got "
     r"\(4,\)"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), ignore_index=1.5),
     TypeError, "ignore_index must be an int or None, got 1.5"),
    (lambda: CE(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32),
                where=jnp.ones(5, bool)),
     ValueError, r"where shape \(5,\) does not broadcast to the batch shape "
     r"of logits shape \(4,\)"),
    (lambda: jaxloss.softmax_cross_entropy(jnp.zeros((4, 3)),
                                           jnp.zeros((4, 2))),
     ValueError, r"softmax_cross_entropy: labels shape \(4, 2\) does not "
     r"broadcast to logits shape \(4, 3\)"),
    (lambda: jaxloss.nll_loss(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32),
                              where=jnp.ones((4, 3), bool)),
     ValueError, r"nll_loss: where must be a row mask with the batch shape "
     r"\(4,\), got shape \(4, 3\)"),
    (lambda: jaxloss.log_softmax(jnp.zeros(3), axis=(0, 0)),
     ValueError, r"log_softmax: axis \(0, 0\) repeats an axis"),
    (lambda: jaxloss.softmax(jnp.zeros(3, jnp.int32)),
     TypeError, "softmax: x must have a floating dtype, got int32"),
])
def test_errors(call, error, message):
  with pytest.raises(error, match=message):
    call()


INTEGER_LABEL_LOSSES = {
    "nll_loss": lambda x, y: jaxloss.nll_loss(jax.nn.log_softmax(x), y),
    "multiclass_hinge_loss": jaxloss.multiclass_hinge_loss,
    "multiclass_perceptron_loss": jaxloss.multiclass_perceptron_loss,
    "multiclass_sparsemax_loss": jaxloss.multiclass_sparsemax_loss,
    "categorical_generalized_cross_entropy":
        jaxloss.categorical_generalized_cross_entropy,
    "softmax_cross_entropy_with_integer_labels": CE,
    "softmax_cross_entropy_with_integer_labels(reference)":
        lambda x, y: CE(x, y, implementation="reference"),
}


@pytest.mark.parametrize("name", INTEGER_LABEL_LOSSES)
def test_label_gradient_is_a_select_not_a_scatter(name):
  # The gradient through the label's score lands in the loop that writes the
  # rest of the gradient; a scatter would be a loop of its own. (Not
  # multi_margin_loss's: its label's score meets every class of the row, and
  # a select would wait for the row's sum.)
  fn = INTEGER_LABEL_LOSSES[name]
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(LABELS)
  grad = jax.grad(lambda x: jnp.sum(fn(x, y)))
  assert "scatter" not in jax.jit(grad).lower(x).as_text()
  np.testing.assert_allclose(
      grad(x), jax.grad(lambda x: jnp.sum(jax.vmap(fn)(x, y)))(x), rtol=1e-6)
