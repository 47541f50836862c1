"""jaxloss: loss functions for JAX, exact at the edges and fast under jit."""

from jaxloss._activations import log_sigmoid as log_sigmoid
from jaxloss._activations import log_softmax as log_softmax
from jaxloss._activations import sigmoid as sigmoid
from jaxloss._activations import softmax as softmax
from jaxloss._binary import binary_cross_entropy as binary_cross_entropy
from jaxloss._binary import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxloss._binary import sigmoid_focal_loss as sigmoid_focal_loss
from jaxloss._checked import CheckError as CheckError
from jaxloss._checked import checked as checked
from jaxloss._multiclass import nll_loss as nll_loss
from jaxloss._multiclass import softmax_cross_entropy as softmax_cross_entropy
from jaxloss._multiclass import softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels

# Catalogue: classification, margins, focal, KL divergences, sparsemax.
from jaxloss._classification import binary_focal_cross_entropy as binary_focal_cross_entropy
from jaxloss._classification import categorical_focal_cross_entropy as categorical_focal_cross_entropy
from jaxloss._classification import categorical_generalized_cross_entropy as categorical_generalized_cross_entropy
from jaxloss._classification import categorical_hinge as categorical_hinge
from jaxloss._classification import hinge_loss as hinge_loss
from jaxloss._classification import multi_margin_loss as multi_margin_loss
from jaxloss._classification import multiclass_hinge_loss as multiclass_hinge_loss
from jaxloss._classification import multiclass_perceptron_loss as multiclass_perceptron_loss
from jaxloss._classification import multilabel_margin_loss as multilabel_margin_loss
from jaxloss._classification import multilabel_soft_margin_loss as multilabel_soft_margin_loss
from jaxloss._classification import perceptron_loss as perceptron_loss
from jaxloss._classification import poly_loss_cross_entropy as poly_loss_cross_entropy
from jaxloss._classification import ranking_softmax_loss as ranking_softmax_loss
from jaxloss._classification import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from jaxloss._classification import smooth_labels as smooth_labels
from jaxloss._classification import soft_margin_loss as soft_margin_loss
from jaxloss._classification import squared_hinge as squared_hinge
from jaxloss._divergence import convex_kl_divergence as convex_kl_divergence
from jaxloss._divergence import generalized_kl_divergence as generalized_kl_divergence
from jaxloss._divergence import kl_div as kl_div
from jaxloss._divergence import kl_divergence as kl_divergence
from jaxloss._divergence import kl_divergence_with_log_targets as kl_divergence_with_log_targets
from jaxloss._sparsemax import make_fenchel_young_loss as make_fenchel_young_loss
from jaxloss._sparsemax import multiclass_sparsemax_loss as multiclass_sparsemax_loss
from jaxloss._sparsemax import sparsemax as sparsemax
from jaxloss._sparsemax import sparsemax_loss as sparsemax_loss

# Catalogue: CTC and the registry.
from jaxloss import nn as nn
from jaxloss._ctc import ctc_loss as ctc_loss
from jaxloss._ctc import ctc_loss_with_forward_probs as ctc_loss_with_forward_probs
from jaxloss._registry import get as get
from jaxloss._registry import names as names

# Catalogue: regression, distances, segmentation, contrastive, torch and Keras.
from jaxloss._embedding import circle_loss as circle_loss
from jaxloss._embedding import cosine_distance as cosine_distance
from jaxloss._embedding import cosine_embedding_loss as cosine_embedding_loss
from jaxloss._embedding import cosine_similarity as cosine_similarity
from jaxloss._embedding import hinge_embedding_loss as hinge_embedding_loss
from jaxloss._embedding import margin_ranking_loss as margin_ranking_loss
from jaxloss._embedding import ntxent as ntxent
from jaxloss._embedding import pairwise_distance as pairwise_distance
from jaxloss._embedding import triplet_margin_loss as triplet_margin_loss
from jaxloss._embedding import triplet_margin_with_distance_loss as triplet_margin_with_distance_loss
from jaxloss._regression import gaussian_nll_loss as gaussian_nll_loss
from jaxloss._regression import huber_loss as huber_loss
from jaxloss._regression import l1_loss as l1_loss
from jaxloss._regression import l2_loss as l2_loss
from jaxloss._regression import log_cosh as log_cosh
from jaxloss._regression import mean_absolute_percentage_error as mean_absolute_percentage_error
from jaxloss._regression import mean_squared_logarithmic_error as mean_squared_logarithmic_error
from jaxloss._regression import mse_loss as mse_loss
from jaxloss._regression import poisson as poisson
from jaxloss._regression import poisson_nll_loss as poisson_nll_loss
from jaxloss._regression import smooth_l1_loss as smooth_l1_loss
from jaxloss._regression import squared_error as squared_error
from jaxloss._segmentation import binary_dice_loss as binary_dice_loss
from jaxloss._segmentation import dice_loss as dice_loss
from jaxloss._segmentation import multiclass_generalized_dice_loss as multiclass_generalized_dice_loss
from jaxloss._segmentation import tversky_loss as tversky_loss

# Fused linear + cross entropy.
from jaxloss._linear import linear_softmax_cross_entropy as linear_softmax_cross_entropy

# Fused linear distillation.
from jaxloss._distillation import linear_distillation_loss as linear_distillation_loss

__version__ = "0.1.0"

__all__ = tuple(sorted(
    name for name, value in globals().items()
    if not name.startswith("_") and callable(value)))
