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


# One case per value check of the classification, sparsemax and divergence
# losses: (loss, arguments, keywords, expected message).
_NAN = float("nan")
VALUE_CHECKS = [
    (jaxloss.hinge_loss, ([0.0, 1.0], [1.0, 0.0]), {},
     r"hinge_loss: targets must be -1 or 1; first offending element "
     r"targets\[1\] = 0"),
    (jaxloss.hinge_loss, ([0.0, _NAN], [1.0, -1.0]), {},
     r"hinge_loss: predictor_outputs must not be NaN; first offending "
     r"element predictor_outputs\[1\] = nan"),
    (jaxloss.perceptron_loss, ([0.0, 1.0], [2.0, 1.0]), {},
     r"perceptron_loss: targets must be -1 or 1; first offending element "
     r"targets\[0\] = 2"),
    (jaxloss.multiclass_hinge_loss, ([[0.0, 1.0]] * 2, [1, 2]), {},
     r"multiclass_hinge_loss: labels must be in \[0, 2\); first offending "
     r"element labels\[1\] = 2"),
    (jaxloss.multiclass_perceptron_loss, ([[0.0, 1.0]] * 2, [-1, 0]), {},
     r"multiclass_perceptron_loss: labels must be in \[0, 2\); first "
     r"offending element labels\[0\] = -1"),
    (jaxloss.multi_margin_loss, ([[0.0, 1.0, 2.0]] * 2, [0, 3]), {},
     r"multi_margin_loss: targets must be in \[0, 3\); first offending "
     r"element targets\[1\] = 3"),
    (jaxloss.multilabel_margin_loss, ([[0.0, 1.0, 2.0, 3.0]],
                                      [[3, 0, 4, -1]]), {},
     r"multilabel_margin_loss: targets must be class indices in \[0, 4\) "
     r"ended by -1; first offending element targets\[0, 2\] = 4"),
    (jaxloss.multilabel_margin_loss, ([[0.0, 1.0, 2.0]], [[1, -2, 0]]), {},
     r"targets must be class indices in \[0, 3\) ended by -1; first "
     r"offending element targets\[0, 1\] = -2"),
    (jaxloss.poly_loss_cross_entropy, ([[0.0, 1.0]] * 2,
                                       [[1.0, 0.0], [1.5, -0.5]]), {},
     r"poly_loss_cross_entropy: labels must be in \[0, 1\]; first offending "
     r"element labels\[1, 0\] = 1.5"),
    (jaxloss.multilabel_soft_margin_loss, ([[0.0, 1.0]], [[1.0, 2.0]]), {},
     r"multilabel_soft_margin_loss: targets must be in \[0, 1\]; first "
     r"offending element targets\[0, 1\] = 2"),
    (jaxloss.multilabel_soft_margin_loss, ([[_NAN, 1.0]], [[1.0, 0.0]]), {},
     r"multilabel_soft_margin_loss: predictions must not be NaN"),
    (jaxloss.binary_focal_cross_entropy, ([[0.5, 1.25]], [[1.0, 0.0]]), {},
     r"binary_focal_cross_entropy: predictions must be in \[0, 1\]; first "
     r"offending element predictions\[0, 1\] = 1.25"),
    (jaxloss.binary_focal_cross_entropy, ([[0.5, 9.0]], [[1.0, -1.0]]),
     {"from_logits": True},
     r"binary_focal_cross_entropy: targets must be in \[0, 1\]; first "
     r"offending element targets\[0, 1\] = -1"),
    (jaxloss.categorical_focal_cross_entropy, ([[0.5, -0.5]], [[1.0, 0.0]]),
     {}, r"categorical_focal_cross_entropy: predictions must be in \[0, 1\];"
     r" first offending element predictions\[0, 1\] = -0.5"),
    (jaxloss.categorical_focal_cross_entropy, ([[_NAN, 0.0]], [[1.0, 0.0]]),
     {"from_logits": True},
     r"categorical_focal_cross_entropy: predictions must not be NaN"),
    (jaxloss.sparsemax_loss, ([0.0, 1.0], [1.0, 3.0]), {},
     r"sparsemax_loss: labels must be in \[0, 1\]; first offending element "
     r"labels\[1\] = 3"),
    (jaxloss.sparsemax_loss, ([_NAN, 1.0], [1.0, 0.0]), {},
     r"sparsemax_loss: logits must not be NaN; first offending element "
     r"logits\[0\] = nan"),
    (jaxloss.multiclass_sparsemax_loss, ([[0.0, 1.0]], [5]), {},
     r"multiclass_sparsemax_loss: labels must be in \[0, 2\); first "
     r"offending element labels\[0\] = 5"),
    (jaxloss.kl_divergence, ([[-1.0, -0.5]], [[1.25, -0.25]]), {},
     r"kl_divergence: targets must be non-negative; first offending element "
     r"targets\[0, 1\] = -0.25"),
    (jaxloss.kl_divergence, ([[-1.0, _NAN]], [[0.5, 0.5]]), {},
     r"kl_divergence: log_predictions must not be NaN; first offending "
     r"element log_predictions\[0, 1\] = nan"),
    (jaxloss.kl_divergence_with_log_targets, ([[-1.0, -1.0]],
                                              [[_NAN, -1.0]]), {},
     r"kl_divergence_with_log_targets: log_targets must not be NaN; first "
     r"offending element log_targets\[0, 0\] = nan"),
    (jaxloss.generalized_kl_divergence, ([[0.0, 1.0]], [[2.0, -3.0]]), {},
     r"generalized_kl_divergence: targets must be non-negative; first "
     r"offending element targets\[0, 1\] = -3"),
    (jaxloss.convex_kl_divergence, ([[0.0, 1.0]], [[-2.0, 3.0]]), {},
     r"convex_kl_divergence: targets must be non-negative; first offending "
     r"element targets\[0, 0\] = -2"),
    (jaxloss.kl_div, ([[-1.0, -0.5]], [[0.5, -0.5]]), {},
     r"kl_div: targets must be non-negative; first offending element "
     r"targets\[0, 1\] = -0.5"),
    (jaxloss.kl_div, ([[-1.0, -0.5]], [[-0.5, _NAN]]), {"log_target": True},
     r"kl_div: targets must not be NaN; first offending element "
     r"targets\[0, 1\] = nan"),
    (jaxloss.kl_div, ([[_NAN, -0.5]], [[0.5, 0.5]]), {},
     r"kl_div: log_predictions must not be NaN"),
]


