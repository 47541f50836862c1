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
