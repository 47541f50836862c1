import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
import reference as ref
from helpers import (FLOATS, MODES, RTOL, assert_finite, check_autodiff_modes,
                     count_equations, dtype_context, rounded, run,
                     temporaries)

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
    (jaxloss.sparsemax_loss, {}, [0, 0, -1, 1]),
], ids=["bce", "bce-pos_weight", "focal", "focal-alpha", "sparsemax"])
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
    (lambda: jaxloss.sigmoid_binary_cross_entropy(jnp.zeros(3, jnp.int32),
                                                  jnp.zeros(3)),
     TypeError, "logits must have a floating dtype, got int32"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(jnp.zeros(3), jnp.zeros(3),
                                                  reduction="avg"),
     ValueError, "reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(
        jnp.zeros(3), jnp.zeros(3), label_smoothing=1.5),
     ValueError, r"sigmoid_binary_cross_entropy: label_smoothing must be in "
     r"\[0, 1\], got 1.5"),
    (lambda: jaxloss.sigmoid_binary_cross_entropy(
        jnp.zeros(3), jnp.zeros(3), label_smoothing=jnp.ones(2) / 2),
     ValueError, r"label_smoothing must be a scalar, got shape \(2,\)"),
    (lambda: jaxloss.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3),
                                        gamma=-1.0),
     ValueError, r"sigmoid_focal_loss: gamma must be in \[0, inf\), got -1.0"),
    (lambda: jaxloss.sigmoid_focal_loss(jnp.zeros(3), jnp.zeros(3),
                                        alpha=np.array([0.5, 1.5, 0.5])),
     ValueError, r"sigmoid_focal_loss: alpha must be in \[0, 1\], got 1.5"),
    (lambda: jaxloss.binary_cross_entropy(jnp.zeros(3), jnp.zeros(3),
                                          where=jnp.ones(3)),
     TypeError, "binary_cross_entropy: where must be a boolean mask, got "
     "float32"),
])
def test_errors(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ----------------------------------------------------------------------------
# The shape contract: labels, weights, masks broadcast to the model output's
# shape and never enlarge it.

N1, N = (3, 1), (3,)


@pytest.mark.parametrize("fn,first,arg,other", [
    (jaxloss.binary_cross_entropy, "probs", "labels", None),
    (jaxloss.sigmoid_binary_cross_entropy, "logits", "labels", None),
    (jaxloss.sigmoid_focal_loss, "logits", "labels", None),
    (jaxloss.sigmoid_binary_cross_entropy, "logits", "weight", "labels"),
    (jaxloss.sigmoid_binary_cross_entropy, "logits", "pos_weight", "labels"),
    (jaxloss.binary_cross_entropy, "probs", "where", "labels"),
    (jaxloss.sigmoid_focal_loss, "logits", "alpha", "labels"),
])
@pytest.mark.parametrize("shapes", [(N, N1), (N1, N)], ids=["N-N1", "N1-N"])
def test_no_silent_broadcast(fn, first, arg, other, shapes):
  # [N] against [N, 1] in either order: torch and optax broadcast both to
  # [N, N] (optax, torch's BCEWithLogitsLoss) or warn (torch).
  x_shape, arg_shape = shapes
  x = jnp.full(x_shape, 0.25)
  value = (jnp.ones(arg_shape, bool) if arg == "where"
           else jnp.full(arg_shape, 0.5))
  kwargs = {arg: value} if other else {}
  args = (x, jnp.full(x_shape, 0.5)) if other else (x, value)
  message = (rf"{fn.__name__}: {arg} shape {re.escape(str(arg_shape))} does "
             rf"not broadcast to {first} shape {re.escape(str(x_shape))}")
  with pytest.raises(ValueError, match=message):
    fn(*args, **kwargs)


def test_targets_weights_and_masks_broadcast_to_the_output_shape():
  x, y = jnp.asarray(X[:3], jnp.float32), jnp.asarray(Y[0], jnp.float32)
  full = jnp.broadcast_to(y, x.shape)
  for fn, kwargs in [(jaxloss.sigmoid_binary_cross_entropy,
                      {"weight": jnp.asarray(W[:, :1][:3]),
                       "pos_weight": jnp.asarray(PW)}),
                     (jaxloss.sigmoid_focal_loss,
                      {"alpha": jnp.array([0.2, 0.4, 0.6, 0.8])}),
                     (jaxloss.binary_cross_entropy,
                      {"where": jnp.array([True, False, True, True])})]:
    first = jax.nn.sigmoid(x) if fn is jaxloss.binary_cross_entropy else x
    got = fn(first, y, **kwargs)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, fn(first, full, **kwargs), rtol=1e-6)


@pytest.mark.parametrize("fn", [jaxloss.binary_cross_entropy,
                                jaxloss.sigmoid_binary_cross_entropy,
                                jaxloss.sigmoid_focal_loss])
