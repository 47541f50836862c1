"""The short-row and long-row forms of row losses: the same numbers, and
each taken on its side of ``jaxloss._rows.SHORT_ROWS`` on CPUs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import _rows

FORMS = {"short": 1 << 30, "long": 0}
# The losses whose programs read the threshold.
LOSSES = {
    "cosine_similarity": jaxloss.cosine_similarity,
    "cosine_distance": jaxloss.cosine_distance,
    "ranking_softmax_loss": lambda x, y: jaxloss.ranking_softmax_loss(
        x, y, reduce_fn=None),
}


@pytest.fixture
def forced(monkeypatch):
  """``forced(form)`` sets the threshold so that every row takes ``form``
  (None: as shipped), with jaxloss's traces dropped; they are dropped again
  when the test ends, pass or fail, before the threshold is put back, so
  that no later test reuses a trace of a forced form."""
  def force(form):
    if form is not None:
      monkeypatch.setattr(_rows, "SHORT_ROWS", FORMS[form])
    jax.clear_caches()
  yield force
  jax.clear_caches()


def inputs(width, rows=6, seed=0):
  x = jax.random.normal(jax.random.key(seed), (rows, width))
  y = jax.random.uniform(jax.random.key(seed + 1), (rows, width))
  return x, y


def program(name, x, y):
  return str(jax.make_jaxpr(LOSSES[name])(x, y))


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the short-row forms are XLA:CPU's")
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("width", [4, _rows.SHORT_ROWS - 1, _rows.SHORT_ROWS,
                                   256])
def test_rows_under_the_threshold_take_the_short_form(name, width,
                                                      forced):
  threshold = _rows.SHORT_ROWS
  x, y = inputs(width)
  forced(None)
  shipped = program(name, x, y)
  programs = {}
  for form in FORMS:
    forced(form)
    programs[form] = program(name, x, y)
  assert programs["short"] != programs["long"]
  assert shipped == programs["short" if width < threshold else "long"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", LOSSES)
def test_both_forms_give_the_same_numbers(name, form, forced):
  forced(form)
  x, y = inputs(8)
  fn = LOSSES[name]
  value, grad = jax.jit(jax.value_and_grad(
      lambda x, y: jnp.sum(fn(x, y)), argnums=(0, 1)))(x, y)
  value64, grad64 = jax.value_and_grad(
      lambda x, y: np.sum(fn(x, y)), argnums=(0, 1))(
          *(np.asarray(a, np.float64) for a in (x, y)))
  np.testing.assert_allclose(value, value64, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(fn)(x, y), fn(
      *(np.asarray(a, np.float64) for a in (x, y))), rtol=1e-5, atol=1e-6)
  for g, g64 in zip(grad, grad64):
    np.testing.assert_allclose(g, g64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["cosine_similarity", "cosine_distance"])
def test_both_cosine_forms_give_zero_vectors_a_flat_cosine(name, form,
                                                           forced):
  forced(form)
  x, y = inputs(8, rows=3)
  x = x.at[0].set(0.0)
  y = y.at[1].set(0.0).at[2].multiply(1e30)
  fn = LOSSES[name]
  value = jax.jit(fn)(x, y)
  np.testing.assert_array_equal(value[:2], [1.0 * (name[-8:] == "distance")]
                                * 2)
  assert np.isfinite(value[2])
  grads = jax.jit(jax.grad(lambda x, y: jnp.sum(fn(x, y)),
                           argnums=(0, 1)))(x, y)
  np.testing.assert_array_equal(grads[0][0], 0)
  np.testing.assert_array_equal(grads[1][1], 0)


@pytest.mark.parametrize("form", FORMS)
def test_both_ranking_forms_cost_minus_inf_logits_by_their_labels(
    form, forced):
  # A zero label on a -inf logit costs 0, also in a row of -inf logits; a
  # positive one inf, even in a row of -inf logits; a negative one -inf (no
  # check outside jaxloss.checked).
  forced(form)
  x, y = inputs(8, rows=5)
  x = x.at[0, 1].set(-jnp.inf).at[1, 1].set(-jnp.inf).at[2].set(-jnp.inf)
  x = x.at[3, 2].set(-jnp.inf).at[4].set(-jnp.inf)
  y = y.at[0, 1].set(0.0).at[1, 1].set(1e-30).at[3, 2].set(-0.5).at[4].set(0)
  fn = LOSSES["ranking_softmax_loss"]
  value = jax.jit(fn)(x, y)
  assert np.isfinite(value[0])
  np.testing.assert_array_equal(value[1:], [np.inf, np.inf, -np.inf, 0])
  # The finite rows' gradient: finite, and 0 on the row of -inf logits
  # (the log of its zero sum of exponentials once made it NaN).
  grad = jax.jit(jax.grad(lambda x: fn(x, y)[0] + fn(x, y)[4]))(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[4], 0)
  np.testing.assert_array_equal(grad[0, 1], 0)
