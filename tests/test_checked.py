import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

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


# One case per value check: (loss, arguments, keywords, expected message).
# Every case runs in one compiled program (a lax.switch over the cases, see
# _cases_program), so that the file compiles a handful of programs, not one
# per case.
_NAN = float("nan")
_INF = float("inf")
VALUE_CHECKS = [
    (jaxloss.binary_cross_entropy, ([[0.5, 0.5], [1.5, 0.5]], [[0.0] * 2] * 2),
     {}, r"binary_cross_entropy: probs must be in \[0, 1\]; first offending "
     r"element probs\[1, 0\] = 1.5"),
    (jaxloss.sigmoid_binary_cross_entropy, ([0.0, _NAN], [0.0, 0.0]), {},
     r"sigmoid_binary_cross_entropy: logits must not be NaN; first offending "
     r"element logits\[1\] = nan"),
    (jaxloss.sigmoid_focal_loss, ([0.0, 0.0], [2.0, 0.0]), {},
     r"sigmoid_focal_loss: labels must be in \[0, 1\]; first offending "
     r"element labels\[0\] = 2"),
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
    (jaxloss.multiclass_hinge_loss, ([[0.0, 1.0], [_NAN, 0.0]], [1, 0]), {},
     r"multiclass_hinge_loss: scores must not be NaN; first offending "
     r"element scores\[1, 0\] = nan"),
    (jaxloss.multiclass_perceptron_loss, ([[0.0, 1.0]] * 2, [-1, 0]), {},
     r"multiclass_perceptron_loss: labels must be in \[0, 2\); first "
     r"offending element labels\[0\] = -1"),
    (jaxloss.multi_margin_loss, ([[0.0, 1.0, 2.0]] * 2, [0, 3]), {},
     r"multi_margin_loss: targets must be in \[0, 3\); first offending "
     r"element targets\[1\] = 3"),
    (jaxloss.multi_margin_loss, ([[0.0, 1.0, _NAN]] * 2, [0, 1]), {},
     r"multi_margin_loss: predictions must not be NaN; first offending "
     r"element predictions\[0, 2\] = nan"),
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
    (jaxloss.poly_loss_cross_entropy, ([[0.0, _NAN]], [[1.0, 0.0]]), {},
     r"poly_loss_cross_entropy: logits must not be NaN or \+inf; first "
     r"offending element logits\[0, 1\] = nan"),
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
    (jaxloss.soft_margin_loss, ([1.0, 2.0, 3.0], [1.0, -1.0, 0.0]), {},
     r"soft_margin_loss: targets must be -1 or 1; first offending element "
     r"targets\[2\] = 0"),
    (jaxloss.soft_margin_loss, ([_NAN, 2.0], [1.0, -1.0]), {},
     r"soft_margin_loss: predictions must not be NaN; first offending "
     r"element predictions\[0\] = nan"),
    (jaxloss.squared_hinge, ([[0.5, 1.0], [0.0, 1.0]], [[1, 0], [-1, 1]]), {},
     r"squared_hinge: targets must be -1 or 1 \(or all of them 0 or 1\); "
     r"first offending element targets\[0, 1\] = 0"),
    (jaxloss.categorical_hinge, ([[0.5, 1.0]], [[2.0, 0.0]]), {},
     r"categorical_hinge: targets must be in \[-1, 1\]; first offending "
     r"element targets\[0, 0\] = 2"),
    (jaxloss.categorical_hinge, ([[0.5, _NAN]], [[1.0, 0.0]]), {},
     r"categorical_hinge: predictions must not be NaN; first offending "
     r"element predictions\[0, 1\] = nan"),
    (jaxloss.ranking_softmax_loss, ([[0.0, 1.0, 2.0]], [[1.0, -1.0, 0.0]]),
     {}, r"ranking_softmax_loss: labels must be non-negative \(relevance\); "
     r"first offending element labels\[0, 1\] = -1"),
    (jaxloss.ranking_softmax_loss, ([[0.0, _NAN, 2.0]], [[1.0, 0.0, 0.0]]),
     {}, r"ranking_softmax_loss: logits must not be NaN; first offending "
     r"element logits\[0, 1\] = nan"),
    (jaxloss.safe_softmax_cross_entropy, ([[0.0, 1.0]], [[1.5, 0.0]]), {},
     r"safe_softmax_cross_entropy: labels must be in \[0, 1\]; first "
     r"offending element labels\[0, 0\] = 1.5"),
    (jaxloss.softmax_cross_entropy, ([[0.0, 1.0]] * 2,
                                     [[1.0, 0.0], [-0.5, 1.5]]), {},
     r"softmax_cross_entropy: labels must be in \[0, 1\]; first offending "
     r"element labels\[1, 0\] = -0.5"),
    (jaxloss.softmax_cross_entropy, ([[0.0, _INF]], [[1.0, 0.0]]), {},
     r"softmax_cross_entropy: logits must not be NaN or \+inf; first "
     r"offending element logits\[0, 1\] = inf"),
    # Class axis first: the index is in the caller's layout.
    (jaxloss.softmax_cross_entropy, ([[0.0, 1.0, 2.0]] * 2,
                                     [[0.0, 0.5, 0.5], [1.0, 0.5, 2.0]]),
     {"axis": 0},
     r"softmax_cross_entropy: labels must be in \[0, 1\]; first offending "
     r"element labels\[1, 2\] = 2"),
    (jaxloss.nll_loss, ([[-1.0, -0.5], [0.5, -1.0]], [0, 1]), {},
     r"nll_loss: log_probs must be log-probabilities \(<= 0, not NaN\); "
     r"first offending element log_probs\[1, 0\] = 0.5"),
    (jaxloss.nll_loss, ([[-1.0, -0.5], [-0.5, -1.0]], [0, 2]), {},
     r"nll_loss: labels must be in \[0, 2\); first offending element "
     r"labels\[1\] = 2"),
    (jaxloss.sparsemax_loss, ([0.0, 1.0], [1.0, 3.0]), {},
     r"sparsemax_loss: labels must be in \[0, 1\]; first offending element "
     r"labels\[1\] = 3"),
    (jaxloss.sparsemax_loss, ([_NAN, 1.0], [1.0, 0.0]), {},
     r"sparsemax_loss: logits must not be NaN; first offending element "
     r"logits\[0\] = nan"),
    (jaxloss.multiclass_sparsemax_loss, ([[0.0, 1.0]], [5]), {},
     r"multiclass_sparsemax_loss: labels must be in \[0, 2\); first "
     r"offending element labels\[0\] = 5"),
    (jaxloss.categorical_generalized_cross_entropy,
     ([[0.5, 0.5], [1.25, -0.25]], [0, 1]), {},
     r"categorical_generalized_cross_entropy: probs must be in \[0, 1\]; "
     r"first offending element probs\[1, 0\] = 1.25"),
    (jaxloss.categorical_generalized_cross_entropy, ([[0.5, 0.5]] * 2, [0, 2]),
     {}, r"categorical_generalized_cross_entropy: labels must be in \[0, 2\);"
     r" first offending element labels\[1\] = 2"),
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
    # Regression.
    (jaxloss.squared_error, ([0.0, _NAN], [0.0, 0.0]), {},
     r"squared_error: predictions must not be NaN; first offending element "
     r"predictions\[1\] = nan"),
    (jaxloss.mse_loss, ([[0.0, 1.0]], [[_NAN, 0.0]]), {},
     r"mse_loss: targets must not be NaN; first offending element "
     r"targets\[0, 0\] = nan"),
    (jaxloss.log_cosh, ([1.0, 2.0, _NAN],), {},
     r"log_cosh: predictions must not be NaN; first offending element "
     r"predictions\[2\] = nan"),
    # Traced hyperparameters: checked here (concrete ones at trace time).
    (jaxloss.huber_loss, ([0.0, 1.0], [0.0, 0.0]),
     {"delta": jnp.float32(-1.0)},
     r"huber_loss: delta must be in \(0, inf\); got -1"),
    (jaxloss.poisson_nll_loss, ([0.0, 1.0], [1.0, -2.0]), {},
     r"poisson_nll_loss: targets must be non-negative; first offending "
     r"element targets\[1\] = -2"),
    (jaxloss.poisson_nll_loss, ([1.0, -0.5], [1.0, 2.0]),
     {"log_input": False},
     r"poisson_nll_loss: predictions must be non-negative; first offending "
     r"element predictions\[1\] = -0.5"),
    (jaxloss.poisson, ([-1.0, 1.0], [1.0, 2.0]), {},
     r"poisson: predictions must be non-negative; first offending element "
     r"predictions\[0\] = -1"),
    (jaxloss.poisson, ([1.0, 1.0], [1.0, -2.0]), {},
     r"poisson: targets must be non-negative; first offending element "
     r"targets\[1\] = -2"),
    (jaxloss.gaussian_nll_loss, ([0.0, 1.0], [0.0, 0.0], [1.0, -0.5]), {},
     r"gaussian_nll_loss: var must be non-negative; first offending element "
     r"var\[1\] = -0.5"),
    (jaxloss.gaussian_nll_loss, ([0.0, 1.0], [0.0, 0.0], [_NAN, 1.0]), {},
     r"gaussian_nll_loss: var must be non-negative; first offending element "
     r"var\[0\] = nan"),
    # Embeddings.
    (jaxloss.margin_ranking_loss, ([1.0, 2.0], [0.0, 0.0], [1.0, 0.0]), {},
     r"margin_ranking_loss: target must be -1 or 1; first offending element "
     r"target\[1\] = 0"),
    (jaxloss.margin_ranking_loss, ([1.0, _NAN], [0.0, 0.0], [1.0, 1.0]), {},
     r"margin_ranking_loss: input1 must not be NaN; first offending element "
     r"input1\[1\] = nan"),
    (jaxloss.hinge_embedding_loss, ([0.5, 1.0], [1, 2]), {},
     r"hinge_embedding_loss: targets must be -1 or 1; first offending "
     r"element targets\[1\] = 2"),
    (jaxloss.hinge_embedding_loss, ([_NAN, 1.0], [1, -1]), {},
     r"hinge_embedding_loss: predictions must not be NaN; first offending "
     r"element predictions\[0\] = nan"),
    (jaxloss.cosine_embedding_loss, ([[1.0, 0.0], [0.0, 1.0]],
                                     [[1.0, 0.0], [0.0, 1.0]], [1, 0]), {},
     r"cosine_embedding_loss: target must be -1 or 1; first offending "
     r"element target\[1\] = 0"),
    (jaxloss.cosine_similarity, ([[1.0, 0.0]], [[0.0, _NAN]]), {},
     r"cosine_similarity: targets must not be NaN; first offending element "
     r"targets\[0, 1\] = nan"),
    (jaxloss.cosine_distance, ([[_NAN, 0.0]], [[0.0, 1.0]]), {},
     r"cosine_distance: predictions must not be NaN"),
    (jaxloss.triplet_margin_loss, ([[0.0, 1.0]], [[0.0, 1.0]], [[1.0, _NAN]]),
     {}, r"triplet_margin_loss: negatives must not be NaN; first offending "
     r"element negatives\[0, 1\] = nan"),
    (jaxloss.triplet_margin_with_distance_loss, ([[_NAN, 1.0]], [[0.0, 1.0]],
                                                 [[1.0, 0.0]]), {},
     r"triplet_margin_with_distance_loss: anchor must not be NaN; first "
     r"offending element anchor\[0, 0\] = nan"),
    (jaxloss.triplet_margin_loss, ([[0.0, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]]),
     {"margin": jnp.float32(-0.5), "distance": "torch"},
     r"triplet_margin_loss: margin must be positive with distance='torch'; "
     r"got -0.5"),
    (jaxloss.circle_loss, ([[0.5, 0.9]], [[0.1, _NAN]]), {},
     r"circle_loss: negative_scores must not be NaN; first offending "
     r"element negative_scores\[0, 1\] = nan"),
    (jaxloss.ntxent, ([[1.0, 0.0], [_NAN, 1.0]], [0, 0]), {},
     r"ntxent: embeddings must not be NaN; first offending element "
     r"embeddings\[1, 0\] = nan"),
    # Segmentation.
    (jaxloss.dice_loss, ([[[0.0, 1.0], [1.0, 0.0]]],
                         [[[1.0, 0.0], [2.0, 0.0]]]), {},
     r"dice_loss: targets must be in \[0, 1\]; first offending element "
     r"targets\[0, 1, 0\] = 2"),
    (jaxloss.dice_loss, ([[[0.0, 1.5], [1.0, 0.0]]],
                         [[[1.0, 0.0], [1.0, 0.0]]]), {"apply_softmax": False},
     r"dice_loss: predictions must be probabilities in \[0, 1\]; first "
     r"offending element predictions\[0, 0, 1\] = 1.5"),
    (jaxloss.dice_loss, ([[[0.25, 0.25], [1.0, 0.0]]],
                         [[[1.0, 0.0], [1.0, 0.0]]]), {"apply_softmax": False},
     r"dice_loss: predictions.sum\(-1\) must be 1 with apply_softmax=False "
     r"\(probabilities over the classes\); first offending element "
     r"predictions.sum\(-1\)\[0, 0\] = 0.5"),
    (jaxloss.dice_loss, ([[[0.0, _NAN], [1.0, 0.0]]],
                         [[[1.0, 0.0], [1.0, 0.0]]]), {},
     r"dice_loss: predictions must not be NaN"),
    (jaxloss.binary_dice_loss, ([[0.5, -0.25]], [[1.0, 0.0]]),
     {"apply_sigmoid": False},
     r"binary_dice_loss: predictions must be probabilities in \[0, 1\]; "
     r"first offending element predictions\[0, 1\] = -0.25"),
    (jaxloss.multiclass_generalized_dice_loss, ([[[0.0, 1.0]]],
                                                [[[-1.0, 1.0]]]), {},
     r"multiclass_generalized_dice_loss: targets must be in \[0, 1\]; first "
     r"offending element targets\[0, 0, 0\] = -1"),
    (jaxloss.tversky_loss, ([0.5, 1.25], [1.0, 0.0]), {},
     r"tversky_loss: predictions must be probabilities in \[0, 1\]; first "
     r"offending element predictions\[1\] = 1.25"),
    (jaxloss.tversky_loss, ([0.5, 0.25], [1.0, 3.0]), {},
     r"tversky_loss: targets must be in \[0, 1\]; first offending element "
     r"targets\[1\] = 3"),
    # CTC: 2 sequences, 3 frames, 4 classes, blank 0.
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3] * 2, [[0.0] * 3] * 2,
                        [[1, 2], [1, 4]], [[0.0, 0.0], [0.0, 0.0]]), {},
     r"ctc_loss: labels must be in \[0, 4\) and not blank_id \(0\) where not "
     r"padded; first offending element labels\[1, 1\] = 4"),
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3] * 2, [[0.0] * 3] * 2,
                        [[1, 2], [3, 1]], [[0.0, 0.0], [0.0, 0.0]]),
     {"blank_id": 3},
     r"ctc_loss: labels must be in \[0, 4\) and not blank_id \(3\) where not "
     r"padded; first offending element labels\[1, 0\] = 3"),
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3] * 2, [[0.0] * 3] * 2,
                        [[1, 2], [1, 2]], [[0.0, 0.0], [1.0, 0.0]]), {},
     r"ctc_loss: label_paddings must pad only the end of each row \(1s after "
     r"the 0s\); first offending element label_paddings\[1, 1\] = 0"),
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3] * 2, [[0.0] * 3] * 2,
                        [[1, 2], [1, 2]], [[0.0, 2.0], [0.0, 0.0]]), {},
     r"ctc_loss: label_paddings must be 0 \(kept\) or 1 \(padded\); first "
     r"offending element label_paddings\[0, 1\] = 2"),
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3] * 2, [[0.0, 0.0, 0.5]] * 2,
                        [[1, 2], [1, 2]], [[0.0, 0.0], [0.0, 0.0]]), {},
     r"ctc_loss: logit_paddings must be 0 \(kept\) or 1 \(padded\); first "
     r"offending element logit_paddings\[0, 2\] = 0.5"),
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3,
                         [[0.0] * 4] * 2 + [[0.0, _NAN, 0.0, 0.0]]],
                        [[0.0] * 3] * 2, [[1, 2], [1, 2]],
                        [[0.0, 0.0], [0.0, 0.0]]), {},
     r"ctc_loss: logits must not be NaN on frames not padded; first "
     r"offending element logits\[1, 2, 1\] = nan"),
]