def test_empty_batch(fn):
  x = jnp.zeros((0, 4))
  def summed(x, reduction):
    return jnp.sum(fn(x, x, reduction=reduction))
  f = jax.jit(lambda x: (fn(x, x), summed(x, "mean"), summed(x, "sum"),
                         jax.grad(summed)(x, "mean")))
  none, mean, total, grad = f(x)
  assert none.shape == (0, 4) and grad.shape == (0, 4)
  assert mean == 0 and total == 0


# ----------------------------------------------------------------------------
# Hyperparameters: traced, vmapped, differentiated, compiled once.


# (function, hyperparameter, two valid values, an invalid one, keywords).
HYPERS = [
    (jaxloss.sigmoid_binary_cross_entropy, "label_smoothing", 0.1, 0.3, 1.5,
     {"pos_weight": PW}),
    (jaxloss.sigmoid_focal_loss, "gamma", 0.5, 2.5, -0.5, {"alpha": 0.3}),
    (jaxloss.sigmoid_focal_loss, "alpha", 0.25, 0.75, -0.1, {"gamma": 1.5}),
]


@pytest.mark.parametrize("fn,name,a,b,bad,kwargs", HYPERS,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in HYPERS])
def test_hyperparameter_traced_vmapped_differentiated(fn, name, a, b, bad,
                                                      kwargs):
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(SOFT, jnp.float32)
  assert name in fn.hyperparameters
  concrete = [fn(x, y, **kwargs, **{name: v}) for v in (a, b)]
  compiles = fn.compiled._cache_size()
  fn(x, y, **kwargs, **{name: (a + b) / 2})
  assert fn.compiled._cache_size() == compiles   # a new value: no compile
  # A jit argument under vmap: a batch of values, one program.
  traced = jax.jit(jax.vmap(lambda v: fn(x, y, **kwargs, **{name: v})))(
      jnp.array([a, b]))
  np.testing.assert_allclose(traced, np.stack(concrete), rtol=1e-6,
                             atol=1e-7)
  with pytest.raises(ValueError, match=rf"{fn.__name__}: {name} must be in"):
    fn(x, y, **kwargs, **{name: bad})
  with pytest.raises(jaxloss.CheckError, match=rf"{fn.__name__}: {name} "
                     "must be in"):
    jaxloss.checked(jax.jit(lambda v: fn(x, y, **kwargs, **{name: v})))(bad)
  with jax.enable_x64(True):
    x64, y64 = jnp.asarray(X), jnp.asarray(SOFT)
    def total(v):
      return fn(x64, y64, **kwargs, **{name: v}, reduction="sum")
    eps = 1e-6
    numeric = (total(a + eps) - total(a - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(total)(a), numeric, rtol=1e-6)


@pytest.mark.parametrize("fn,name,kwargs", [
    (jaxloss.sigmoid_binary_cross_entropy, "label_smoothing", {}),
    (jaxloss.sigmoid_focal_loss, "gamma", {}),
])
def test_an_exact_zero_leaves_its_term_out(fn, name, kwargs):
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(SOFT, jnp.float32)
  zero = jax.make_jaxpr(lambda x: fn(x, y, **kwargs, **{name: 0.0}))(x)
  other = jax.make_jaxpr(lambda x: fn(x, y, **kwargs, **{name: 0.5}))(x)
  assert count_equations(zero.jaxpr) < count_equations(other.jaxpr)
  # A traced zero is the same number by the general program.
  np.testing.assert_allclose(
      jax.jit(lambda v: fn(x, y, **kwargs, **{name: v}))(0.0),
      fn(x, y, **kwargs, **{name: 0.0}), rtol=1e-6, atol=1e-7)


def test_focal_gamma_gradient_at_saturated_logits():
  # d/dgamma of (1 - p_t)^gamma bce = (1 - p_t)^gamma log(1 - p_t) bce:
  # finite at +-1e4, where 1 - p_t or bce underflows; at an infinite logit
  # the factor is held constant (0 for the right answer, inf for the wrong).
  x = np.array([-1e4, 1e4, -40.0, 40.0, 0.0, 3.0])
  y = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
  bce = np.logaddexp(0, np.where(y == 1, -x, x))
  log_one_minus_pt = -np.logaddexp(0, np.where(y == 1, x, -x))
  inf_x, inf_y = jnp.array([-jnp.inf, jnp.inf]), jnp.array([0.0, 0.0])
  for gamma in (0.0, 0.5, 2.0):
    g = jax.jacobian(lambda gm: jaxloss.sigmoid_focal_loss(
        jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
        gamma=gm))(jnp.float32(gamma))
    want = np.exp(gamma * log_one_minus_pt) * log_one_minus_pt * bce
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-30)
    g = jax.jacobian(lambda gm: jaxloss.sigmoid_focal_loss(
        inf_x, inf_y, gamma=gm))(jnp.float32(gamma))
    np.testing.assert_array_equal(g, [0, 0])


