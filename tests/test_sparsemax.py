"""sparsemax, the sparsemax losses and make_fenchel_young_loss."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
from helpers import check_autodiff_modes
from helpers import temporaries
from jaxloss import _sparsemax

rng = np.random.default_rng(7)
X = rng.normal(0, 1.5, (4, 5))
LABELS = np.array([0, 3, 4, 1])
HALF = (jnp.float16, jnp.bfloat16)

# optax's functions run op by op when not jitted: jit them once.
optax_simplex = jax.jit(jax.vmap(optax.projections.projection_simplex))
optax_multiclass = jax.jit(optax.losses.multiclass_sparsemax_loss)
optax_binary = jax.jit(optax.losses.sparsemax_loss)


def ref_sparsemax(z):
  """Float64 NumPy sparsemax over the last axis (sort and threshold)."""
  z = np.asarray(z, np.float64)
  out = np.zeros_like(z)
  for idx in np.ndindex(z.shape[:-1]):
    row = z[idx]
    finite = row[np.isfinite(row)]
    if finite.size == 0:
      continue
    u = np.sort(finite)[::-1]
    k = np.arange(1, u.size + 1)
    cs = np.cumsum(u)
    kz = k[1 + k * u > cs].max()
    tau = (cs[kz - 1] - 1) / kz
    out[idx] = np.maximum(row - tau, 0)
  return out


def ref_multiclass_sparsemax_loss(x, labels):
  p = ref_sparsemax(x)
  xy = np.take_along_axis(x, labels[..., None], -1)
  gap = np.where(p > 0, x - xy, 0)        # p is 0 wherever x is -inf
  return np.sum(p * gap, -1) + 0.5 * (1 - np.sum(p * p, -1))


def ref_sparse_plus(x):
  return np.where(x <= -1, 0, np.where(x >= 1, x, (x + 1) ** 2 / 4))


# ----------------------------------------------------------------------------
# sparsemax


def test_sparsemax_reference_and_optax():
  x = X.copy()
  x[1, 2] = -np.inf
  with jax.enable_x64(True):
    got = jaxloss.sparsemax(jnp.asarray(x))
    assert got.dtype == jnp.float64
    got = np.asarray(got)
  np.testing.assert_allclose(got, ref_sparsemax(x), rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(got.sum(-1), 1, rtol=1e-12)
  assert np.sum(got == 0) > 1                      # sparse, not just -inf
  x32 = jnp.asarray(X, jnp.float32)
  np.testing.assert_allclose(jaxloss.sparsemax(x32), optax_simplex(x32),
                             rtol=1e-6, atol=1e-7)


def test_sparsemax_axes_and_where():
  x = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)
  np.testing.assert_allclose(
      jaxloss.sparsemax(x, axis=1),
      np.moveaxis(ref_sparsemax(np.moveaxis(np.asarray(x), 1, -1)), -1, 1),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      jaxloss.sparsemax(x, axis=(1, 2)),
      ref_sparsemax(np.asarray(x).reshape(3, 8)).reshape(3, 4, 2),
      rtol=1e-5, atol=1e-6)
  keep = np.asarray(rng.random((3, 4, 2)) > 0.4)
  keep[:, 0, 0] = True
  masked = jaxloss.sparsemax(x, axis=1, where=jnp.asarray(keep))
  assert np.all(np.asarray(masked)[~keep] == 0)
  want = np.moveaxis(ref_sparsemax(
      np.moveaxis(np.where(keep, np.asarray(x), -np.inf), 1, -1)), -1, 1)
  np.testing.assert_allclose(masked, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_sparsemax_gradients_edges_and_transforms():
  x = jnp.asarray(X, jnp.float32)
  # The Jacobian is diag(s) - s s^T / |s| on the support s.
  jac = jax.vmap(jax.jacobian(jaxloss.sparsemax))(x)
  s = np.asarray(jaxloss.sparsemax(x) > 0, np.float32)
  want = np.stack([np.diag(r) - np.outer(r, r) / r.sum() for r in s])
  np.testing.assert_allclose(jac, want, atol=1e-6)
  edges = jnp.array([[-jnp.inf] * 5,                 # no support: zeros
                     [1e4, -1e4, 0.0, 1.0, 2.0],
                     [-jnp.inf, 2.0, -jnp.inf, 0.0, 1.9],
                     [0.1, 0.2, 0.3, 0.4, 0.5]])
  got = np.asarray(jaxloss.sparsemax(edges))
  np.testing.assert_array_equal(got[:2], [[0] * 5, [1, 0, 0, 0, 0]])
  np.testing.assert_allclose(got[2], [0, 0.55, 0, 0, 0.45], rtol=1e-5)
  assert np.all(np.isfinite(jax.vmap(jax.jacobian(jaxloss.sparsemax))(edges)))
  np.testing.assert_allclose(jax.vmap(jaxloss.sparsemax)(x),
                             jaxloss.sparsemax(x), atol=1e-7)


def test_sparsemax_eager():
  # Op by op, without jit (costly: every primitive compiles on its own).
  x = jnp.asarray(X, jnp.float32)
  with jax.disable_jit():
    eager = jaxloss.sparsemax(x)
  np.testing.assert_allclose(eager, jaxloss.sparsemax(x), atol=1e-7)


def test_sparsemax_dtypes():
  for dtype in HALF:
    x = jnp.asarray(X, dtype)
    got = jaxloss.sparsemax(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               ref_sparsemax(np.asarray(x, np.float64)),
                               atol=1e-2)


def test_sparsemax_errors():
  with pytest.raises(TypeError, match="sparsemax: x must have a floating "
                     "dtype, got int32"):
    jaxloss.sparsemax(jnp.arange(3))
  with pytest.raises(TypeError, match="sparsemax: where must be a boolean "
                     "mask, got float32"):
    jaxloss.sparsemax(jnp.ones(3), where=jnp.ones(3))
  with pytest.raises(ValueError, match=r"sparsemax: where shape \(2,\) does "
                     r"not broadcast to x shape \(3,\)"):
    jaxloss.sparsemax(jnp.ones(3), where=jnp.ones(2, bool))
  with pytest.raises(ValueError, match="sparsemax: axis 1 is out of bounds"):
    jaxloss.sparsemax(jnp.ones(3), axis=1)


# ----------------------------------------------------------------------------
# multiclass_sparsemax_loss


def loss_and_grad(fn, *args, **kwargs):
  return jax.jit(jax.value_and_grad(
      lambda x, *a: jnp.sum(fn(x, *a, **kwargs))))(*args)


def test_multiclass_sparsemax_loss_reference_and_gradients():
  with jax.enable_x64(True):
    x, y = jnp.asarray(X), jnp.asarray(LABELS)
    got = jaxloss.multiclass_sparsemax_loss(x, y)
    np.testing.assert_allclose(got, ref_multiclass_sparsemax_loss(X, LABELS),
                               rtol=1e-12, atol=1e-14)
    check_grads(lambda x: jaxloss.multiclass_sparsemax_loss(x, y), (x,),
                order=1, modes=("rev",), eps=1e-6)


def test_multiclass_sparsemax_loss_optax_parity():
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(LABELS)
  np.testing.assert_allclose(jaxloss.multiclass_sparsemax_loss(x, y),
                             optax_multiclass(x, y), rtol=1e-6, atol=1e-7)
  _, grad = loss_and_grad(jaxloss.multiclass_sparsemax_loss, x, y)
  _, want = loss_and_grad(optax.losses.multiclass_sparsemax_loss, x, y)
  np.testing.assert_allclose(grad, want, atol=1e-6)
  # The Fenchel-Young gradient: sparsemax(x) - onehot(y).
  np.testing.assert_allclose(
      grad, jaxloss.sparsemax(x) - jax.nn.one_hot(y, 5), atol=1e-6)


def test_multiclass_sparsemax_loss_edges():
  x = jnp.array([[1e4, -1e4, 0.0], [0.0, -jnp.inf, 1.0],
                 [0.0, -jnp.inf, 1.0], [0.3, 0.1, 0.2]])
  y = jnp.array([1, 0, 1, 5])
  loss = jaxloss.multiclass_sparsemax_loss(x, y)
  assert float(loss[0]) == pytest.approx(2e4, rel=1e-6)
  np.testing.assert_allclose(loss[1], ref_multiclass_sparsemax_loss(
      np.array([[0.0, 1.0]]), np.array([0]))[0], rtol=1e-6)
  assert loss[2] == jnp.inf                  # -inf at the label
  assert np.isnan(loss[3])                   # out of range
  assert np.isfinite(optax_multiclass(x, y)[3])   # optax: a clamped class
  _, grad = loss_and_grad(jaxloss.multiclass_sparsemax_loss, x, y,
                          where=jnp.arange(4) < 3)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[3], 0)
  np.testing.assert_allclose(grad[0], [1, -1, 0])


def test_multiclass_sparsemax_loss_options_and_transforms():
  x, y = jnp.asarray(X, jnp.float32), jnp.asarray(LABELS)
  keep = jnp.array([True, False, True, True])
  full = jaxloss.multiclass_sparsemax_loss(x, y)
  rows = jaxloss.multiclass_sparsemax_loss(x, y, where=keep)
  np.testing.assert_allclose(rows, jnp.where(keep, full, 0), rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.multiclass_sparsemax_loss(x, y, where=keep, reduction="mean"),
      rows.sum() / 3, rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.multiclass_sparsemax_loss(x, y, reduction="sum"), full.sum(),
      rtol=1e-6)
  assert jaxloss.multiclass_sparsemax_loss(
      x, y, where=jnp.zeros(4, bool), reduction="mean") == 0
  classes = np.ones((4, 5), bool)
  classes[:, 2] = classes[2, 0] = False
  np.testing.assert_allclose(
      jaxloss.multiclass_sparsemax_loss(x, y, where=jnp.asarray(classes)),
      ref_multiclass_sparsemax_loss(np.where(classes, X, -np.inf), LABELS),
      rtol=1e-5)
  np.testing.assert_allclose(
      jaxloss.multiclass_sparsemax_loss(x.T, y, axis=0), full, rtol=1e-6)
  np.testing.assert_allclose(
      jax.vmap(jaxloss.multiclass_sparsemax_loss)(x, y), full, rtol=1e-6)


def test_multiclass_sparsemax_loss_half_precision():
  for dtype in HALF:
    got = jaxloss.multiclass_sparsemax_loss(jnp.asarray(X, dtype),
                                            jnp.asarray(LABELS))
    assert got.dtype == jnp.float32
    want = ref_multiclass_sparsemax_loss(
        np.asarray(jnp.asarray(X, dtype), np.float64), LABELS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_multiclass_sparsemax_loss_errors():
  with pytest.raises(TypeError, match="multiclass_sparsemax_loss: labels "
                     "must have an integer dtype"):
    jaxloss.multiclass_sparsemax_loss(jnp.ones((2, 3)), jnp.ones(2))
  for shape in ((3,), (2, 1)):
    with pytest.raises(ValueError, match=(
        rf"multiclass_sparsemax_loss: labels shape {re.escape(str(shape))} "
        r"does not broadcast to the batch shape of scores \(2,\).*; scores "
        r"has shape \(2, 3\)")):
      jaxloss.multiclass_sparsemax_loss(jnp.ones((2, 3)), jnp.zeros(shape, int))
  # Batch axes broadcast: one label for every row.
  np.testing.assert_allclose(
      jaxloss.multiclass_sparsemax_loss(jnp.asarray(X), jnp.array(1)),
      jaxloss.multiclass_sparsemax_loss(jnp.asarray(X), jnp.ones(4, int)))
  with pytest.raises(TypeError, match="multiclass_sparsemax_loss: scores "
                     "must have a floating dtype"):
    jaxloss.multiclass_sparsemax_loss(jnp.ones((2, 3), int), jnp.zeros(2, int))
  with pytest.raises(ValueError, match="multiclass_sparsemax_loss: reduction "
                     "must be one of"):
    jaxloss.multiclass_sparsemax_loss(jnp.ones((2, 3)), jnp.zeros(2, int),
                                      reduction="avg")


# ----------------------------------------------------------------------------
# sparsemax_loss (binary)


def test_sparsemax_loss_reference_optax_and_gradients():
  x = np.concatenate([X.ravel(), [-1.0, 1.0, 1e4, -1e4]])
  y = (rng.random(x.shape) > 0.5).astype(np.int32)
  with jax.enable_x64(True):
    got = jaxloss.sparsemax_loss(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(got, ref_sparse_plus(np.where(y, -x, x)),
                               rtol=1e-12)
  xf, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y)
  np.testing.assert_allclose(jaxloss.sparsemax_loss(xf, yj),
                             optax_binary(xf, yj), rtol=1e-6)
  _, grad = loss_and_grad(jaxloss.sparsemax_loss, xf, yj)
  np.testing.assert_allclose(grad, jax.nn.sparse_sigmoid(xf) - y, atol=1e-6)
  # Boolean labels, as optax's jnp.where(labels, ...) reads them.
  np.testing.assert_allclose(jaxloss.sparsemax_loss(xf, yj > 0),
                             jaxloss.sparsemax_loss(xf, yj))
  np.testing.assert_allclose(jax.vmap(jaxloss.sparsemax_loss)(xf, yj),
                             jaxloss.sparsemax_loss(xf, yj))


def test_sparsemax_loss_soft_labels_are_fenchel_young():
  x = jnp.linspace(-0.9, 0.9, 7)
  y = jax.nn.sparse_sigmoid(x)
  np.testing.assert_allclose(jaxloss.sparsemax_loss(x, y), 0, atol=1e-6)
  _, grad = loss_and_grad(jaxloss.sparsemax_loss, x, jnp.full_like(x, 0.3))
  np.testing.assert_allclose(grad, jax.nn.sparse_sigmoid(x) - 0.3, atol=1e-6)
  # optax reads any non-zero label as 1: not zero at its own fixed point.
  assert not np.allclose(optax_binary(x, y), 0)


def test_sparsemax_loss_options_dtypes_errors():
  x = jnp.asarray(X, jnp.float32)
  y = jnp.asarray(rng.random(X.shape) > 0.5)
  w = jnp.asarray(rng.random(5), jnp.float32)
  keep = jnp.asarray(rng.random(X.shape) > 0.3)
  plain = jaxloss.sparsemax_loss(x, y)
  np.testing.assert_allclose(
      jaxloss.sparsemax_loss(x, y, weight=w, where=keep),
      jnp.where(keep, plain * jnp.broadcast_to(w, plain.shape), 0), rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.sparsemax_loss(x, y, where=keep, reduction="mean"),
      jnp.where(keep, plain, 0).sum() / keep.sum(), rtol=1e-6)
  for dtype in HALF:
    assert jaxloss.sparsemax_loss(x.astype(dtype), y).dtype == jnp.float32
  _, g = loss_and_grad(jaxloss.sparsemax_loss,
                       jnp.array([1e4, 1e4, -1e4, -1e4]),
                       jnp.array([1, 0, 1, 0]))
  np.testing.assert_array_equal(g, [0, 1, -1, 0])
  for x_shape, y_shape in (((2,), (3,)), ((3,), (3, 1)), ((3, 1), (3,))):
    with pytest.raises(ValueError, match=(
        rf"sparsemax_loss: labels shape {re.escape(str(y_shape))} does not "
        rf"broadcast to logits shape {re.escape(str(x_shape))}")):
      jaxloss.sparsemax_loss(jnp.ones(x_shape), jnp.ones(y_shape))
  with pytest.raises(ValueError, match=(
      r"sparsemax_loss: weight shape \(5, 1\) does not broadcast to logits "
      r"shape \(5,\)")):
    jaxloss.sparsemax_loss(jnp.ones(5), jnp.ones(5), weight=jnp.ones((5, 1)))
  np.testing.assert_allclose(jaxloss.sparsemax_loss(x, y[0]),
                             jaxloss.sparsemax_loss(x, jnp.broadcast_to(
                                 y[0], x.shape)))
  with pytest.raises(TypeError, match="sparsemax_loss: logits must have a "
                     "floating dtype"):
    jaxloss.sparsemax_loss(jnp.ones(2, int), jnp.ones(2))


# ----------------------------------------------------------------------------
# make_fenchel_young_loss


def test_fenchel_young_matches_optax_and_softmax_cross_entropy():
  x = jnp.asarray(X, jnp.float32)
  t = jnp.asarray(rng.dirichlet(np.ones(5), 4), jnp.float32)
  ours = jax.jit(jaxloss.make_fenchel_young_loss(jax.nn.logsumexp))
  theirs = jax.jit(optax.losses.make_fenchel_young_loss(jax.nn.logsumexp))
  np.testing.assert_allclose(ours(x, t), theirs(x, t), rtol=1e-6)
  onehot = jax.nn.one_hot(jnp.asarray(LABELS), 5)
  np.testing.assert_allclose(
      ours(x, onehot),
      jaxloss.softmax_cross_entropy_with_integer_labels(x, jnp.asarray(LABELS)),
      rtol=1e-6)
  summed = jaxloss.make_fenchel_young_loss(jax.nn.logsumexp, reduction="sum")
  np.testing.assert_allclose(jax.jit(summed)(x, t), ours(x, t).sum(),
                             rtol=1e-6)


def test_fenchel_young_forwards_arguments():
  def smoothed_max(s, temperature=1.0):
    return temperature * jax.nn.logsumexp(s / temperature)
  x = jnp.array([[1.0, 2.0, 3.0]])
  t = jnp.full((1, 3), 1 / 3)
  ours = jaxloss.make_fenchel_young_loss(smoothed_max)
  np.testing.assert_allclose(ours(x, t, temperature=2.0),
                             2 * jax.nn.logsumexp(x / 2) - 2.0, rtol=1e-6)
  np.testing.assert_allclose(ours(x, t, 2.0), ours(x, t, temperature=2.0))
  # optax's jnp.vectorize drops the keyword: temperature 2 reads as 1.
  theirs = optax.losses.make_fenchel_young_loss(smoothed_max)
  np.testing.assert_allclose(theirs(x, t, temperature=2.0), ours(x, t),
                             rtol=1e-6)


def test_fenchel_young_minus_inf_scores():
  x = jnp.array([[1.2, -0.8, -jnp.inf]])
  t = jnp.array([[1.0, 0.0, 0.0]])
  ours = jaxloss.make_fenchel_young_loss(jax.nn.logsumexp)
  theirs = optax.losses.make_fenchel_young_loss(jax.nn.logsumexp)
  assert np.isnan(theirs(x, t)[0])
  np.testing.assert_allclose(ours(x, t), jaxloss.softmax_cross_entropy(x, t),
                             rtol=1e-6)
  _, grad = loss_and_grad(ours, x, t)
  np.testing.assert_allclose(grad, jax.nn.softmax(x) - t, atol=1e-6)
  assert ours(x.astype(jnp.bfloat16), t).dtype == jnp.float32


def test_fenchel_young_errors():
  with pytest.raises(TypeError, match="make_fenchel_young_loss: max_fun must "
                     "be callable, got int"):
    jaxloss.make_fenchel_young_loss(3)
  with pytest.raises(ValueError, match="make_fenchel_young_loss: reduction "
                     "must be one of"):
    jaxloss.make_fenchel_young_loss(jax.nn.logsumexp, reduction="avg")
  loss = jaxloss.make_fenchel_young_loss(jax.nn.logsumexp)
  with pytest.raises(TypeError, match="fenchel_young_loss: scores must have "
                     "a floating dtype"):
    loss(jnp.ones(3, int), jnp.ones(3))
  with pytest.raises(ValueError, match=r"fenchel_young_loss: targets shape "
                     r"\(4,\) does not broadcast to scores shape \(3,\)"):
    loss(jnp.ones(3), jnp.ones(4))


# ----------------------------------------------------------------------------
# Empty batches and every autodiff mode.


@pytest.mark.parametrize("fn,labels", [
    (jaxloss.multiclass_sparsemax_loss, jnp.zeros(0, jnp.int32)),
    (jaxloss.sparsemax_loss, jnp.zeros((0, 5)))])
def test_empty_batch(fn, labels):
  def summed(x, reduction):
    return jnp.sum(fn(x, labels, reduction=reduction))
  x = jnp.zeros((0, 5))
  none, mean, total, grad = jax.jit(lambda x: (
      fn(x, labels), summed(x, "mean"), summed(x, "sum"),
      jax.grad(summed)(x, "mean")))(x)
  assert none.shape == labels.shape[:1] + none.shape[1:] and none.size == 0
  assert mean == 0 and total == 0 and grad.shape == (0, 5)


@pytest.mark.parametrize("fn,labels", [
    (jaxloss.multiclass_sparsemax_loss, LABELS[:2]),
    (jaxloss.sparsemax_loss, (X[:2] > 0).astype(np.float64))])
def test_autodiff_modes_against_finite_differences(fn, labels):
  with jax.enable_x64(True):
    x, y = jnp.asarray(X[:2]), jnp.asarray(labels)
    v = jnp.asarray(rng.normal(size=x.shape))

    def total(x):
      return fn(x, y, reduction="sum")

    check_autodiff_modes(total, x, v)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's temporaries")
def test_multiclass_keeps_no_more_than_optax_and_sorts_nothing():
  # The threshold from Newton's steps, each a pass of fused sums (the count
  # a sum of signs, no comparison, which XLA:CPU wrote out as [R, C]
  # arrays), the probabilities computed from it where they are read: no
  # sort (about 0.55 s of XLA:CPU's at [4096, 1024]), and half optax's
  # temporaries for the gradient.
  x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)
  labels = jax.ShapeDtypeStruct((4096,), jnp.int32)

  def mean(fn):
    return lambda x, y: jnp.mean(fn(x, y))

  for step in (mean, lambda fn: jax.value_and_grad(mean(fn))):
    ours = step(jaxloss.multiclass_sparsemax_loss)
    assert temporaries(ours, x, labels) <= temporaries(
        step(optax.losses.multiclass_sparsemax_loss), x, labels)
    hlo = jax.jit(ours).lower(x, labels).compile().as_text()
    assert not re.search(r"\bsort\(", hlo)
  grad = jax.value_and_grad(mean(jaxloss.multiclass_sparsemax_loss))
  assert temporaries(grad, x, labels) <= 2.1 * x.size * 4
  hlo = jax.jit(jaxloss.sparsemax).lower(x).compile().as_text()
  assert not re.search(r"\bsort\(", hlo)


@pytest.mark.parametrize("steps", [_sparsemax._NEWTON_STEPS, 1])
def test_newton_threshold_is_the_sorted_one(monkeypatch, steps):
  # Newton's steps, and bisection then Newton's steps for rows that take
  # more than _NEWTON_STEPS of them (every row with 1), give the sorted
  # form's threshold to rounding, and probabilities that sum to 1 as
  # closely, for float32 and float64 scores of every scale, ties, -inf
  # entries and rows of them. (Without the last Newton steps a bisected
  # row's sum was off by 8 ulps in float32, 46 in float64.)
  monkeypatch.setattr(_sparsemax, "_NEWTON_STEPS", steps)
  key = jax.random.key(5)
  normal = jax.random.normal(key, (64, 300))
  rows = {
      "normal": normal,
      "uniform": jax.random.uniform(key, (64, 300)),
      "huge": 1e30 * normal,
      "tiny": 1e-30 * normal,
      "ties": jnp.round(2 * normal) / 2,
      "harmonic": (-jnp.log1p(jnp.arange(300.0))[None, :]
                   * jnp.linspace(0.01, 3, 64)[:, None]),
      "-inf": jnp.where(normal < 0, -jnp.inf, normal),
      "all -inf": jnp.full((2, 300), -jnp.inf),
  }
  with jax.enable_x64(True):
    for dtype in (jnp.float32, jnp.float64):
      tol = 4 * float(jnp.finfo(dtype).eps)
      for name, z in rows.items():
        z = z.astype(dtype)
        top = jnp.max(z, -1, keepdims=True)
        shift = _sparsemax._shift(top)
        got = _sparsemax._newton_threshold(z, top)
        want = _sparsemax._sorted_threshold(z - shift)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol,
                                   err_msg=f"{name} {dtype.__name__}")
        sums = jnp.sum(jnp.maximum(z - shift - got, 0), -1)
        np.testing.assert_allclose(
            sums, jnp.where(jnp.isfinite(shift[..., 0])
                            & jnp.any(z > -jnp.inf, -1), 1, 0),
            rtol=0, atol=tol, err_msg=f"{name} {dtype.__name__}")


def test_sparsemax_of_infinite_and_nan_rows_is_the_sorts():
  # The same probabilities as the sort's threshold gives, on every
  # backend: a +inf score NaN and the rest 0, NaN everywhere in a row with
  # a NaN, 0 in a row of -inf.
  inf, nan = np.inf, np.nan
  z = jnp.array([[inf, 0.0, 1.0], [0.0, nan, 1.0], [-inf, -inf, -inf],
                 [inf, inf, 0.0], [0.5, 0.3, -1.0]])
  top = jnp.max(z, -1, keepdims=True)
  shift = _sparsemax._shift(top)
  tau = _sparsemax._sorted_threshold(z - shift)
  np.testing.assert_array_equal(_sparsemax._newton_threshold(z, top), tau)
  want = jnp.maximum(z - shift - tau, 0)
  np.testing.assert_array_equal(jaxloss.sparsemax(z), want)
  np.testing.assert_array_equal(want[0], [nan, 0, 0])
