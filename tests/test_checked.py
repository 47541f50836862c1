import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss

CE = jaxloss.softmax_cross_entropy_with_integer_labels


def test_valid_input_passes_unchanged():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  labels = jnp.array([0, 4, -100, 2])
  f = lambda x, t: CE(x, t, ignore_index=-100, reduction="mean")  # noqa: E731
  np.testing.assert_array_equal(jaxloss.checked(f)(x, labels), f(x, labels))
  np.testing.assert_array_equal(jaxloss.checked(jax.jit(f))(x, labels),
                                f(x, labels))


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_out_of_range_label_under_jit(implementation):
  f = jax.jit(lambda x, t: CE(x, t, ignore_index=-100, reduction="sum",
                              implementation=implementation))
  with pytest.raises(jaxloss.CheckError, match=(
      r"softmax_cross_entropy_with_integer_labels: labels must be in \[0, 5\)"
      r" or equal ignore_index; first offending element labels\[2\] = -1")):
    jaxloss.checked(f)(jnp.zeros((4, 5)), jnp.array([0, -100, -1, 9]))
  assert issubclass(jaxloss.CheckError, ValueError)


def test_probabilities_outside_unit_interval():
  with pytest.raises(jaxloss.CheckError, match=(
      r"binary_cross_entropy: probs must be in \[0, 1\]; first offending "
      r"element probs\[1, 0\] = 1.5")):
    jaxloss.checked(jaxloss.binary_cross_entropy)(
        jnp.array([[0.5, 0.5], [1.5, 0.5]]), jnp.zeros((2, 2)))


def test_nan_logits_and_bad_labels():
  with pytest.raises(jaxloss.CheckError, match="logits must not be NaN"):
    jaxloss.checked(jaxloss.sigmoid_binary_cross_entropy)(
        jnp.array([0.0, jnp.nan]), jnp.zeros(2))
  with pytest.raises(jaxloss.CheckError,
                     match=r"labels must be in \[0, 1\].*labels\[0\] = 2"):
    jaxloss.checked(jaxloss.sigmoid_focal_loss)(jnp.zeros(2),
                                                jnp.array([2.0, 0.0]))


def test_masked_elements_are_not_checked():
  f = jaxloss.checked(jaxloss.binary_cross_entropy)
  out = f(jnp.array([0.5, 7.0]), jnp.zeros(2), where=jnp.array([True, False]))
  np.testing.assert_allclose(out, [np.log(2), 0], rtol=1e-6)


def test_checks_compile_to_nothing_outside_checked():
  def f(p, y):
    return jaxloss.binary_cross_entropy(p, y, reduction="sum")
  text = jax.jit(f).lower(jnp.ones(8), jnp.ones(8)).compile().as_text()
  # Only the sum remains: the predicate and its argmax are dead code.
  assert text.count("reduce(") + text.count("reduce-window") <= 1
  assert "argmax" not in text
