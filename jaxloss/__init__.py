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

# Catalogue: CTC and the registry.

# Catalogue: regression, distances, segmentation, contrastive, torch and Keras.

# Fused linear + cross entropy.

__version__ = "0.1.0"

__all__ = tuple(sorted(
    name for name, value in globals().items()
    if not name.startswith("_") and callable(value)))