def _arrays(args):
  return tuple(jnp.asarray(a) if isinstance(a, list) else a for a in args)


def _total(loss, args, kwargs):
  """A case as a scalar: every case fits one lax.switch."""
  out = loss(*_arrays(args), **kwargs)
  return jnp.sum(jnp.asarray(out, jnp.float32))


# checkify's error state grows with the number of checks in a program, and
# compile time faster than that: programs of a few cases each compile fastest.
CHUNK = 10


@functools.cache
def _cases_program(chunk):
  """VALUE_CHECKS cases ``chunk * CHUNK`` on, as one jitted lax.switch,
  wrapped in checked."""
  branches = [functools.partial(_total, loss, args, kwargs)
              for loss, args, kwargs, _ in
              VALUE_CHECKS[chunk * CHUNK:(chunk + 1) * CHUNK]]
  return jaxloss.checked(jax.jit(lambda i: lax.switch(i, branches)))


@pytest.mark.parametrize(
    "case", range(len(VALUE_CHECKS)),
    ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(VALUE_CHECKS)])
def test_value_check_under_jit(case):
  with pytest.raises(jaxloss.CheckError, match=VALUE_CHECKS[case][3]):
    _cases_program(case // CHUNK)(case % CHUNK)


# Valid input at the edges of the valid ranges: each passes, with exactly the
# unchecked result. (loss, arguments, keywords).
_MASK = [True, False]
VALID = [
    (jaxloss.hinge_loss, ([0.0, 3.0], [1.0, -1.0]), {}),
    (jaxloss.hinge_loss, ([_NAN, 0.5], [0.0, 1.0]), {"where": [False, True]}),
    (jaxloss.perceptron_loss, ([0.0, -3.0], [-1.0, 1.0]), {}),
    (jaxloss.multiclass_hinge_loss, ([[0.0, 1.0]] * 2, [0, 1]), {}),
    (jaxloss.multiclass_hinge_loss, ([[0.0, 1.0], [_NAN, 0.0]], [0, 9]),
     {"where": _MASK}),
    (jaxloss.multi_margin_loss, ([[0.0, 1.0, 2.0]] * 2, [0, 2]), {}),
    (jaxloss.multilabel_margin_loss, ([[0.0, 1.0, 2.0, 3.0]],
                                      [[3, 0, -1, 7]]), {}),
    (jaxloss.poly_loss_cross_entropy, ([[0.0, 1.0]], [[1.0, 0.0]]), {}),
    (jaxloss.poly_loss_cross_entropy, ([[0.0, 0.0], [_NAN, 0.0]],
                                       [[1.0, 0.0], [9.0, 0.0]]),
     {"where": _MASK}),
    (jaxloss.multilabel_soft_margin_loss, ([[0.0, 1.0]], [[1.0, 0.0]]), {}),
    (jaxloss.binary_focal_cross_entropy, ([[0.0, 1.0]], [[1.0, 0.0]]), {}),
    (jaxloss.categorical_focal_cross_entropy, ([[0.0, 1.0]], [[0.0, 1.0]]),
     {}),
    (jaxloss.binary_cross_entropy, ([0.5, 7.0], [0.0, 0.0]),
     {"where": _MASK}),
    (jaxloss.sigmoid_binary_cross_entropy, ([-_INF, _INF, 0.0],
                                            [0.0, 1.0, 0.5]), {}),
    (jaxloss.sigmoid_focal_loss, ([-_INF, _INF], [0.0, 1.0]), {}),
    (jaxloss.soft_margin_loss, ([1e4, -1e4], [1, -1]), {}),
    (jaxloss.squared_hinge, ([[0.5, 1.0]], [[1, 0]]), {}),
    (jaxloss.squared_hinge, ([[0.5, 1.0]], [[1, -1]]), {}),
    (jaxloss.categorical_hinge, ([[0.5, 1.0]], [[1, 0]]), {}),
    (jaxloss.categorical_hinge, ([[0.5, 1.0]], [[1, -1]]), {}),
    # Graded relevance, a -inf score with label 0, a NaN masked out.
    (jaxloss.ranking_softmax_loss, ([[0.0, -_INF, 2.0, _NAN]],
                                    [[2.0, 0.0, 1.0, -1.0]]),
     {"where": [[True, True, True, False]], "reduce_fn": None}),
    # Smoothed labels, rows not summing to 1, -inf logits with zero labels.
    (jaxloss.softmax_cross_entropy, ([[0.0, 1.0, 2.0], [0.0, -_INF, 1.0]],
                                     [[0.9, 0.05, 0.05], [1.0, 0.0, 1.0]]),
     {}),
    (jaxloss.softmax_cross_entropy, ([[0.0, 1.0], [_NAN, _INF]],
                                     [[1.0, 0.0], [-3.0, 7.0]]),
     {"where": _MASK}),
    (jaxloss.safe_softmax_cross_entropy, ([[0.0, -_INF]], [[1.0, 0.0]]), {}),
    (jaxloss.nll_loss, ([[-_INF, 0.0], [5.0, _NAN]], [1, -100]),
     {"ignore_index": -100}),
    (jaxloss.sparsemax_loss, ([-9.0, 9.0], [0.0, 1.0]), {}),
    # A zero probability at the label is valid (loss 1 / q); a dropped row
    # may hold anything.
    (jaxloss.categorical_generalized_cross_entropy,
     ([[0.0, 1.0], [_NAN, 0.5]], [0, 9]), {"where": _MASK}),
    (jaxloss.kl_divergence, ([[-_INF, 0.0]], [[0.0, 1.0]]), {}),
    (jaxloss.kl_divergence, ([[_NAN, -1.0], [-1.0, -1.0]],
                             [[-5.0, 0.5], [0.5, 0.5]]),
     {"where": [[False, True], [True, True]]}),
    (jaxloss.kl_divergence_with_log_targets, ([[-1.0, 0.0]],
                                              [[-_INF, 0.0]]), {}),
    (jaxloss.generalized_kl_divergence, ([[0.0, 2.0]], [[0.0, 5.0]]), {}),
    (jaxloss.kl_div, ([[-_INF, 0.0]], [[0.0, 1.0]]), {}),
    (jaxloss.kl_div, ([[-1.0, 0.0]], [[-_INF, 0.0]]), {"log_target": True}),
    # Regression: infinities are not NaN (an infinite error costs inf).
    (jaxloss.squared_error, ([_INF, 1.0], [0.0, 1.0]), {}),
    (jaxloss.huber_loss, ([0.0, 3.0],), {"delta": 0.5}),
    (jaxloss.poisson_nll_loss, ([0.0, 2.0], [0.0, 3.5]),
     {"log_input": False, "full": True}),
    (jaxloss.poisson_nll_loss, ([-_INF, 1.0], [0.0, 0.0]), {}),
    (jaxloss.poisson, ([0.0, 1.0], [0.0, 2.0]), {}),
    (jaxloss.gaussian_nll_loss, ([0.0, 1.0], [0.0, 2.0], [0.0, 1.0]), {}),
    (jaxloss.mean_squared_logarithmic_error, ([-1.0, 1.0], [0.0, -3.0]), {}),
    # Embeddings: signs as integers, masked NaN, scores past 1 by rounding.
    (jaxloss.margin_ranking_loss, ([1.0, 2.0], [0.0, 3.0], [1, -1]), {}),
    (jaxloss.hinge_embedding_loss, ([0.5, 1.5], [1, -1]), {}),
    (jaxloss.cosine_embedding_loss, ([[1.0, 0.0], [0.0, 0.0]],
                                     [[1.0, 0.0], [0.0, 1.0]], [1, -1]), {}),
    (jaxloss.cosine_similarity, ([[1.0, _NAN]], [[1.0, 2.0]]),
     {"where": [[True, False]]}),
    (jaxloss.circle_loss, ([[1.0000001, _NAN]], [[-1.0000001, 0.5]]),
     {"positive_where": [[True, False]]}),
    (jaxloss.ntxent, ([[1.0, 0.0], [0.0, 0.0]], [0, 0]), {}),
    # Segmentation: probabilities at 0 and 1, soft targets.
    (jaxloss.dice_loss, ([[[0.0, 1.0], [1.0, 0.0]]],
                         [[[0.3, 0.7], [1.0, 0.0]]]), {"apply_softmax": False}),
    (jaxloss.binary_dice_loss, ([[0.0, 1.0]], [[1, 0]]),
     {"apply_sigmoid": False}),
    (jaxloss.multiclass_generalized_dice_loss, ([[[-_INF, 1.0]]],
                                                [[[0.0, 1.0]]]), {}),
    (jaxloss.tversky_loss, ([0.0, 1.0], [0.0, 1.0]), {}),
    # CTC: NaN on a padded frame, -inf logits, the last class, padded labels
    # holding anything, boolean paddings.
    (jaxloss.ctc_loss, ([[[0.0, 0.0, 0.0, -_INF]] * 2 + [[_NAN] * 4],
                         [[0.0, 1.0, 2.0, 3.0]] * 3],
                        [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
                        [[1, 9], [3, 3]], [[0.0, 1.0], [0.0, 0.0]]), {}),
    (jaxloss.ctc_loss, ([[[0.0] * 4] * 3], [[False, False, True]], [[2, 0]],
                        [[False, True]]), {}),
]


def _kwargs(kwargs):
  return {k: _arrays([v])[0] for k, v in kwargs.items()}


@functools.cache
def _valid_programs(chunk):
  """VALID cases ``chunk * CHUNK`` on in one program: their results
  unchecked, and under checked."""
  cases = VALID[chunk * CHUNK:(chunk + 1) * CHUNK]

  def run():
    return [loss(*_arrays(args), **_kwargs(kwargs))
            for loss, args, kwargs in cases]

  run = jax.jit(run)
  return run(), jaxloss.checked(run)()


@pytest.mark.parametrize(
    "case", range(len(VALID)),
    ids=[f"{case[0].__name__}-{i}" for i, case in enumerate(VALID)])
def test_valid_edge_input_passes_unchanged(case):
  unchecked, checked = _valid_programs(case // CHUNK)
  np.testing.assert_array_equal(np.asarray(checked[case % CHUNK]),
                                np.asarray(unchecked[case % CHUNK]))


def test_masked_entries_are_not_checked_and_give_the_right_values():
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


def test_checks_compile_to_nothing_outside_checked_in_every_family():
  def f(x, p, y, labels, pad):
    return [
        jaxloss.poisson_nll_loss(x, y, log_input=False),
        jaxloss.gaussian_nll_loss(x, y, p),
        jaxloss.softmax_cross_entropy(x, p),
        jaxloss.nll_loss(-p, labels),
        jaxloss.margin_ranking_loss(x, y, y),
        jaxloss.dice_loss(x[None], p[None]),
        jaxloss.ctc_loss(x[None], pad, labels[None], jnp.zeros_like(pad)),
        jaxloss.soft_margin_loss(x, y),
        jaxloss.ranking_softmax_loss(x, p),
    ]
  args = (jnp.ones((4, 4)), jnp.ones((4, 4)), jnp.ones((4, 4)),
          jnp.ones(4, jnp.int32), jnp.zeros((1, 4)))
  text = jax.jit(f).lower(*args).compile().as_text()
  # The predicates, their argmax and the error formatting are dead code.
  assert "argmax" not in text


def test_checked_under_jit_or_vmap_says_to_go_outside():
  f = jaxloss.checked(lambda x, t: CE(x, t, reduction="mean"))
  x, t = jnp.zeros((2, 3)), jnp.array([0, 1])
  for transform in (jax.jit, jax.vmap):
    with pytest.raises(TypeError, match=r"checked\(<lambda>\) was called "
                       r"under a jax.jit, jax.vmap .*checked\(jax.jit\(fn\)\)"):
      transform(f)(x, t)
  # Differentiation is fine: the verdict is known.
  assert np.all(np.isfinite(jax.grad(f)(x, t)))


def test_ctc_module_traced_lengths_are_checked():
  log_probs = jax.nn.log_softmax(
      jax.random.normal(jax.random.key(0), (6, 2, 4)))
  ctc = jaxloss.nn.CTCLoss(reduction="none")
  concatenated = jaxloss.checked(jax.jit(
      lambda il, tl: ctc(log_probs, jnp.array([1, 2, 3]), il, tl)))
  padded = jaxloss.checked(jax.jit(
      lambda il, tl: ctc(log_probs, jnp.array([[1, 2], [3, 1]]), il, tl)))
  good = concatenated(jnp.array([6, 6]), jnp.array([1, 2]))
  assert np.all(np.isfinite(good))
  for call, lengths, match in [
      (concatenated, ([6, 6], [2, 2]),
       r"target_lengths must add up to the length 3 of the concatenated "
       r"targets \(their sum\); got 4"),
      (concatenated, ([9, 6], [1, 2]),
       r"input_lengths must be in \[0, 6\] .*input_lengths\[0\] = 9"),
      (concatenated, ([-1, 6], [1, 2]),
       r"input_lengths must be in \[0, 6\] .*input_lengths\[0\] = -1"),
      (padded, ([6, 6], [3, 2]),
       r"target_lengths must be in \[0, 2\] .*target_lengths\[0\] = 3")]:
    with pytest.raises(jaxloss.CheckError, match=r"CTCLoss: " + match):
      call(*map(jnp.array, lengths))
