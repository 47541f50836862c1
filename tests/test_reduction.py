import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxloss import _reduction


def test_reductions():
  loss = jnp.array([1.0, 2.0, 3.0, 0.0])
  keep = jnp.array([True, True, True, False])
  assert _reduction.reduce("f", loss, "sum") == 6
  assert _reduction.reduce("f", loss, "mean") == 1.5
  assert _reduction.reduce("f", loss, "mean", keep=keep) == 2
  assert _reduction.reduce("f", loss, "mean",
                           denominator=jnp.array([1.0, 2.0])) == 2
  assert _reduction.reduce("f", loss, "none") is loss


def test_mean_over_nothing_is_zero_with_zero_gradient():
  def f(x):
    keep = jnp.zeros(3, bool)
    return _reduction.reduce("f", _reduction.mask(x, keep), "mean", keep=keep)
  assert f(jnp.ones(3)) == 0
  np.testing.assert_array_equal(jax.grad(f)(jnp.ones(3)), 0)


def test_unknown_reduction():
  with pytest.raises(ValueError, match="f: reduction must be one of 'none', "
                     "'mean', 'sum', got 'batchmean'"):
    _reduction.reduce("f", jnp.ones(3), "batchmean")