@pytest.mark.parametrize(
    "loss, args, kwargs, message", VALUE_CHECKS,
    ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(VALUE_CHECKS)])
def test_value_check_under_jit(loss, args, kwargs, message):
  args = [jnp.asarray(a) for a in args]
  f = jax.jit(lambda *a: loss(*a, **kwargs, reduction="sum"))
  with pytest.raises(jaxloss.CheckError, match=message):
    jaxloss.checked(f)(*args)


# The same losses on valid input, at the edges of the valid ranges.
VALID = [
    (jaxloss.hinge_loss, ([0.0, 3.0], [1.0, -1.0]), {}),
    (jaxloss.perceptron_loss, ([0.0, -3.0], [-1.0, 1.0]), {}),
    (jaxloss.multiclass_hinge_loss, ([[0.0, 1.0]] * 2, [0, 1]), {}),
    (jaxloss.multi_margin_loss, ([[0.0, 1.0, 2.0]] * 2, [0, 2]), {}),
    (jaxloss.multilabel_margin_loss, ([[0.0, 1.0, 2.0, 3.0]],
                                      [[3, 0, -1, 7]]), {}),
    (jaxloss.poly_loss_cross_entropy, ([[0.0, 1.0]], [[1.0, 0.0]]), {}),
    (jaxloss.multilabel_soft_margin_loss, ([[0.0, 1.0]], [[1.0, 0.0]]), {}),
    (jaxloss.binary_focal_cross_entropy, ([[0.0, 1.0]], [[1.0, 0.0]]), {}),
    (jaxloss.categorical_focal_cross_entropy, ([[0.0, 1.0]], [[0.0, 1.0]]),
     {}),
    (jaxloss.sparsemax_loss, ([-9.0, 9.0], [0.0, 1.0]), {}),
    (jaxloss.kl_divergence, ([[-jnp.inf, 0.0]], [[0.0, 1.0]]), {}),
    (jaxloss.kl_divergence_with_log_targets, ([[-1.0, 0.0]],
                                              [[-jnp.inf, 0.0]]), {}),
    (jaxloss.generalized_kl_divergence, ([[0.0, 2.0]], [[0.0, 5.0]]), {}),
    (jaxloss.kl_div, ([[-jnp.inf, 0.0]], [[0.0, 1.0]]), {}),
    (jaxloss.kl_div, ([[-1.0, 0.0]], [[-jnp.inf, 0.0]]), {"log_target": True}),
]


@pytest.mark.parametrize(
    "loss, args, kwargs", VALID,
    ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(VALID)])
def test_valid_edge_input_passes_unchanged(loss, args, kwargs):
  args = [jnp.asarray(a) for a in args]
  f = jax.jit(lambda *a: loss(*a, **kwargs, reduction="none"))
  np.testing.assert_array_equal(jaxloss.checked(f)(*args), f(*args))


def test_masked_entries_are_not_checked_in_the_new_checks():
  nan = jnp.array([[_NAN, -1.0], [-1.0, -1.0]])
  keep = jnp.array([[False, True], [True, True]])
  targets = jnp.array([[-5.0, 0.5], [0.5, 0.5]])
  out = jaxloss.checked(jaxloss.kl_divergence)(nan, targets, where=keep)
  np.testing.assert_allclose(out, [0.5 * (np.log(0.5) + 1),
                                   np.log(0.5) + 1], rtol=1e-6)
  out = jaxloss.checked(jaxloss.hinge_loss)(
      jnp.array([_NAN, 0.5]), jnp.array([0.0, 1.0]),
      where=jnp.array([False, True]))
  np.testing.assert_array_equal(out, [0.0, 0.5])
  out = jaxloss.checked(jaxloss.poly_loss_cross_entropy)(
      jnp.zeros((2, 2)), jnp.array([[9.0, 0.0], [1.0, 0.0]]),
      where=jnp.array([False, True]))
  np.testing.assert_allclose(out, [0.0, np.log(2) + 1.0], rtol=1e-6)
