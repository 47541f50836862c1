"""Every jaxloss loss, timed and compile-timed against a baseline.

Each name in ``jaxloss.names()`` is compared with a baseline on the same
inputs: ``optax.losses``' function of the same name where optax has one, and
otherwise (the torch- and Keras-only losses) the plain jnp formula of the
same loss with the same defaults, as a user would write it without jaxloss
(:data:`PLAIN`). Each needs an input builder in :data:`BUILDERS`; a name
without one is listed as "no builder", never silently dropped.

For each loss: the mean of its output (``value``), and that mean with its
gradient with respect to the first argument (``grad``), each timed in
interleaved rounds (every round runs jaxloss, the baseline and torch once, in
a shuffled order, so a shared machine slows them alike; the values' rounds,
then the gradients', so that no value follows a gradient that allocated a
GiB; each at least ``--rounds``, more until half of ``--seconds`` has
passed); medians over rounds, and ``vs_baseline`` the median of per-round
ratios (jaxloss time / baseline time).

Compile time is the wall time of ``jax.jit(f).trace(*args)``, ``.lower()``
and ``.compile()`` (tracing, lowering to StableHLO, XLA's compilation to an
executable; not the first call's execution), for a fresh Python function
``f`` (the mean, or ``jax.value_and_grad`` of it) under a fresh ``jax.jit``,
after ``jax.clear_caches()``: jaxloss's public functions are ``jax.jit``-ed
inside and keep their traces across calls, which would otherwise make every
measurement after the first a cache hit. Every measurement starts that cold,
jaxloss's and the baseline's interleaved in a shuffled order over
``--compile-repeats`` repeats; medians. XLA's persistent compilation cache is
off. The last executables compiled are the ones timed.

``GB/s`` counts the floor traffic (inputs read once for the value; read twice
with the gradient written for ``grad``) and ``of copy`` compares it with a
copy measured in the same run; it is left out for losses that are not
memory-bound (quadratic or sequential ones). Temporaries are XLA's
``memory_analysis()`` of the compiled function. torch columns appear when
torch is installed, for the losses with a torch counterpart; ``vs torch`` is
jaxloss time / torch time (above 1: torch is faster).

``max_rel_diff`` checks that the two compute the same thing: for ``value``
the largest difference of the per-element losses (``reduction="none"``), for
``grad`` of the mean and its gradient, over the baseline's largest
magnitude; ``torch_rel_diff`` the same for torch's mean.

``--reduction mean`` has jaxloss's losses reduce themselves
(``reduction="mean"``, torch's default) instead of returning
``reduction="none"`` for the mean (optax's idiom); the baselines are as
they were. Every loss with a ``reduction`` keyword (``--only`` refuses
others), and of those only where its ``"mean"`` is the mean of its
``"none"`` at the suite's inputs (checked on them before timing; the rest
are listed as not timed, with both numbers).

``--shapes`` picks the set of shapes (:data:`SHAPES`): ``default`` (rows of
256, 1024 classes, ...), ``wide`` (fewer, longer rows and more classes: rows
of 8192, 32768 classes, ...) or ``narrow`` (many short rows: 16 features, 10
classes, ...), all with the same element budget. Results go to
``results/suite-<device>.json`` for the default set and
``results/suite_<shapes>-<device>.json`` for the others.

``--update`` (with ``--only``) measures the losses named and replaces their
rows in the existing results file, which must have been written with the
same settings, keeping every other row: for a change to some losses, the
file then holds each loss as the code now computes it. The file lists each
such run (``updates``: its command and losses) and each row it wrote
carries its command (``measured_by``).

  python benchmarks/suite.py                    # sizes for a CPU
  python benchmarks/suite.py --shapes wide      # the second set of shapes
  python benchmarks/suite.py --device gpu       # 16x larger
  python benchmarks/suite.py --only softmax_cross_entropy,mse_loss
  python benchmarks/suite.py --only dice_loss --update
"""

import argparse
import gc
import inspect
import json
import os
import random
import statistics
import sys
import time
import warnings
from typing import NamedTuple

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# torch's OpenMP threads otherwise spin after each call, on the cores the
# next JAX call needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import common  # noqa: E402
import jaxloss  # noqa: E402
import report  # noqa: E402

# Elements of the main input: 4M on a CPU; --device gpu multiplies by 16.
ELEMENTS = {"cpu": 1 << 22, "gpu": 1 << 26}
# At least this many rounds; fast losses run more, until --seconds.
ROUNDS = {"cpu": 3, "gpu": 20}
NOT_LOSSES = {
    "smooth_labels": "a label transform, not a loss",
    "make_fenchel_young_loss": "a loss factory",
}


class Shapes(NamedTuple):
  """The trailing dimensions of one set of shapes; the rows fill the rest."""
  features: int       # row length of per-element and per-row losses
  classes: int        # classes of the classification losses
  items: int          # list length (ranking); classes of quadratic losses
  image: tuple        # (height, width) of the segmentation losses
  channels: int       # classes of the multiclass segmentation losses
  embeddings: tuple   # (batch, dim) of the contrastive loss, whatever the
                      # element budget: it is quadratic in the batch
  sequences: tuple    # (batch, time, vocabulary, label length) of CTC,
                      # whatever the budget: it is sequential in time
  hidden: int         # input width of the fused linear layer


SHAPES = {
    "default": Shapes(features=256, classes=1024, items=64, image=(64, 64),
                      channels=8, embeddings=(1024, 128),
                      sequences=(16, 128, 64, 32), hidden=256),
    "wide": Shapes(features=8192, classes=32768, items=1024,
                   image=(256, 256), channels=32, embeddings=(512, 1024),
                   sequences=(4, 512, 256, 128), hidden=256),
    "narrow": Shapes(features=16, classes=10, items=8, image=(16, 16),
                     channels=2, embeddings=(1024, 16),
                     sequences=(64, 32, 16, 8), hidden=64),
}