# ----------------------------------------------------------------------------
# Every autodiff mode, against float64 finite differences.


@pytest.mark.parametrize("fn,first", [
    (jaxloss.binary_cross_entropy, P),
    (jaxloss.sigmoid_binary_cross_entropy, X),
    (jaxloss.sigmoid_focal_loss, X)])
def test_autodiff_modes_against_finite_differences(fn, first):
  with jax.enable_x64(True):
    x, y = jnp.asarray(first[:2]), jnp.asarray(SOFT[:2])
    x = x.at[0, 0].set(0.0 if fn is not jaxloss.binary_cross_entropy
                       else 0.5)
    v = jnp.asarray(rng.normal(size=x.shape))

    def total(x):
      return fn(x, y, reduction="sum")

    check_autodiff_modes(total, x, v)


def test_binary_cross_entropy_second_derivatives_at_0_and_1():
  # The clamped logs are double wheres: no log(0) in any derivative.
  p = jnp.array([0.0, 1.0, 0.0, 1.0])
  y = jnp.array([1.0, 0.0, 0.0, 1.0])
  h = jax.jit(jax.hessian(lambda py: jaxloss.binary_cross_entropy(
      py[0], py[1]).sum()))(jnp.stack([p, y]))
  assert_finite(h)
  # d/dp of the label slope log(1 - p) - log(p): the unclamped log's, -1
  # (the clamped one is flat); d/dy of torch's slope
  # (p - y) / max(p (1 - p), 1e-12): -1e12.
  np.testing.assert_array_equal(h[1, :, 0, :], -np.eye(4))
  np.testing.assert_allclose(h[0, :, 1, :], -1e12 * np.eye(4), rtol=1e-6)


@pytest.mark.parametrize("fn", [jaxloss.sigmoid_binary_cross_entropy,
                                jaxloss.multilabel_soft_margin_loss])
def test_logit_bce_gradient_writes_only_its_result(fn):
  # The derivative's sigmoids are their own expressions, not divisions of
  # the value's exp(-|x|): XLA then writes neither that nor 1 / (1 + e)
  # out for the gradient, only the loss terms the sum reads.
  x = jax.ShapeDtypeStruct((512, 256), jnp.float32)
  step = jax.value_and_grad(lambda x, y: jnp.mean(fn(x, y)))
  assert temporaries(step, x, x) <= 1.01 * x.size * 4


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
def test_soft_margin_value_fuses_with_its_sum():
  # The value's softplus in arithmetic: jax.nn.softplus ends in a select,
  # whose terms XLA:CPU wrote out before summing them (one float32 array of
  # the input's size); the derivatives are jax.nn.softplus's.
  for shape in ((512, 256), (4096, 4)):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    mean = lambda x, y: jnp.mean(jaxloss.soft_margin_loss(x, y))
    assert temporaries(mean, x, x) < 0.01 * x.size * 4
  x = jnp.array([-jnp.inf, -30.0, -1.0, 0.0, 2.0, 40.0, jnp.inf, jnp.nan])
  y = jnp.array([-1.0, 1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
  got = jax.jit(jaxloss.soft_margin_loss)(x, y)
  np.testing.assert_allclose(got, jax.nn.softplus(-y * x), rtol=1e-6)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jaxloss.soft_margin_loss(x, y))))
  want = jax.grad(lambda x: jnp.sum(jax.nn.softplus(-y * x)))(x)
  np.testing.assert_array_equal(grad(x), want)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's program")
def test_logit_bce_gradient_takes_one_exponential_to_relative_precision():
  # Both sigmoids of the derivative from one exponential (its own, not the
  # value's): two in the program with the value's, where XLA's two
  # logistics made three. Each still to relative precision where the
  # gradient is tiny, unlike sigmoid(x) - y.
  spec = jax.ShapeDtypeStruct((512, 256), jnp.float32)
  step = jax.value_and_grad(
      lambda x, y: jnp.mean(jaxloss.sigmoid_binary_cross_entropy(x, y)))
  hlo = jax.jit(step).lower(spec, spec).compile().as_text()
  assert len(re.findall(r"\bexponential\(", hlo)) == 2
  x = jnp.array([-80.0, -30.0, -20.0, -1.0, 0.0, 1.0, 20.0, 30.0, 80.0])
  for label in (0.0, 0.3, 1.0):
    y = jnp.full_like(x, label)
    got = jax.grad(lambda x: jnp.sum(
        jaxloss.sigmoid_binary_cross_entropy(x, y)))(x)
    x64 = np.asarray(x, np.float64)
    sigmoid = lambda t: 1 / (1 + np.exp(-t))
    want = (1 - label) * sigmoid(x64) - label * sigmoid(-x64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
