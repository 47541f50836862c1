import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
import reference as ref
from helpers import FLOATS, MODES, RTOL, assert_finite, dtype_context, rounded, run

rng = np.random.default_rng(1)
X = rng.normal(0, 3, (5, 4))
P = rng.uniform(0.01, 0.99, (5, 4))
Y = rng.integers(0, 2, (5, 4)).astype(np.float64)
SOFT = rng.uniform(0, 1, (5, 4))
W = rng.uniform(0.5, 2, (5, 4))
PW = rng.uniform(0.5, 3, (4,))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_binary_cross_entropy_reference(mode, reduction):
  got = run(mode, jaxloss.binary_cross_entropy, P, Y, weight=W,
            reduction=reduction)
  want = ref.binary_cross_entropy(P, Y, weight=W, reduction=reduction)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_binary_cross_entropy_clamp_and_gradient_at_0_and_1():
  p = jnp.array([0.0, 1.0, 0.0, 1.0])
  y = jnp.array([1.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(jaxloss.binary_cross_entropy(p, y),
                                [100.0, 100.0, 0.0, 0.0])
  g = jax.grad(lambda p: jaxloss.binary_cross_entropy(p, y).sum())(p)
  # torch: (p - y) / max(p (1 - p), 1e-12).
  np.testing.assert_allclose(g, [-1e12, 1e12, 0.0, 0.0], rtol=1e-6)


def test_binary_cross_entropy_gradient_matches_calculus():
  def f(p, y):
    return jaxloss.binary_cross_entropy(p, y, reduction="sum")
  with jax.enable_x64(True):
    check_grads(f, (jnp.asarray(P), jnp.asarray(SOFT)), order=1,
                modes=("rev", "fwd"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_sigmoid_binary_cross_entropy_reference(mode, reduction, smoothing):
  got = run(mode, jaxloss.sigmoid_binary_cross_entropy, X, SOFT,
            pos_weight=PW, weight=W, label_smoothing=smoothing,
            reduction=reduction)
  want = ref.sigmoid_binary_cross_entropy(
      X, SOFT, pos_weight=PW, weight=W, label_smoothing=smoothing,
      reduction=reduction)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_sigmoid_binary_cross_entropy_equals_optax():
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(SOFT, jnp.float32)
  np.testing.assert_allclose(jaxloss.sigmoid_binary_cross_entropy(x, y),
                             optax.losses.sigmoid_binary_cross_entropy(x, y),
                             rtol=1e-6)


def test_sigmoid_binary_cross_entropy_exact_at_saturation():
  x = jnp.array([40.0, 1e4, -1e4, -40.0])
  y = jnp.array([0.0, 0.0, 1.0, 1.0])
  np.testing.assert_array_equal(jaxloss.sigmoid_binary_cross_entropy(x, y),
                                [40.0, 1e4, 1e4, 40.0])
  g = jax.grad(lambda x: jaxloss.sigmoid_binary_cross_entropy(x, y).sum())(x)
  np.testing.assert_array_equal(g, [1.0, 1.0, -1.0, -1.0])


INF = np.inf
# Logits at +-inf against labels 0 and 1: right answers cost 0, wrong ones inf.
INF_X = np.array([-INF, INF, -INF, INF])
INF_Y = np.array([0.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("loss, kwargs, grad", [
    (jaxloss.sigmoid_binary_cross_entropy, {}, [0, 0, -1, 1]),
    (jaxloss.sigmoid_binary_cross_entropy, {"pos_weight": 2.0},
     [0, 0, -2, 1]),
    (jaxloss.sigmoid_focal_loss, {"gamma": 2.0}, [0, 0, -1, 1]),
    (jaxloss.sigmoid_focal_loss, {"gamma": 0.5, "alpha": 0.25},
     [0, 0, -0.25, 0.75]),
], ids=["bce", "bce-pos_weight", "focal", "focal-alpha"])
def test_infinite_logits_cost_0_or_inf_with_finite_gradients(loss, kwargs,
                                                             grad):
  x, y = jnp.asarray(INF_X, jnp.float32), jnp.asarray(INF_Y, jnp.float32)
  if "pos_weight" in kwargs:
    kwargs = {**kwargs, "pos_weight": jnp.asarray(kwargs["pos_weight"])}
  f = jax.jit(lambda x: loss(x, y, **kwargs))
  np.testing.assert_array_equal(f(x), [0, 0, INF, INF])
  np.testing.assert_array_equal(jax.jit(jax.grad(lambda x: f(x)[:2].sum()))(x),
                                [0, 0, 0, 0])
  np.testing.assert_allclose(jax.jit(jax.grad(lambda x: f(x).sum()))(x),
                             grad, rtol=1e-6)
  # forward mode too: no inf * 0 in the tangents
  np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(x).diagonal(), grad,
                             rtol=1e-6)


def test_label_gradient_of_sigmoid_bce_at_infinite_logits_is_honest():
  # d/dy = softplus(-x) - softplus(x) = -x: infinite, never NaN.
  x, y = jnp.asarray(INF_X, jnp.float32), jnp.asarray(INF_Y, jnp.float32)
  g = jax.grad(lambda y: jaxloss.sigmoid_binary_cross_entropy(x, y).sum())(y)
  np.testing.assert_array_equal(g, [INF, -INF, INF, -INF])
  g = jax.grad(lambda y: jaxloss.sigmoid_binary_cross_entropy(
      jnp.array([3.0, -2.0]), y).sum())(jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(g, [-3.0, 2.0], rtol=1e-6)


def test_binary_cross_entropy_at_probabilities_0_and_1():
  p = jnp.array([0.0, 1.0, 0.0, 1.0])
  y = jnp.array([0.0, 1.0, 1.0, 0.0])
  np.testing.assert_array_equal(jaxloss.binary_cross_entropy(p, y),
                                [0, 0, 100, 100])
  gp, gy = jax.grad(lambda p, y: jaxloss.binary_cross_entropy(p, y).sum(),
                    argnums=(0, 1))(p, y)
  np.testing.assert_allclose(gp, [0, 0, -1e12, 1e12], rtol=1e-6)
  np.testing.assert_array_equal(gy, [100, -100, 100, -100])


def test_pos_weight_broadcasts_from_the_right():
  x = jnp.zeros((2, 3, 4))
  y = jnp.ones((2, 3, 4))
  pw = jnp.arange(1.0, 5.0)
  got = jaxloss.sigmoid_binary_cross_entropy(x, y, pos_weight=pw)
  np.testing.assert_allclose(got, np.log(2) * np.broadcast_to(pw, (2, 3, 4)),
                             rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_sigmoid_focal_loss_reference_and_optax(gamma, alpha):
  got = jaxloss.sigmoid_focal_loss(X, SOFT, alpha=alpha, gamma=gamma)
  np.testing.assert_allclose(
      got, ref.sigmoid_focal_loss(X, SOFT, alpha=alpha, gamma=gamma),
      rtol=2e-5, atol=1e-7)
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(SOFT, jnp.float32)
  np.testing.assert_allclose(
      got, optax.losses.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma),
      rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0, 5.0])
def test_sigmoid_focal_loss_finite_gradients_at_extreme_logits(gamma):
  x = jnp.array([-1e4, -100.0, -40.0, 0.0, 40.0, 100.0, 1e4])
  for label in (0.0, 1.0, 0.3):
    y = jnp.full_like(x, label)
    f = lambda x: jaxloss.sigmoid_focal_loss(x, y, gamma=gamma).sum()  # noqa: E731
    assert_finite(jaxloss.sigmoid_focal_loss(x, y, gamma=gamma))
    assert_finite(jax.grad(f)(x), f"gamma={gamma} label={label}")


def test_sigmoid_focal_loss_gamma_zero_is_bce():
  np.testing.assert_allclose(
      jaxloss.sigmoid_focal_loss(X, SOFT, gamma=0.0),
      jaxloss.sigmoid_binary_cross_entropy(X, SOFT), rtol=1e-6)


@pytest.mark.parametrize("fn", [jaxloss.sigmoid_binary_cross_entropy,
                                jaxloss.sigmoid_focal_loss])
@pytest.mark.parametrize("dtype", FLOATS)
def test_logit_losses_dtypes(fn, dtype):
  with dtype_context(dtype):
    x = jnp.asarray(X, dtype)
    y = jnp.asarray(Y, dtype)
    got = fn(x, y)
    assert got.dtype == (jnp.float64 if dtype == "float64" else jnp.float32)
    want = ref.sigmoid_binary_cross_entropy(rounded(X, dtype), Y)
    if fn is jaxloss.sigmoid_focal_loss:
      want = ref.sigmoid_focal_loss(rounded(X, dtype), Y)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=1e-6)
    g = jax.grad(lambda x: fn(x, y).sum())(x)
    assert g.dtype == x.dtype


@pytest.mark.parametrize("dtype", FLOATS)
def test_binary_cross_entropy_dtypes(dtype):
  with dtype_context(dtype):
    p = jnp.asarray(P, dtype)
    got = jaxloss.binary_cross_entropy(p, jnp.asarray(Y, dtype))
    want = ref.binary_cross_entropy(rounded(P, dtype), Y)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype])
    g = jax.grad(lambda p: jaxloss.binary_cross_entropy(p, Y).sum())(p)
    assert g.dtype == p.dtype


@pytest.mark.parametrize("fn,first", [
    (jaxloss.binary_cross_entropy, P),
    (jaxloss.sigmoid_binary_cross_entropy, X),
    (jaxloss.sigmoid_focal_loss, X)])
def test_where_drops_elements_with_zero_gradient(fn, first):
  keep = jnp.asarray(rng.uniform(size=first.shape) > 0.4)
  x = jnp.asarray(first, jnp.float32).at[0, 0].set(jnp.nan)
  keep = keep.at[0, 0].set(False)
  loss = fn(x, Y, where=keep)
  np.testing.assert_array_equal(np.asarray(loss)[~np.asarray(keep)], 0)
  mean = fn(x, Y, where=keep, reduction="mean")
  np.testing.assert_allclose(mean, loss.sum() / keep.sum(), rtol=1e-6)
  g = jax.grad(lambda x: fn(x, Y, where=keep, reduction="mean"))(x)
  assert_finite(g)
  np.testing.assert_array_equal(np.asarray(g)[~np.asarray(keep)], 0)
  nothing = jnp.zeros_like(keep)
  assert fn(x, Y, where=nothing, reduction="mean") == 0
  assert_finite(jax.grad(
      lambda x: fn(x, Y, where=nothing, reduction="mean"))(x))


@pytest.mark.parametrize("fn,first", [
    (jaxloss.binary_cross_entropy, P),
    (jaxloss.sigmoid_binary_cross_entropy, X),
    (jaxloss.sigmoid_focal_loss, X)])
def test_vmap_and_sum_identity(fn, first):
  batched = fn(first, SOFT)
  np.testing.assert_allclose(jax.vmap(fn)(first, SOFT), batched, rtol=1e-6)
  np.testing.assert_allclose(fn(first, SOFT, reduction="sum"),
                             fn(first, SOFT).sum(), rtol=1e-6)


def test_composes_with_checkpoint_and_value_and_grad():
  f = jax.checkpoint(lambda x: jaxloss.sigmoid_binary_cross_entropy(
      x, SOFT, reduction="mean"))
  v, g = jax.jit(jax.value_and_grad(f))(jnp.asarray(X, jnp.float32))
  np.testing.assert_allclose(v, ref.sigmoid_binary_cross_entropy(
      X, SOFT, reduction="mean"), rtol=1e-5)
  np.testing.assert_allclose(g, (1 / (1 + np.exp(-X)) - SOFT) / X.size,
                             rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("call,error,message", [
    (lambda: jaxloss.sigmoid_binary_cross_entropy(jnp.zeros((4, 3)),
                                                  jnp.zeros(3)),
     ValueError, r"sigmoid_binary_cross_entropy: labels shape \(3,\) does not "
     r"match logits shape \(4, 3\)"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(jnp.zeros(3, jnp.int32),
                                                  jnp.zeros(3)),
     TypeError, "logits must have a floating dtype, got int32"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(jnp.zeros(3), jnp.zeros(3),
                                                  reduction="avg"),
     ValueError, "reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(
        jnp.zeros(3), jnp.zeros(3), label_smoothing=1.5),
     ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(
        jnp.zeros((2, 3)), jnp.zeros((2, 3)), pos_weight=jnp.ones(2)),
     ValueError, r"pos_weight shape \(2,\) does not broadcast to logits shape "
     r"\(2, 3\)"),
    (lambda: jaxloss.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3),
                                        gamma=-1.0),
     ValueError, r"sigmoid_focal_loss: gamma must be in \[0, inf\), got -1.0"),
    (lambda: jaxloss.binary_cross_entropy(jnp.zeros(3), jnp.zeros(3),
                                          where=jnp.ones(3)),
     TypeError, "binary_cross_entropy: where must be a boolean mask, got "
     "float32"),
    (lambda: jaxloss.binary_cross_entropy(jnp.zeros(3), jnp.zeros(3),
                                          weight=jnp.ones(4)),
     ValueError, r"weight shape \(4,\) does not broadcast to probs shape"),
])
def test_errors(call, error, message):
  with pytest.raises(error, match=message):
    call()
