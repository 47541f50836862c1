"""Inputs for every loss of the catalogue, at any batch size.

``SPECS`` gives each loss its positional arguments as ``(kind, shape)``, where
a shape starting with ``"B"`` has the batch as its leading axis and any other
shape (a kernel, a per-class weight) is shared by the whole batch. ``inputs``
draws them: float32 (or int32) arrays from a seeded NumPy generator.
"""

import jax.numpy as jnp
import numpy as np

import jaxloss

C, D, T = 5, 3, 6

SPECS = {
    "binary_cross_entropy": ([("probs", ("B", C)), ("binary", ("B", C))],
                             {}),
    "binary_dice_loss": ([("real", ("B", 3, 1)), ("binary", ("B", 3, 1))],
                         {}),
    "binary_focal_cross_entropy": ([("probs", ("B", C)),
                                    ("binary", ("B", C))], {}),
    "categorical_focal_cross_entropy": (
        [("real", ("B", C)), ("onehot", ("B", C))], {"from_logits": True}),
    "categorical_generalized_cross_entropy": (
        [("simplex", ("B", C)), ("int", ("B",))], {}),
    "categorical_hinge": ([("real", ("B", C)), ("onehot", ("B", C))], {}),
    "circle_loss": ([("scores", ("B", 2)), ("scores", ("B", 3))], {}),
    "convex_kl_divergence": ([("unit", ("B", C)), ("pos", ("B", C))], {}),
    "cosine_distance": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "cosine_embedding_loss": (
        [("real", ("B", C)), ("real", ("B", C)), ("sign", ("B",))], {}),
    "cosine_similarity": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "ctc_loss": ([("real", ("B", T, C)), ("zeros", ("B", T)),
                  ("ctc_labels", ("B", 2)), ("zeros", ("B", 2))], {}),
    "ctc_loss_with_forward_probs": (
        [("real", ("B", T, C)), ("zeros", ("B", T)),
         ("ctc_labels", ("B", 2)), ("zeros", ("B", 2))], {}),
    "dice_loss": ([("real", ("B", 3, C)), ("onehot", ("B", 3, C))], {}),
    "gaussian_nll_loss": ([("real", ("B", C)), ("real", ("B", C)),
                           ("pos", ("B", C))], {}),
    "generalized_kl_divergence": ([("unit", ("B", C)), ("pos", ("B", C))],
                                  {}),
    "hinge_embedding_loss": ([("real", ("B", C)), ("sign", ("B", C))], {}),
    "hinge_loss": ([("real", ("B", C)), ("sign", ("B", C))], {}),
    "huber_loss": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "kl_div": ([("logprob", ("B", C)), ("simplex", ("B", C))], {}),
    "kl_divergence": ([("logprob", ("B", C)), ("simplex", ("B", C))], {}),
    "kl_divergence_with_log_targets": (
        [("logprob", ("B", C)), ("logprob", ("B", C))], {}),
    "l1_loss": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "l2_loss": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "linear_distillation_loss": (
        [("real", ("B", D)), ("unit", (D, C)), ("constant", ("B", D)),
         ("constant_unit", (D, C))], {}),
    "linear_softmax_cross_entropy": (
        [("real", ("B", D)), ("unit", (D, C)), ("int", ("B",))], {}),
    "log_cosh": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "margin_ranking_loss": (
        [("real", ("B", C)), ("real", ("B", C)), ("sign", ("B", C))], {}),
    "mean_absolute_percentage_error": (
        [("real", ("B", C)), ("away_from_zero", ("B", C))], {}),
    "mean_squared_logarithmic_error": ([("pos", ("B", C)),
                                        ("pos", ("B", C))], {}),
    "mse_loss": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "multi_margin_loss": ([("real", ("B", C)), ("int", ("B",))], {}),
    "multiclass_generalized_dice_loss": (
        [("real", ("B", 3, C)), ("onehot", ("B", 3, C))], {}),
    "multiclass_hinge_loss": ([("real", ("B", C)), ("int", ("B",))], {}),
    "multiclass_perceptron_loss": ([("real", ("B", C)), ("int", ("B",))],
                                   {}),
    "multiclass_sparsemax_loss": ([("real", ("B", C)), ("int", ("B",))], {}),
    "multilabel_margin_loss": ([("real", ("B", C)),
                                ("multilabel", ("B", C))], {}),
    "multilabel_soft_margin_loss": ([("real", ("B", C)),
                                     ("binary", ("B", C))], {}),
    "nll_loss": ([("logprob", ("B", C)), ("int", ("B",))], {}),
    "ntxent": ([("real", ("B", D)), ("groups", ("B",))], {}),
    "perceptron_loss": ([("real", ("B", C)), ("sign", ("B", C))], {}),
    "poisson": ([("pos", ("B", C)), ("counts", ("B", C))], {}),
    "poisson_nll_loss": ([("unit", ("B", C)), ("counts", ("B", C))], {}),
    "poly_loss_cross_entropy": ([("real", ("B", C)), ("simplex", ("B", C))],
                                {}),
    "ranking_softmax_loss": ([("real", ("B", C)), ("binary", ("B", C))], {}),
    "safe_softmax_cross_entropy": ([("real", ("B", C)),
                                    ("simplex", ("B", C))], {}),
    "sigmoid_binary_cross_entropy": ([("real", ("B", C)),
                                      ("binary", ("B", C))], {}),
    "sigmoid_focal_loss": ([("real", ("B", C)), ("binary", ("B", C))], {}),
    "smooth_l1_loss": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "soft_margin_loss": ([("real", ("B", C)), ("sign", ("B", C))], {}),
    "softmax_cross_entropy": ([("real", ("B", C)), ("simplex", ("B", C))],
                              {}),
    "softmax_cross_entropy_with_integer_labels": (
        [("real", ("B", C)), ("int", ("B",))], {}),
    "sparsemax_loss": ([("real", ("B", C)), ("binary", ("B", C))], {}),
    "squared_error": ([("real", ("B", C)), ("real", ("B", C))], {}),
    "squared_hinge": ([("real", ("B", C)), ("sign", ("B", C))], {}),
    "triplet_margin_loss": (
        [("real", ("B", C)), ("real", ("B", C)), ("real", ("B", C))], {}),
    "triplet_margin_with_distance_loss": (
        [("real", ("B", C)), ("real", ("B", C)), ("real", ("B", C))], {}),
    "tversky_loss": ([("probs", ("B", C)), ("binary", ("B", C))],
                     {"axis": 1}),
}