def _rows(elements, width):
  return max(1, elements // width)


def _normal(key, shape, dtype, scale=1.0):
  return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _uniform(key, shape, dtype, low=0.0, high=1.0):
  return jax.random.uniform(key, shape, jnp.float32, low, high).astype(dtype)


def _flat(elements, s):
  return _rows(elements, s.features), s.features


def _classes(elements, s):
  return _rows(elements, s.classes), s.classes


# Input builders: (elements, shapes, dtype, key) -> (args, keywords).

def pairwise(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _flat(elements, s)
  return (_normal(k1, shape, dtype), _normal(k2, shape, dtype)), {}


def positive_pairs(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _flat(elements, s)
  return (_uniform(k1, shape, dtype, 0.0, 2.0),
          _uniform(k2, shape, dtype, 0.0, 2.0)), {}


def signs(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _flat(elements, s)
  return (_normal(k1, shape, dtype),
          jnp.sign(_normal(k2, shape, dtype))), {}


def scores_signs(elements, s, dtype, key):
  """Two scores and a target in {-1, 1}: margin ranking."""
  k1, k2, k3 = jax.random.split(key, 3)
  shape = _flat(elements, s)
  return (_normal(k1, shape, dtype), _normal(k2, shape, dtype),
          jnp.sign(_normal(k3, shape, dtype))), {}


def distances_signs(elements, s, dtype, key):
  (x, y), kw = signs(elements, s, dtype, key)
  return (jnp.abs(x), y), kw


def pairs_row_signs(elements, s, dtype, key):
  """Two batches of vectors and one target in {-1, 1} per row."""
  k1, k2, k3 = jax.random.split(key, 3)
  shape = _flat(elements, s)
  return (_normal(k1, shape, dtype), _normal(k2, shape, dtype),
          jnp.sign(_normal(k3, shape[:1], dtype))), {}


def binary(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _flat(elements, s)
  return (_normal(k1, shape, dtype, 3.0),
          jax.random.bernoulli(k2, 0.3, shape).astype(dtype)), {}


def binary_probabilities(elements, s, dtype, key):
  (x, y), kw = binary(elements, s, dtype, key)
  return (jax.nn.sigmoid(x.astype(jnp.float32)).astype(dtype), y), kw


def gaussian(elements, s, dtype, key):
  (x, y), kw = pairwise(elements, s, dtype, key)
  var = _uniform(jax.random.fold_in(key, 1), x.shape, dtype, 0.1, 2.0)
  return (x, y, var), kw


def rates_counts(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _flat(elements, s)
  rates = _uniform(k1, shape, jnp.float32, 0.1, 3.0)
  return (rates.astype(dtype),
          jax.random.poisson(k2, rates, shape).astype(dtype)), {}


def log_rates_counts(elements, s, dtype, key):
  (rates, counts), kw = rates_counts(elements, s, dtype, key)
  return (jnp.log(rates.astype(jnp.float32)).astype(dtype), counts), kw


def similarities(elements, s, dtype, key):
  """Cosine similarities to positives and to negatives, per anchor."""
  k1, k2 = jax.random.split(key)
  shape = _flat(elements, s)
  return (_uniform(k1, shape, dtype, -1.0, 1.0),
          _uniform(k2, shape, dtype, -1.0, 1.0)), {}


def probabilities(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _classes(elements, s)
  return (_normal(k1, shape, dtype, 3.0),
          jax.nn.softmax(_normal(k2, shape, jnp.float32, 2.0)).astype(dtype)
          ), {}


def log_probabilities(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = _classes(elements, s)
  return (jax.nn.log_softmax(_normal(k1, shape, jnp.float32, 2.0)
                             ).astype(dtype),
          jax.nn.softmax(_normal(k2, shape, jnp.float32, 2.0)).astype(dtype)
          ), {}


def log_both(elements, s, dtype, key):
  (log_p, q), kw = log_probabilities(elements, s, dtype, key)
  return (log_p, jnp.log(q.astype(jnp.float32)).astype(dtype)), kw


def integer_labels(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  n, c = _classes(elements, s)
  return (_normal(k1, (n, c), dtype, 3.0),
          jax.random.randint(k2, (n,), 0, c)), {}


def log_probabilities_integer(elements, s, dtype, key):
  (x, labels), kw = integer_labels(elements, s, dtype, key)
  return (jax.nn.log_softmax(x.astype(jnp.float32)).astype(dtype),
          labels), kw


def one_hot(elements, s, dtype, key):
  (x, labels), kw = integer_labels(elements, s, dtype, key)
  return (x, jax.nn.one_hot(labels, x.shape[-1], dtype=dtype)), kw


def probabilities_one_hot(elements, s, dtype, key):
  (x, y), kw = one_hot(elements, s, dtype, key)
  return (jax.nn.softmax(x.astype(jnp.float32)).astype(dtype), y), kw


def multilabel_indices(elements, s, dtype, key):
  """torch's multilabel layout: up to 8 distinct classes, then -1.

  Quadratic in the classes: ``items`` classes, as many rows as make
  ``elements`` (target, class) pairs.
  """
  k1, k2, k3 = jax.random.split(key, 3)
  c = s.items
  n = _rows(elements, c * c)
  classes = jax.vmap(lambda k: jax.random.permutation(k, c))(
      jax.random.split(k2, n))
  count = jax.random.randint(k3, (n, 1), 1, min(8, c) + 1)
  targets = jnp.where(jnp.arange(c)[None, :] < count, classes, -1)
  return (_normal(k1, (n, c), dtype), targets), {}


def ranking(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  shape = (_rows(elements, s.items), s.items)
  return (_normal(k1, shape, dtype),
          jax.random.bernoulli(k2, 0.1, shape).astype(dtype)), {}


def triplets(elements, s, dtype, key):
  k1, k2, k3 = jax.random.split(key, 3)
  shape = _flat(elements, s)
  return tuple(_normal(k, shape, dtype) for k in (k1, k2, k3)), {}


def segmentation(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  (h, w), c = s.image, s.channels
  b = _rows(elements, h * w * c)
  labels = jax.random.randint(k2, (b, h, w), 0, c)
  return (_normal(k1, (b, h, w, c), dtype),
          jax.nn.one_hot(labels, c, dtype=dtype)), {}


def binary_segmentation(elements, s, dtype, key):
  k1, k2 = jax.random.split(key)
  h, w = s.image
  shape = (_rows(elements, h * w), h, w)
  return (_normal(k1, shape, dtype),
          jax.random.bernoulli(k2, 0.3, shape).astype(dtype)), {}


def binary_segmentation_probabilities(elements, s, dtype, key):
  (x, y), kw = binary_segmentation(elements, s, dtype, key)
  return (jax.nn.sigmoid(x.astype(jnp.float32)).astype(dtype), y), kw


def contrastive(elements, s, dtype, key):
  del elements
  k1, k2 = jax.random.split(key)
  n, d = s.embeddings
  labels = jnp.arange(n) // 2
  return (_normal(k1, (n, d), dtype),
          jax.random.permutation(k2, labels)), {}


def ctc(elements, s, dtype, key):
  del elements
  b, t, k, length = s.sequences
  k1, k2 = jax.random.split(key)
  logits = _normal(k1, (b, t, k), dtype)
  labels = jax.random.randint(k2, (b, length), 1, k)
  return (logits, jnp.zeros((b, t), dtype), labels,
          jnp.zeros((b, length), dtype)), {}


def linear(elements, s, dtype, key):
  """hidden [N, D] @ kernel [D, C], N * C = elements, and integer labels."""
  k1, k2, k3 = jax.random.split(key, 3)
  n, c = _classes(elements, s)
  d = s.hidden
  return (_normal(k1, (n, d), dtype),
          _normal(k2, (d, c), dtype, d ** -0.5),
          jax.random.randint(k3, (n,), 0, c)), {}


def distillation(elements, s, dtype, key):
  """A student's hidden [N, D] and kernel [D, C], N * C = elements, and a
  teacher's twice as wide."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  n, c = _classes(elements, s)
  d = s.hidden
  return (_normal(k1, (n, d), dtype), _normal(k2, (d, c), dtype, d ** -0.5),
          _normal(k3, (n, 2 * d), dtype),
          _normal(k4, (2 * d, c), dtype, (2 * d) ** -0.5)), {}


# name -> (builder, memory-bound)
BUILDERS = {
    # Shared with optax.
    "squared_error": (pairwise, True),
    "l2_loss": (pairwise, True),
    "huber_loss": (pairwise, True),
    "log_cosh": (pairwise, True),
    "cosine_similarity": (pairwise, True),
    "cosine_distance": (pairwise, True),
    "hinge_loss": (signs, True),
    "perceptron_loss": (signs, True),
    "sigmoid_binary_cross_entropy": (binary, True),
    "sigmoid_focal_loss": (binary, True),
    "sparsemax_loss": (binary, True),
    "softmax_cross_entropy": (probabilities, True),
    "safe_softmax_cross_entropy": (probabilities, True),
    "poly_loss_cross_entropy": (one_hot, True),
    "kl_divergence": (log_probabilities, True),
    "convex_kl_divergence": (log_probabilities, True),
    "generalized_kl_divergence": (log_probabilities, True),
    "kl_divergence_with_log_targets": (log_both, True),
    "softmax_cross_entropy_with_integer_labels": (integer_labels, True),
    "multiclass_hinge_loss": (integer_labels, True),
    "multiclass_perceptron_loss": (integer_labels, True),
    "multiclass_sparsemax_loss": (integer_labels, False),
    "ranking_softmax_loss": (ranking, True),
    "triplet_margin_loss": (triplets, True),
    "dice_loss": (segmentation, True),
    "multiclass_generalized_dice_loss": (segmentation, True),
    "binary_dice_loss": (binary_segmentation, True),
    "ntxent": (contrastive, False),
    "ctc_loss": (ctc, False),
    "ctc_loss_with_forward_probs": (ctc, False),
    # torch's.
    "mse_loss": (pairwise, True),
    "l1_loss": (pairwise, True),
    "smooth_l1_loss": (pairwise, True),
    "poisson_nll_loss": (log_rates_counts, True),
    "gaussian_nll_loss": (gaussian, True),
    "nll_loss": (log_probabilities_integer, True),
    "kl_div": (log_probabilities, True),
    "binary_cross_entropy": (binary_probabilities, True),
    "margin_ranking_loss": (scores_signs, True),
    "hinge_embedding_loss": (distances_signs, True),
    "cosine_embedding_loss": (pairs_row_signs, True),
    "triplet_margin_with_distance_loss": (triplets, True),
    "multi_margin_loss": (integer_labels, True),
    "multilabel_margin_loss": (multilabel_indices, False),
    "soft_margin_loss": (signs, True),
    "multilabel_soft_margin_loss": (binary, True),
    # Keras's.
    "mean_absolute_percentage_error": (pairwise, True),
    "mean_squared_logarithmic_error": (positive_pairs, True),
    "poisson": (rates_counts, True),
    "squared_hinge": (signs, True),
    "categorical_hinge": (one_hot, True),
    "binary_focal_cross_entropy": (binary_probabilities, True),
    "categorical_focal_cross_entropy": (probabilities_one_hot, True),
    "tversky_loss": (binary_segmentation_probabilities, True),
    "circle_loss": (similarities, True),
    # jaxloss's own.
    "linear_softmax_cross_entropy": (linear, False),
    "linear_distillation_loss": (distillation, False),
}


def _take(x, labels):
  return jnp.take_along_axis(x, labels[..., None], axis=-1)[..., 0]


def _mse_loss(x, y):
  return (x - y) ** 2


def _l1_loss(x, y):
  # At a tie (x == y, once or twice in 4M normal pairs) JAX's |e|' is 1,
  # jaxloss's (torch's) 0: the one gradient entry that differs.
  return jnp.abs(x - y)


def _smooth_l1_loss(x, y):
  e = jnp.abs(x - y)
  return jnp.where(e < 1.0, 0.5 * e ** 2, e - 0.5)


def _poisson_nll_loss(log_rate, counts):
  return jnp.exp(log_rate) - counts * log_rate


def _gaussian_nll_loss(x, y, var):
  var = jnp.maximum(var, 1e-6)
  return 0.5 * (jnp.log(var) + (x - y) ** 2 / var)


def _nll_loss(log_p, labels):
  return -_take(log_p, labels)


def _kl_div(log_p, q):
  return jax.scipy.special.xlogy(q, q) - q * log_p


def _binary_cross_entropy(p, y):
  return -(y * jnp.maximum(jnp.log(p), -100.0)
           + (1 - y) * jnp.maximum(jnp.log(1 - p), -100.0))


def _margin_ranking_loss(x1, x2, y):
  return jnp.maximum(0.0, -y * (x1 - x2))


def _hinge_embedding_loss(x, y):
  return (jnp.where(y != 1, jnp.maximum(0.0, 1.0 - x), 0.0)
          + jnp.where(y != -1, x, 0.0))


def _cosine_embedding_loss(x1, x2, y):
  cos = jnp.sum(x1 * x2, -1) / jnp.sqrt(
      (jnp.sum(x1 * x1, -1) + 1e-12) * (jnp.sum(x2 * x2, -1) + 1e-12))
  return jnp.where(y == 1, 1 - cos,
                   jnp.where(y == -1, jnp.maximum(0.0, cos), 0.0))


def _triplet_margin_with_distance_loss(a, p, n):
  def distance(u, v):
    return jnp.sqrt(jnp.sum((u - v + 1e-6) ** 2, -1))
  return jnp.maximum(distance(a, p) - distance(a, n) + 1.0, 0.0)


def _multi_margin_loss(x, labels):
  c = x.shape[-1]
  h = jnp.maximum(0.0, 1.0 - _take(x, labels)[..., None] + x)
  others = jnp.arange(c)[None, :] != labels[..., None]
  return jnp.sum(jnp.where(others, h, 0.0), -1) / c


def _multilabel_margin_loss(x, targets):
  c = x.shape[-1]
  listed = jnp.cumprod(targets >= 0, axis=-1).astype(bool)
  safe = jnp.where(listed, targets, 0)
  is_target = jnp.any(
      listed[..., None] & (safe[..., None] == jnp.arange(c)[None, None, :]),
      axis=-2)
  h = jnp.maximum(0.0, 1.0 - jnp.take_along_axis(x, safe, -1)[..., None]
                  + x[..., None, :])
  pairs = listed[..., None] & ~is_target[..., None, :]
  return jnp.sum(jnp.where(pairs, h, 0.0), (-2, -1)) / c


def _soft_margin_loss(x, y):
  return jax.nn.softplus(-y * x)


def _multilabel_soft_margin_loss(x, y):
  return -jnp.mean(y * jax.nn.log_sigmoid(x)
                   + (1 - y) * jax.nn.log_sigmoid(-x), -1)


def _mean_absolute_percentage_error(x, y):
  return 100.0 * jnp.abs(x - y) / jnp.maximum(jnp.abs(y), 1e-7)


def _mean_squared_logarithmic_error(x, y):
  return (jnp.log1p(jnp.maximum(x, 1e-7))
          - jnp.log1p(jnp.maximum(y, 1e-7))) ** 2


def _poisson(rate, counts):
  return rate - counts * jnp.log(rate + 1e-7)


def _squared_hinge(x, y):
  # Keras maps {0, 1} targets to {-1, 1} when the whole array is 0 or 1.
  y = jnp.where(jnp.all((y == 0) | (y == 1)), 2 * y - 1, y)
  return jnp.mean(jnp.maximum(0.0, 1.0 - y * x) ** 2, -1)


def _categorical_hinge(x, y):
  positive = jnp.sum(y * x, -1)
  negative = jnp.max((1 - y) * x, -1)
  return jnp.maximum(0.0, 1.0 + negative - positive)


def _binary_focal_cross_entropy(p, y):
  clipped = jnp.clip(p, 1e-7, 1 - 1e-7)
  bce = -(y * jnp.log(clipped) + (1 - y) * jnp.log(1 - clipped))
  p_t = y * p + (1 - y) * (1 - p)
  return jnp.mean((1 - p_t) ** 2 * bce, -1)


def _categorical_focal_cross_entropy(p, y):
  p = jnp.clip(p / jnp.sum(p, -1, keepdims=True), 1e-7, 1 - 1e-7)
  return jnp.sum(0.25 * (1 - p) ** 2 * -y * jnp.log(p), -1)


def _tversky_loss(p, t):
  tp = jnp.sum(p * t)
  fp = jnp.sum(p * (1 - t))
  fn = jnp.sum((1 - p) * t)
  return 1 - tp / (tp + 0.5 * fp + 0.5 * fn)


def _circle_loss(positive, negative):
  m, gamma = 0.4, 80.0
  alpha_p = jax.lax.stop_gradient(jax.nn.relu(1 + m - positive))
  alpha_n = jax.lax.stop_gradient(jax.nn.relu(negative + m))
  return jax.nn.softplus(
      jax.nn.logsumexp(gamma * alpha_n * (negative - m), -1)
      + jax.nn.logsumexp(-gamma * alpha_p * (positive - 1 + m), -1))


def _linear_softmax_cross_entropy(hidden, kernel, labels):
  logits = hidden @ kernel
  return jax.nn.logsumexp(logits, -1) - _take(logits, labels)


def _linear_distillation_loss(hidden, kernel, teacher_hidden,
                              teacher_kernel):
  log_q = jax.nn.log_softmax(hidden @ kernel)
  log_p = jax.nn.log_softmax(jax.lax.stop_gradient(
      teacher_hidden @ teacher_kernel))
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1))


# The losses optax lacks: name -> the obvious jnp formula, jaxloss's defaults.
PLAIN = {
    "mse_loss": _mse_loss,
    "l1_loss": _l1_loss,
    "smooth_l1_loss": _smooth_l1_loss,
    "poisson_nll_loss": _poisson_nll_loss,
    "gaussian_nll_loss": _gaussian_nll_loss,
    "nll_loss": _nll_loss,
    "kl_div": _kl_div,
    "binary_cross_entropy": _binary_cross_entropy,
    "margin_ranking_loss": _margin_ranking_loss,
    "hinge_embedding_loss": _hinge_embedding_loss,
    "cosine_embedding_loss": _cosine_embedding_loss,
    "triplet_margin_with_distance_loss": _triplet_margin_with_distance_loss,
    "multi_margin_loss": _multi_margin_loss,
    "multilabel_margin_loss": _multilabel_margin_loss,
    "soft_margin_loss": _soft_margin_loss,
    "multilabel_soft_margin_loss": _multilabel_soft_margin_loss,
    "mean_absolute_percentage_error": _mean_absolute_percentage_error,
    "mean_squared_logarithmic_error": _mean_squared_logarithmic_error,
    "poisson": _poisson,
    "squared_hinge": _squared_hinge,
    "categorical_hinge": _categorical_hinge,
    "binary_focal_cross_entropy": _binary_focal_cross_entropy,
    "categorical_focal_cross_entropy": _categorical_focal_cross_entropy,
    "tversky_loss": _tversky_loss,
    "circle_loss": _circle_loss,
    "linear_softmax_cross_entropy": _linear_softmax_cross_entropy,
    "linear_distillation_loss": _linear_distillation_loss,
}


def _torch_fns(torch):
  """name -> torch loss of the same inputs, reduced to a scalar mean."""
  f = torch.nn.functional

  def mean_rows(fn):
    return lambda *a: fn(*a).mean()

  def ctc(logits, logit_paddings, labels, label_paddings):
    return f.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1), labels,
        (1 - logit_paddings).sum(-1).long(),
        (1 - label_paddings).sum(-1).long(), reduction="none").mean()
  return {
      "squared_error": lambda x, y: f.mse_loss(x, y),
      "l2_loss": lambda x, y: 0.5 * f.mse_loss(x, y),
      "huber_loss": lambda x, y: f.huber_loss(x, y, delta=1.0),
      "cosine_similarity": mean_rows(f.cosine_similarity),
      "cosine_distance": lambda x, y: 1 - f.cosine_similarity(x, y).mean(),
      "sigmoid_binary_cross_entropy": f.binary_cross_entropy_with_logits,
      "softmax_cross_entropy": lambda x, y: f.cross_entropy(x, y),
      "softmax_cross_entropy_with_integer_labels":
          lambda x, y: f.cross_entropy(x, y),
      "kl_divergence": lambda x, y: f.kl_div(x, y, reduction="batchmean"),
      "kl_divergence_with_log_targets": lambda x, y: f.kl_div(
          x, y, reduction="batchmean", log_target=True),
      "triplet_margin_loss": lambda a, p, n: f.triplet_margin_loss(a, p, n),
      "ctc_loss": ctc,
      "mse_loss": f.mse_loss,
      "l1_loss": f.l1_loss,
      "smooth_l1_loss": f.smooth_l1_loss,
      "poisson_nll_loss": f.poisson_nll_loss,
      "gaussian_nll_loss": f.gaussian_nll_loss,
      "nll_loss": f.nll_loss,
      # reduction="mean" warns on every call; it is this.
      "kl_div": lambda x, y: f.kl_div(x, y, reduction="sum") / x.numel(),
      "binary_cross_entropy": f.binary_cross_entropy,
      "margin_ranking_loss": f.margin_ranking_loss,
      "hinge_embedding_loss": f.hinge_embedding_loss,
      "cosine_embedding_loss": f.cosine_embedding_loss,
      "triplet_margin_with_distance_loss":
          f.triplet_margin_with_distance_loss,
      "multi_margin_loss": f.multi_margin_loss,
      "multilabel_margin_loss": f.multilabel_margin_loss,
      "soft_margin_loss": f.soft_margin_loss,
      "multilabel_soft_margin_loss": f.multilabel_soft_margin_loss,
  }


def torch_call(name, args):
  """(call, sync) timing torch's counterpart's value and gradient, or None."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return None
  fn = _torch_fns(torch).get(name)
  gpu = jax.default_backend() == "gpu"
  if fn is None or (gpu and not torch.cuda.is_available()):
    return None
  device = "cuda" if gpu else "cpu"
  tensors = []
  for i, a in enumerate(args):
    a = np.asarray(a.astype(jnp.float32) if jnp.issubdtype(
        a.dtype, jnp.floating) else a)
    t = torch.tensor(a, device=device)
    if t.is_floating_point():
      t = t.to(getattr(torch, str(args[i].dtype)))
    else:
      t = t.long()
    tensors.append(t)
  x = tensors[0].clone().requires_grad_(True)

  def sync():
    if gpu:
      torch.cuda.synchronize()

  def value():
    with torch.no_grad():
      return fn(*tensors)

  def grad():
    x.grad = None
    loss = fn(x, *tensors[1:])
    loss.backward()
    return loss
  return {"value": (value, sync), "grad": (grad, sync)}


def nbytes(tree):
  return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def mean_differs(fn, args, kw):
  """Why ``fn``'s ``reduction="mean"`` is not the mean of its ``"none"``
  at ``args``, or None where it is (within float32 rounding)."""
  try:
    mean = jax.jit(scalar_loss(fn, kw, "mean"))(*args)
    of_none = jax.jit(scalar_loss(fn, kw))(*args)
  except (TypeError, ValueError) as e:
    return f"reduction=\"mean\" fails: {type(e).__name__}: {str(e)[:120]}"
  mean, of_none = np.asarray(mean, np.float64), np.asarray(of_none,
                                                           np.float64)
  if mean.shape != () or not np.allclose(mean, of_none, rtol=1e-5):
    return (f"its \"mean\" ({mean}) is not the mean of its \"none\" "
            f"({of_none}) here")
  return None


def scalar_loss(fn, kw, reduction="none"):
  """A new function object on every call: the mean of ``fn``'s output, or
  with ``reduction="mean"`` ``fn``'s own."""
  def f(*args):
    if reduction == "mean":
      out = fn(*args, reduction="mean", **kw)
    else:
      out = fn(*args, **kw)
    if isinstance(out, tuple):   # ctc_loss_with_forward_probs
      out = out[0]
    return jnp.mean(out)
  return f


def compile_cold(make, args):
  """Compiles ``make()`` from cold caches: (executable, [trace, lower, xla] ms).

  ``jax.clear_caches()`` empties JAX's trace, lowering and executable caches
  (jaxloss's inner ``jax.jit`` ones included), and ``make`` builds a new
  Python function, so nothing traced before is reused.
  """
  fn = make()
  jax.clear_caches()
  gc.collect()
  t0 = time.perf_counter()
  traced = jax.jit(fn).trace(*args)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  return compiled, [1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2)]


def _diff(ours, theirs):
  """(max |a - b|, that over max |b|) over the leaves of two trees."""
  worst_abs = worst_rel = 0.0
  for a, b in zip(jax.tree_util.tree_leaves(ours),
                  jax.tree_util.tree_leaves(theirs)):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
      d = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    # A NaN or inf on one side only is an infinite difference.
    d = float(np.max(np.nan_to_num(d, nan=np.inf), initial=0.0))
    scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0))
    worst_abs = max(worst_abs, d)
    worst_rel = max(worst_rel, d / scale if scale else d)
  return worst_abs, worst_rel


def compile_interleaved(makers, args, repeats):
  """Cold compilations of each ``makers[key]()``, interleaved over repeats.

  Returns ``{key: [[trace, lower, xla] ms, ...]}`` and the last executable
  of each key.
  """
  parts = {k: [] for k in makers}
  compiled = {}
  order = random.Random(1)
  for _ in range(repeats):
    keys = list(makers)
    order.shuffle(keys)
    for key in keys:
      compiled[key], t = compile_cold(makers[key], args)
      parts[key].append(t)
  return parts, compiled


def _median_ratio(ours, theirs):
  return statistics.median(a / b for a, b in zip(ours, theirs))


def implementations(name, baseline):
  """jaxloss's function ``name`` and its baseline's (``"optax"`` or
  ``"plain"``)."""
  return getattr(jaxloss, name), (getattr(optax.losses, name)
                                  if baseline == "optax" else PLAIN[name])


def run_one(name, args, kw, baseline, rounds, seconds, compile_repeats,
            reduction="none"):
  """Rows (value and grad) for one loss: jaxloss, its baseline and torch;
  ``reduction`` is jaxloss's (see ``--reduction``)."""
  ours, theirs = implementations(name, baseline)
  makers = {}
  for impl, fn in (("jaxloss", ours), (baseline, theirs)):
    mode = reduction if impl == "jaxloss" else "none"
    makers[impl, "value"] = lambda fn=fn, m=mode: scalar_loss(fn, kw, m)
    makers[impl, "grad"] = lambda fn=fn, m=mode: jax.value_and_grad(
        scalar_loss(fn, kw, m))
  parts, compiled = compile_interleaved(makers, args, compile_repeats)

  calls, temps, outs = {}, {}, {}
  for key, c in compiled.items():
    analysis = c.memory_analysis()
    temps[key] = (None if analysis is None
                  else int(analysis.temp_size_in_bytes))
    outs[key] = jax.block_until_ready(c(*args))
    calls[key] = (lambda c=c: c(*args), None)
  per_element = [jax.jit(lambda *a, fn=fn: fn(*a, **kw))(*args)
                 for fn in (ours, theirs)]
  torch_values = {}
  for mode, (call, sync) in (torch_call(name, args) or {}).items():
    try:
      out = call()
      sync()
    except (NotImplementedError, RuntimeError) as e:
      # A dtype torch's kernel lacks (bfloat16 multi_margin_loss on CPUs):
      # no torch columns for this mode, the rest of the row stands.
      print(f"  {name} {mode}: torch: {type(e).__name__}: {str(e)[:120]}",
            flush=True)
      continue
    torch_values[mode] = float(out.detach().float().cpu())
    calls["torch", mode] = (call, sync)
  times = common.interleaved_ms(calls, rounds, seconds / 2)

  rows = []
  for mode in ("value", "grad"):
    mine, other = ("jaxloss", mode), (baseline, mode)
    if mode == "value":
      abs_diff, rel_diff = _diff(*per_element)
    else:
      abs_diff, rel_diff = _diff(outs[mine], outs[other])
    compile_ours = [sum(p) for p in parts[mine]]
    compile_base = [sum(p) for p in parts[other]]
    row = {"loss": name, "mode": mode, "baseline": baseline,
           "jaxloss_ms": statistics.median(times[mine]),
           "baseline_ms": statistics.median(times[other]),
           "vs_baseline": _median_ratio(times[mine], times[other]),
           "jaxloss_temp_bytes": temps[mine],
           "baseline_temp_bytes": temps[other],
           "jaxloss_compile_ms": statistics.median(compile_ours),
           "baseline_compile_ms": statistics.median(compile_base),
           "vs_baseline_compile": _median_ratio(compile_ours, compile_base),
           # [trace, lower, XLA compile], each the median over repeats.
           "jaxloss_compile_parts_ms": [
               statistics.median(p) for p in zip(*parts[mine])],
           "baseline_compile_parts_ms": [
               statistics.median(p) for p in zip(*parts[other])],
           "jaxloss_compile_runs_ms": compile_ours,
           "baseline_compile_runs_ms": compile_base,
           "max_abs_diff": abs_diff, "max_rel_diff": rel_diff,
           "rounds": len(times[mine])}
    if ("torch", mode) in times:
      t_torch = times["torch", mode]
      row["torch_ms"] = statistics.median(t_torch)
      row["vs_torch"] = _median_ratio(times[mine], t_torch)
      mean = float(outs[mine] if mode == "value" else outs[mine][0])
      row["torch_rel_diff"] = abs(torch_values[mode] - mean) / max(
          abs(mean), 1e-30)
    rows.append(row)
  return rows


def plan(only=()):
  """(names to time with their baseline, {name: why not timed})."""
  optax_names = {n for n in dir(optax.losses) if not n.startswith("_")
                 and callable(getattr(optax.losses, n))}
  skipped = {n: "not in jaxloss yet"
             for n in sorted(optax_names - set(jaxloss.__all__))
             if n not in NOT_LOSSES}
  skipped.update({n: why for n, why in NOT_LOSSES.items()
                  if n in optax_names})
  todo = []
  for n in jaxloss.names():
    if n in skipped or (only and n not in only):
      continue
    baseline = "optax" if n in optax_names else "plain"
    if n not in BUILDERS:
      skipped[n] = "no builder in benchmarks/suite.py"
    elif baseline == "plain" and n not in PLAIN:
      skipped[n] = "no plain formula in benchmarks/suite.py"
    else:
      todo.append((n, baseline))
  return todo, skipped


def results_stem(name, shapes):
  return name if shapes == "default" else f"{name}_{shapes}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=tuple(ELEMENTS), default="cpu")
  parser.add_argument("--shapes", choices=tuple(SHAPES), default="default")
  parser.add_argument("--elements", type=int, help="main input's size")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, help="at least this many")
  parser.add_argument("--seconds", type=float, default=2.0,
                      help="more rounds (up to 50) until a loss has run "
                           "this long")
  parser.add_argument("--compile-repeats", type=int, default=7,
                      help="cold compilations of each function; median")
  parser.add_argument("--only", default="", help="comma-separated names")
  parser.add_argument("--reduction", choices=("none", "mean"),
                      default="none",
                      help="jaxloss's reduction (see the module's doc)")
  parser.add_argument("--name", default="suite", help="results file stem")
  parser.add_argument("--no-write", action="store_true")
  parser.add_argument("--update", action="store_true",
                      help="replace the --only losses' rows in the "
                           "existing results file (see the module's doc)")
  args = parser.parse_args()
  # Every compilation measured is a real one.
  jax.config.update("jax_enable_compilation_cache", False)
  # optax's convex_kl_divergence, still exported, warns on every call.
  warnings.filterwarnings("ignore", "The function .* is deprecated",
                          DeprecationWarning)
  elements = args.elements or ELEMENTS[args.device]
  rounds = args.rounds or ROUNDS[args.device]
  dtype = jnp.dtype(args.dtype)
  shapes = SHAPES[args.shapes]
  only = set(filter(None, args.only.split(",")))
  unknown = only - set(jaxloss.names())
  if unknown:
    parser.error(f"--only: not a jaxloss loss: {', '.join(sorted(unknown))}")
  if args.update and (not only or args.no_write):
    parser.error("--update: name the losses to measure again (--only), "
                 "and write them (no --no-write)")
  if args.reduction == "mean":
    reducing = {n for n in jaxloss.names() if "reduction" in
                inspect.signature(jaxloss.get(n)).parameters}
    if only - reducing:
      parser.error("--reduction mean: only losses with a reduction "
                   "keyword, not " + ", ".join(sorted(only - reducing)))
    only = only or reducing

  started = time.perf_counter()
  todo, skipped = plan(only)
  copy_gbs = common.copy_bandwidth_gbs(min(1 << 28, max(1 << 20,
                                                        64 * elements)))
  print(f"device: {common.device_name()}; {elements} elements, {dtype.name},"
        f" {args.shapes} shapes; copy {copy_gbs:.1f} GB/s", flush=True)
  table = []
  for i, (name, baseline) in enumerate(todo):
    builder, memory_bound = BUILDERS[name]
    t0 = time.perf_counter()
    inputs, kw = builder(elements, shapes, dtype, jax.random.key(i))
    if args.reduction == "mean":
      differs = mean_differs(getattr(jaxloss, name), inputs, kw)
      if differs:
        skipped[name] = differs
        print(f"  {name}: {differs}", flush=True)
        continue
    try:
      rows = run_one(name, inputs, kw, baseline, rounds, args.seconds,
                     args.compile_repeats, args.reduction)
    except Exception as e:  # noqa: BLE001  (one failing loss is reported)
      skipped[name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
      print(f"  {name}: {skipped[name]}", flush=True)
      continue
    read = nbytes(inputs)
    for row in rows:
      row["shapes"] = " ".join(
          "x".join(map(str, a.shape)) for a in inputs)
      if memory_bound:
        grad_bytes = inputs[0].size * inputs[0].dtype.itemsize
        moved = read if row["mode"] == "value" else 2 * read + grad_bytes
        row["gbs"] = common.gbs(moved, row["jaxloss_ms"])
        row["of_copy"] = row["gbs"] / copy_gbs
      row["temporaries"] = " / ".join(
          common.fmt_bytes(row[f"{impl}_temp_bytes"])
          for impl in ("jaxloss", "baseline"))
      row["compile"] = (f"{row['jaxloss_compile_ms']:.0f} / "
                        f"{row['baseline_compile_ms']:.0f}")
      table.append(row)
    print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
  seconds = time.perf_counter() - started

  columns = ["loss", "mode", "jaxloss_ms", "baseline_ms", "vs_baseline",
             "temporaries", "compile", "vs_baseline_compile", "gbs",
             "of_copy", "max_rel_diff"]
  if any("torch_ms" in r for r in table):
    columns += ["torch_ms", "vs_torch"]
  for baseline, title in report.SUITE_BASELINES.items():
    rows = [r for r in table if r["baseline"] == baseline]
    if rows:
      print(f"\n{title}:\n")
      print(common.table(rows, columns))
  print("\ntemporaries and compile (ms): jaxloss / baseline.")
  for line in report.suite_summary(table):
    print(line)
  print(f"Compile repeats: {report.compile_spread(table)}")
  print("Not timed:")
  for n, why in sorted(skipped.items()):
    print(f"- {n}: {why}")
  print(f"{len(todo)} losses in {seconds:.0f} s")
  if args.no_write:
    return
  command = "python benchmarks/suite.py " + " ".join(sys.argv[1:])
  payload = {
      "elements": elements, "dtype": dtype.name,
      "shapes": args.shapes, "shape_parameters": shapes._asdict(),
      "reduction": args.reduction,
      "min_rounds": rounds, "seconds_per_loss": args.seconds,
      "compile_repeats": args.compile_repeats,
      "compile_measures": "jax.jit(f).trace(*args).lower().compile() of a "
                          "new function f after jax.clear_caches(), "
                          "persistent cache off; median of repeats",
      "copy_gbs": copy_gbs, "seconds": round(seconds, 1),
      "command": command, "results": table, "not_timed": skipped}
  stem = results_stem(args.name, args.shapes)
  if args.update:
    payload = updated(common.results_path(stem), payload, only, command)
  print(f"wrote {common.write_json(stem, payload)}")


# The settings an update must share with the file it updates, and the value
# of each in files written before it was recorded.
_SETTINGS = ("elements", "dtype", "shapes", "shape_parameters", "reduction",
             "min_rounds", "seconds_per_loss", "compile_repeats")
_RECORDED_LATER = {"reduction": "none"}


def updated(path, fresh, names, command):
  """The results file at ``path`` with the rows of ``names`` replaced by
  ``fresh``'s (see the module's doc); SystemExit where the file is missing
  or was written with other settings."""
  if not path.exists():
    sys.exit(f"--update: no results file {path} to update")
  old = json.loads(path.read_text())

  def setting(k):
    return old.get(k, _RECORDED_LATER.get(k))

  differ = [k for k in _SETTINGS
            if setting(k) != json.loads(json.dumps(fresh[k]))]
  if differ:
    sys.exit(f"--update: {path.name} was written with other settings "
             f"({', '.join(f'{k}: {setting(k)!r}' for k in differ)}); "
             "run the whole suite instead")
  for row in fresh["results"]:
    row["measured_by"] = command
  # Each loss's new rows where its old ones were; a loss new to the file at
  # the end.
  new = {}
  for row in fresh["results"]:
    new.setdefault(row["loss"], []).append(row)
  rows = []
  for row in old["results"]:
    if row["loss"] not in names:
      rows.append(row)
    elif row["loss"] in new:
      rows += new.pop(row["loss"])
  rows += [r for loss in sorted(new) for r in new[loss]]
  not_timed = {n: why for n, why in old["not_timed"].items()
               if n not in names}
  not_timed.update(fresh["not_timed"])
  updates = old.get("updates", []) + [
      {"command": command, "losses": sorted(names),
       "seconds": fresh["seconds"]}]
  return {**old, "results": rows, "not_timed": not_timed,
          "updates": updates}


if __name__ == "__main__":
  main()
