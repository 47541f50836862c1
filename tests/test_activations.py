import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from helpers import FLOATS, assert_finite, dtype_context

X = np.random.default_rng(4).normal(0, 3, (4, 6))


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_pair(dtype):
  with dtype_context(dtype):
    x = jnp.asarray([-1e4, -40.0, -1.0, 0.0, 1.0, 40.0, 1e4], dtype)
    s = jaxloss.sigmoid(x)
    ls = jaxloss.log_sigmoid(x)
    assert s.dtype == ls.dtype == x.dtype
    x64 = np.asarray(x).astype(np.float64)
    np.testing.assert_allclose(np.asarray(s, np.float64),
                               np.exp(-np.logaddexp(0, -x64)), rtol=1e-2 if
                               dtype in ("float16", "bfloat16") else 1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(ls, np.float64),
                               -np.logaddexp(0, -x64), rtol=1e-2 if
                               dtype in ("float16", "bfloat16") else 1e-6,
                               atol=1e-7)
    assert_finite(jax.grad(lambda x: jaxloss.log_sigmoid(x).sum())(x))


def test_sigmoid_derivative_peaks_at_a_quarter():
  d = jax.vmap(jax.grad(jaxloss.sigmoid))(jnp.linspace(-6, 6, 121))
  assert d.max() == d[60] == 0.25


def test_softmax_of_one_two_three():
  np.testing.assert_allclose(jaxloss.softmax(jnp.array([1.0, 2.0, 3.0])),
                             [0.09003057, 0.24472847, 0.66524096], rtol=1e-6)


@pytest.mark.parametrize("axis", [0, -1, (0, 1)])
def test_softmax_pair_matches_jax_nn(axis):
  np.testing.assert_allclose(jaxloss.softmax(X, axis=axis),
                             jax.nn.softmax(X, axis=axis), rtol=1e-6)
  np.testing.assert_allclose(jaxloss.log_softmax(X, axis=axis),
                             jax.nn.log_softmax(X, axis=axis), rtol=1e-6)


def test_softmax_where_and_minus_inf():
  where = jnp.asarray(X > 0)
  p = jaxloss.softmax(X, where=where)
  np.testing.assert_array_equal(np.asarray(p)[~np.asarray(where)], 0)
  np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)
  lp = jaxloss.log_softmax(X, where=where)
  assert (np.asarray(lp)[~np.asarray(where)] == -np.inf).all()
  x = jnp.asarray(X).at[:, 0].set(-jnp.inf)
  assert (jaxloss.softmax(x)[:, 0] == 0).all()
  assert_finite(jax.grad(lambda x: jaxloss.log_softmax(x)[:, 1].sum())(x))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_softmax_keeps_its_dtype(dtype):
  x = jnp.asarray(X, dtype)
  assert jaxloss.softmax(x).dtype == x.dtype
  assert jaxloss.log_softmax(x).dtype == x.dtype


def test_zero_dimensional_and_empty_input_as_torch():
  # torch.softmax(scalar, 0) is 1, log_softmax 0: one entry normalised.
  x = jnp.float32(3.0)
  for axis in (0, -1):
    assert jaxloss.softmax(x, axis=axis) == 1
    assert jaxloss.log_softmax(x, axis=axis) == 0
  assert jax.grad(jaxloss.log_softmax)(x) == 0
  with pytest.raises(ValueError, match="softmax: axis must be 0 or -1 for a "
                     "0-d x, got 1"):
    jaxloss.softmax(x, axis=1)
  empty = jnp.zeros((5, 0, 0))
  assert jaxloss.softmax(empty).shape == jaxloss.log_softmax(empty).shape == (
      5, 0, 0)


def test_where_broadcasts_to_x_never_enlarges_it():
  rows = jnp.asarray(X[:, :1] > 0)        # whole rows in or out
  np.testing.assert_array_equal(
      jaxloss.softmax(X, where=rows),
      jaxloss.softmax(X, where=jnp.broadcast_to(rows, X.shape)))
  for fn in ("softmax", "log_softmax"):
    with pytest.raises(ValueError, match=(
        rf"^{fn}: where shape \(6, 1\) does not broadcast to x shape \(6,\): "
        r"it has more axes than x")):
      getattr(jaxloss, fn)(X[0], where=jnp.ones((6, 1), bool))