def draw(kind, shape, rng, scale=1.0):
  """One argument of a kind, as a NumPy array."""
  # "constant" and "constant_unit" are drawn as "real" and "unit": inputs
  # the loss holds constant (a distillation's teacher), never differentiated.
  if kind in ("real", "constant"):
    return rng.normal(size=shape) * scale
  if kind in ("unit", "constant_unit"):
    return rng.normal(size=shape)
  if kind == "away_from_zero":
    return rng.choice([-1, 1], size=shape) * rng.uniform(0.5, 2, shape)
  if kind == "probs":
    return rng.uniform(1e-3, 1 - 1e-3, shape)
  if kind == "pos":
    return rng.uniform(0.1, 2.0, shape)
  if kind == "counts":
    return rng.integers(0, 4, shape).astype(np.float32)
  if kind == "scores":
    return rng.uniform(-1, 1, shape)
  if kind == "binary":
    return rng.integers(0, 2, shape).astype(np.float32)
  if kind == "sign":
    return rng.choice([-1.0, 1.0], size=shape)
  if kind == "zeros":
    return np.zeros(shape, np.float32)
  if kind == "int":
    return rng.integers(0, C, shape).astype(np.int32)
  if kind == "groups":
    # Every group twice or more, so every row has a positive pair.
    return (np.arange(shape[0]) % max(shape[0] // 2, 1)).astype(np.int32)
  if kind == "ctc_labels":
    return rng.integers(1, C, shape).astype(np.int32)
  if kind == "onehot":
    return np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
  if kind == "simplex":
    return rng.dirichlet(np.ones(shape[-1]), shape[:-1])
  if kind == "logprob":
    x = rng.normal(size=shape) * scale
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.sum(np.exp(x - top), -1, keepdims=True))
  if kind == "multilabel":
    out = np.full(shape, -1, np.int32)
    for row in np.ndindex(shape[:-1]):
      k = rng.integers(1, shape[-1])
      out[row][:k] = rng.permutation(shape[-1])[:k]
    return out
  raise AssertionError(kind)


def batched(name):
  """Whether each positional argument of ``name`` carries the batch."""
  return tuple(shape[:1] == ("B",) for _, shape in SPECS[name][0])


def inputs(name, batch, seed=0, dtype=jnp.float32):
  """``name``'s positional arguments for a batch of ``batch`` examples."""
  rng = np.random.default_rng(seed)
  out = []
  for kind, shape in SPECS[name][0]:
    shape = tuple(batch if s == "B" else s for s in shape)
    x = np.asarray(draw(kind, shape, rng))
    out.append(jnp.asarray(x, jnp.int32 if x.dtype.kind in "iu" else dtype))
  return tuple(out)


def loss(name):
  """``name``'s function with its table keywords bound."""
  f = jaxloss.get(name)
  kwargs = SPECS[name][1]
  return lambda *args, **more: f(*args, **kwargs, **more)
