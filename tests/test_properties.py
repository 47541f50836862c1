"""Properties every loss of the catalogue must have, checked with hypothesis.

Each loss gets a fixed-shape input builder below; hypothesis draws the values
(a seed and a magnitude), never the shapes, so each loss compiles once per
dtype. The properties: ``reduction="sum"`` equals the sum of ``"none"``; vmap
equals batched; permuting the batch permutes the result; softmax losses are
invariant to a constant added to the logits; non-negativity where the maths
says so; finite values and gradients for finite inputs up to 1e4, half
precision included; masked rows cost 0 with zero gradients, whatever they
hold; ``-inf`` logits on classes with zero target mass; determinism
(bitwise equal outputs across calls, and between jit and eager for
elementwise losses); jit equals eager to an ulp for a few losses that
reduce.
"""

import functools
import os
import pathlib
import subprocess
import sys

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

import catalogue
import jaxloss
import suite_flags

B = 4
C, D, T = catalogue.C, catalogue.D, catalogue.T
NOT_BATCHED = "not batched"

# Each argument is (kind, shape) or (kind, shape, NOT_BATCHED); see
# catalogue.draw.
# flags: "nonneg" (the loss is >= 0), "shift" (invariant to adding a constant
# to argument 0), "quadratic" (gradients grow like the input: in float16 they
# overflow for inputs near 1e4, so half precision is drawn up to 1e2).
SPECS = {
    "binary_cross_entropy": ([("probs", (B, C)), ("binary", (B, C))], {},
                             "nonneg"),
    "binary_focal_cross_entropy": ([("probs", (B, C)), ("binary", (B, C))],
                                   {}, "nonneg"),
    "categorical_focal_cross_entropy": (
        [("real", (B, C)), ("onehot", (B, C))], {"from_logits": True},
        "nonneg shift"),
    "categorical_generalized_cross_entropy": (
        [("simplex", (B, C)), ("int", (B,))], {}, "nonneg"),
    "categorical_hinge": ([("real", (B, C)), ("onehot", (B, C))], {},
                          "nonneg shift"),
    "circle_loss": ([("scores", (B, 2)), ("scores", (B, 3))], {}, "nonneg"),
    "convex_kl_divergence": ([("unit", (B, C)), ("pos", (B, C))], {},
                             "nonneg"),
    "cosine_distance": ([("real", (B, C)), ("real", (B, C))], {}, "nonneg"),
    "cosine_embedding_loss": (
        [("real", (B, C)), ("real", (B, C)), ("sign", (B,))], {}, "nonneg"),
    "cosine_similarity": ([("real", (B, C)), ("real", (B, C))], {}, ""),
    "ctc_loss": ([("real", (B, T, C)), ("zeros", (B, T)),
                  ("ctc_labels", (B, 2)), ("zeros", (B, 2))], {},
                 "nonneg shift"),
    "dice_loss": ([("real", (B, 3, C)), ("onehot", (B, 3, C))], {},
                  "nonneg shift"),
    "gaussian_nll_loss": ([("real", (B, C)), ("real", (B, C)),
                           ("pos", (B, C))], {}, "quadratic"),
    "generalized_kl_divergence": ([("unit", (B, C)), ("pos", (B, C))], {},
                                  "nonneg"),
    "hinge_embedding_loss": ([("real", (B, C)), ("sign", (B, C))], {}, ""),
    "hinge_loss": ([("real", (B, C)), ("sign", (B, C))], {}, "nonneg"),
    "huber_loss": ([("real", (B, C)), ("real", (B, C))], {}, "nonneg"),
    "kl_div": ([("logprob", (B, C)), ("simplex", (B, C))], {}, ""),
    "kl_divergence": ([("logprob", (B, C)), ("simplex", (B, C))], {},
                      "nonneg"),
    "kl_divergence_with_log_targets": (
        [("logprob", (B, C)), ("logprob", (B, C))], {}, "nonneg"),
    "l1_loss": ([("real", (B, C)), ("real", (B, C))], {}, "nonneg"),
    "l2_loss": ([("real", (B, C)), ("real", (B, C))], {},
                "nonneg quadratic"),
    "linear_distillation_loss": (
        [("real", (B, D)), ("unit", (D, C), NOT_BATCHED),
         ("constant", (B, D)), ("constant_unit", (D, C), NOT_BATCHED)], {},
        "nonneg"),
    "linear_softmax_cross_entropy": (
        [("real", (B, D)), ("unit", (D, C), NOT_BATCHED), ("int", (B,))], {},
        "nonneg"),
    "log_cosh": ([("real", (B, C)), ("real", (B, C))], {}, "nonneg"),
    "margin_ranking_loss": (
        [("real", (B, C)), ("real", (B, C)), ("sign", (B, C))], {},
        "nonneg"),
    "mean_absolute_percentage_error": (
        [("real", (B, C)), ("away_from_zero", (B, C))], {}, "nonneg"),
    "mean_squared_logarithmic_error": ([("pos", (B, C)), ("pos", (B, C))],
                                       {}, "nonneg"),
    "mse_loss": ([("real", (B, C)), ("real", (B, C))], {},
                 "nonneg quadratic"),
    "multi_margin_loss": ([("real", (B, C)), ("int", (B,))], {},
                          "nonneg shift"),
    "multiclass_hinge_loss": ([("real", (B, C)), ("int", (B,))], {},
                              "nonneg shift"),
    "multiclass_perceptron_loss": ([("real", (B, C)), ("int", (B,))], {},
                                   "nonneg shift"),
    "multiclass_sparsemax_loss": ([("real", (B, C)), ("int", (B,))], {},
                                  "nonneg shift"),
    "multilabel_margin_loss": ([("real", (B, C)), ("multilabel", (B, C))],
                               {}, "nonneg shift"),
    "multilabel_soft_margin_loss": ([("real", (B, C)), ("binary", (B, C))],
                                    {}, "nonneg"),
    "nll_loss": ([("logprob", (B, C)), ("int", (B,))], {}, "nonneg"),
    "perceptron_loss": ([("real", (B, C)), ("sign", (B, C))], {}, "nonneg"),
    "poisson": ([("pos", (B, C)), ("counts", (B, C))], {}, ""),
    "poisson_nll_loss": ([("unit", (B, C)), ("counts", (B, C))], {}, ""),
    "poly_loss_cross_entropy": ([("real", (B, C)), ("simplex", (B, C))], {},
                                "nonneg shift"),
    "ranking_softmax_loss": ([("real", (B, C)), ("binary", (B, C))], {},
                             "nonneg shift"),
    "safe_softmax_cross_entropy": ([("real", (B, C)), ("simplex", (B, C))],
                                   {}, "nonneg shift"),
    "sigmoid_binary_cross_entropy": ([("real", (B, C)), ("binary", (B, C))],
                                     {}, "nonneg"),
    "sigmoid_focal_loss": ([("real", (B, C)), ("binary", (B, C))], {},
                           "nonneg"),
    "smooth_l1_loss": ([("real", (B, C)), ("real", (B, C))], {}, "nonneg"),
    "soft_margin_loss": ([("real", (B, C)), ("sign", (B, C))], {}, "nonneg"),
    "softmax_cross_entropy": ([("real", (B, C)), ("simplex", (B, C))], {},
                              "nonneg shift"),
    "softmax_cross_entropy_with_integer_labels": (
        [("real", (B, C)), ("int", (B,))], {}, "nonneg shift"),
    "sparsemax_loss": ([("real", (B, C)), ("binary", (B, C))], {}, "nonneg"),
    "squared_error": ([("real", (B, C)), ("real", (B, C))], {},
                      "nonneg quadratic"),
    "squared_hinge": ([("real", (B, C)), ("sign", (B, C))], {},
                      "nonneg quadratic"),
    "triplet_margin_loss": (
        [("real", (B, C)), ("real", (B, C)), ("real", (B, C))], {},
        "nonneg"),
    "triplet_margin_with_distance_loss": (
        [("real", (B, C)), ("real", (B, C)), ("real", (B, C))], {},
        "nonneg"),
    "tversky_loss": ([("probs", (B, C)), ("binary", (B, C))], {"axis": 1},
                     "nonneg"),
}

# Not in the table: the forward-probability variant of ctc_loss returns a
# tuple of arrays (its loss is ctc_loss, tested above), and three losses keep
# optax's signature, which has no reduction keyword.
LEFT_OUT = {"ctc_loss_with_forward_probs", "binary_dice_loss",
            "multiclass_generalized_dice_loss", "ntxent"}

# Losses taking a ``where`` mask: "full" (argument 0's shape) or "rows" (the
# batch shape). The cosine losses mask vector entries, not rows: a row with
# no entry left is a zero vector (similarity 0, distance 1) and still counts
# in the mean.
MASKS = {
    "binary_cross_entropy": "full", "convex_kl_divergence": "full",
    "categorical_generalized_cross_entropy": "rows",
    "cosine_distance": "entries", "cosine_similarity": "entries",
    "generalized_kl_divergence": "full", "hinge_loss": "full",
    "kl_divergence": "full", "kl_divergence_with_log_targets": "full",
    "linear_distillation_loss": "rows",
    "linear_softmax_cross_entropy": "rows",
    "multiclass_hinge_loss": "rows", "multiclass_perceptron_loss": "rows",
    "multiclass_sparsemax_loss": "rows", "nll_loss": "rows",
    "perceptron_loss": "full", "poly_loss_cross_entropy": "rows",
    "ranking_softmax_loss": "full", "safe_softmax_cross_entropy": "rows",
    "sigmoid_binary_cross_entropy": "full", "sigmoid_focal_loss": "full",
    "softmax_cross_entropy": "rows",
    "softmax_cross_entropy_with_integer_labels": "rows",
    "sparsemax_loss": "full",
}

# Losses whose argument 0 may hold -inf on class 0 when the target puts no
# mass there: the loss and its gradient stay finite.
NEG_INF = [
    "categorical_focal_cross_entropy", "kl_div", "kl_divergence",
    "kl_divergence_with_log_targets", "multiclass_sparsemax_loss",
    "nll_loss", "poly_loss_cross_entropy", "ranking_softmax_loss",
    "safe_softmax_cross_entropy", "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss", "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

SETTINGS = hypothesis.settings(
    max_examples=5, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(hypothesis.HealthCheck))
SEEDS = st.integers(0, 2**31 - 1)
SCALES = st.sampled_from([1.0, 1e2, 1e4])
HALF = [jnp.float16, jnp.bfloat16]


def _spec(name):
  args, kwargs, flags = SPECS[name]
  batched = tuple(len(a) == 2 for a in args)
  return args, kwargs, flags.split(), batched


def _inputs(name, seed, scale, dtype=jnp.float32):
  args, _, _, _ = _spec(name)
  rng = np.random.default_rng(seed)
  out = []
  for kind, shape, *_ in args:
    x = np.asarray(catalogue.draw(kind, shape, rng, scale))
    out.append(jnp.asarray(x, jnp.int32 if x.dtype.kind in "iu" else dtype))
  return tuple(out)


def _loss(name):
  f = jaxloss.get(name)
  _, kwargs, _, _ = _spec(name)
  return lambda args, reduction: f(*args, **kwargs, reduction=reduction)


@functools.cache
def _probe(name):
  """What the properties look at, in one function compiled once per dtype:
  ``"none"``, the ``"sum"`` and its gradient in argument 0, and ``"none"``
  example by example under vmap."""
  loss = _loss(name)
  _, _, _, batched = _spec(name)

  def one(*args):
    args = tuple(x[None] if b else x for x, b in zip(args, batched))
    return loss(args, "none")[0]

  def probe(args):
    # jnp.sum: dice_loss's "sum" sums the classes only (see below).
    def total(x):
      out = loss((x,) + args[1:], "sum")
      return jnp.sum(out), out

    (_, summed), grad = jax.value_and_grad(total, has_aux=True)(args[0])
    return {
        "none": loss(args, "none"),
        "sum": summed,
        "grad": grad,
        "vmap": jax.vmap(one, in_axes=tuple(0 if b else None
                                            for b in batched))(*args),
    }

  return jax.jit(probe)


@functools.cache
def _half_probe(name):
  """The ``"sum"`` and its argument-0 gradient, float16 and bfloat16 at once:
  the sum is finite only if every element is."""
  loss = _loss(name)

  def probe(*args_by_dtype):
    return [jax.value_and_grad(
        lambda x, a=a: jnp.sum(loss((x,) + a[1:], "sum")))(a[0])
            for a in args_by_dtype]

  return jax.jit(probe)


def _permute(name, args, perm):
  _, _, _, batched = _spec(name)
  return tuple(x[perm] if b else x for x, b in zip(args, batched))


def _close(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual), np.asarray(expected)
  atol = rtol * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


CATALOGUE = sorted(SPECS)


def test_the_table_covers_the_catalogue():
  assert set(SPECS) | LEFT_OUT == set(jaxloss.names())
  assert set(MASKS) <= set(SPECS) and set(NEG_INF) <= set(SPECS)


@pytest.mark.parametrize("name", CATALOGUE)
@SETTINGS
@hypothesis.given(seed=SEEDS, scale=SCALES)
def test_reductions_vmap_permutation_and_gradients(name, seed, scale):
  args = _inputs(name, seed, scale)
  out = _probe(name)(args)
  none = np.asarray(out["none"], np.float64)
  assert np.all(np.isfinite(none)), none
  # vmap over examples == batched
  _close(out["vmap"], none)
  # permuting the batch permutes the result
  perm = np.random.default_rng(seed).permutation(B)
  permuted = _probe(name)(_permute(name, args, jnp.asarray(perm)))
  _close(permuted["none"], none[perm])
  # finite gradients for finite inputs
  assert np.all(np.isfinite(np.asarray(out["grad"], np.float64)))
  # non-negativity where the maths says so
  if "nonneg" in _spec(name)[2]:
    assert np.all(none >= 0), none
  # determinism: the same inputs give bitwise the same outputs
  again = _probe(name)(args)
  for key, value in out.items():
    np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(value),
                                  err_msg=key)


# dice_loss follows optax.losses.dice_loss: its "sum" and "mean" reduce the
# class axis only and keep the batch, so loss(..., reduction="sum") is not
# loss(...).sum() there.
SUM_XFAIL = {"dice_loss": "reduction='sum' sums the class axis only, as "
                          "optax.losses.dice_loss; the batch stays"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=SUM_XFAIL[n], strict=True))
    if n in SUM_XFAIL else n for n in CATALOGUE])
@SETTINGS
@hypothesis.given(seed=SEEDS, scale=SCALES)
def test_sum_equals_the_sum_of_none(name, seed, scale):
  out = _probe(name)(_inputs(name, seed, scale))
  assert np.shape(out["sum"]) == ()
  _close(out["sum"], np.sum(np.asarray(out["none"], np.float64)), rtol=1e-5)


SHIFTED = [n for n in CATALOGUE if "shift" in _spec(n)[2]]


@pytest.mark.parametrize("name", SHIFTED)
@SETTINGS
@hypothesis.given(seed=SEEDS, shift=st.floats(-50, 50))
def test_invariant_to_a_constant_added_to_the_logits(name, seed, shift):
  args = _inputs(name, seed, 10.0)
  shifted = (args[0] + shift,) + args[1:]
  _close(_probe(name)(shifted)["none"], _probe(name)(args)["none"],
         rtol=1e-4)


@pytest.mark.parametrize("name", CATALOGUE)
@SETTINGS
@hypothesis.given(seed=SEEDS, scale=SCALES)
def test_half_precision_finite_values_and_gradients(name, seed, scale):
  if "quadratic" in _spec(name)[2]:
    scale = min(scale, 1e2)
  args = [_inputs(name, seed, scale, dtype) for dtype in HALF]
  for (total, grad), dtype in zip(_half_probe(name)(*args), HALF):
    assert total.dtype == jnp.float32
    assert grad.dtype == dtype
    assert np.isfinite(total), (dtype, total)
    assert np.all(np.isfinite(np.asarray(grad, np.float32))), (dtype, grad)


def _masked(name, seed, everything=False):
  """Inputs whose row 1 is masked out and poisoned with NaN and inf."""
  args = list(_inputs(name, seed, 1.0))
  shape = (B,) if MASKS[name] == "rows" else args[0].shape
  where = np.ones(shape, bool)
  where[1] = False
  if everything:
    where[:] = False
  # Every floating argument with the batch (targets too) is poisoned.
  for i, (a, batched) in enumerate(zip(args, _spec(name)[3])):
    if batched and jnp.issubdtype(a.dtype, jnp.floating):
      poison = np.asarray(a).copy()
      poison[1] = np.nan
      poison[1, 0] = np.inf
      args[i] = jnp.asarray(poison)
  return tuple(args), jnp.asarray(where)


def _floating(args):
  return tuple(i for i, a in enumerate(args)
               if jnp.issubdtype(a.dtype, jnp.floating))


@functools.cache
def _masked_probe(name):
  f = jaxloss.get(name)
  _, kwargs, _, _ = _spec(name)

  def loss(args, where, reduction):
    return f(*args, **kwargs, where=where, reduction=reduction)

  def probe(args, where):
    def total(*floats):
      full = list(args)
      for i, a in zip(_floating(args), floats):
        full[i] = a
      return loss(full, where, "sum")
    grads = jax.grad(total, range(len(_floating(args))))(
        *(args[i] for i in _floating(args)))
    return loss(args, where, "none"), loss(args, where, "mean"), grads

  return jax.jit(probe)


MASKED_ROW_VALUE = {"cosine_distance": 1.0}
MASK_XFAIL = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=MASK_XFAIL[n], strict=True))
    if n in MASK_XFAIL else n for n in sorted(MASKS)])
@SETTINGS
@hypothesis.given(seed=SEEDS)
def test_masked_rows_cost_nothing_whatever_they_hold(name, seed):
  # The gradients by every floating argument: a NaN target in a dropped row
  # must not reach the targets' gradient either.
  args, where = _masked(name, seed)
  batched = [_spec(name)[3][i] for i in _floating(args)]
  none, mean, grads = _masked_probe(name)(args, where)
  none = np.asarray(none)
  np.testing.assert_array_equal(none[1], MASKED_ROW_VALUE.get(name, 0))
  assert np.all(np.isfinite(none)) and np.isfinite(mean)
  for grad, rows in zip(grads, batched):
    grad = np.asarray(grad)
    if rows:
      np.testing.assert_array_equal(grad[1], 0)
    assert np.all(np.isfinite(grad))
  if MASKS[name] == "entries":
    return
  # Nothing kept: a mean over nothing is 0, with zero gradients.
  args, where = _masked(name, seed, everything=True)
  none, mean, grads = _masked_probe(name)(args, where)
  np.testing.assert_array_equal(np.asarray(none), 0)
  np.testing.assert_array_equal(np.asarray(mean), 0)
  for grad in grads:
    np.testing.assert_array_equal(np.asarray(grad), 0)


# Losses whose ``where`` may also be ``logits``-shaped, restricting the
# softmax to some classes (as optax's); the other row-masked ones refuse it.
CLASS_MASKS = {"multiclass_sparsemax_loss", "poly_loss_cross_entropy",
               "safe_softmax_cross_entropy", "softmax_cross_entropy",
               "softmax_cross_entropy_with_integer_labels"}


def _class_masked(name, seed):
  """Inputs whose class 0 is masked out and poisoned with NaN (and inf in
  the logits), in every argument with the logits' shape."""
  args = [np.asarray(a) for a in _inputs(name, seed, 1.0)]
  for i, a in enumerate(args):
    if a.dtype.kind == "f" and a.shape == args[0].shape:
      a = a.copy()
      a[:, 0] = np.nan
      if i == 0:
        a[0, 0] = np.inf
      args[i] = a
    elif a.dtype.kind in "iu":
      args[i] = np.where(a == 0, 1, a)        # no label on a dropped class
  where = np.ones(args[0].shape, bool)
  where[:, 0] = False
  return tuple(map(jnp.asarray, args)), jnp.asarray(where)


@pytest.mark.parametrize("name", sorted(n for n in MASKS if MASKS[n] == "rows"))
def test_class_masks_are_accepted_exactly_where_documented(name):
  args, where = _class_masked(name, 0)
  call = functools.partial(jaxloss.get(name), *args, **_spec(name)[1],
                           where=where)
  if name in CLASS_MASKS:
    assert np.all(np.isfinite(call()))
  else:
    with pytest.raises(ValueError, match="where"):
      call()


@pytest.mark.parametrize("name", sorted(CLASS_MASKS))
@SETTINGS
@hypothesis.given(seed=SEEDS)
def test_masked_classes_cost_nothing_whatever_they_hold(name, seed):
  args, where = _class_masked(name, seed)
  none, mean, grads = _masked_probe(name)(args, where)
  assert np.all(np.isfinite(np.asarray(none))) and np.isfinite(mean)
  for i, grad in zip(_floating(args), grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)), (i, grad)
    if grad.shape == args[0].shape:
      np.testing.assert_array_equal(grad[:, 0], 0)


def _minus_inf(name, seed):
  """Argument 0 at -inf on class 0, where the target has no mass."""
  args = [np.asarray(a) for a in _inputs(name, seed, 1.0)]
  kinds = [a[0] for a in SPECS[name][0]]
  x = args[0].copy()
  x[..., 0] = -np.inf
  args[0] = x
  kind, t = kinds[1], args[1].copy()
  if kind == "int":
    t = np.where(t == 0, 1, t)
  elif kind == "logprob":
    t[..., 0] = -np.inf
  elif kind == "onehot":
    t[..., 1] = np.maximum(t[..., 1], t[..., 0])
    t[..., 0] = 0
  elif kind == "simplex":
    t[..., 0] = 0
    t = t / t.sum(-1, keepdims=True)
  else:
    t[..., 0] = 0
  args[1] = t
  return tuple(jnp.asarray(a) for a in args)


NEG_INF_XFAIL = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=NEG_INF_XFAIL[n],
                                            strict=True))
    if n in NEG_INF_XFAIL else n for n in NEG_INF])
@SETTINGS
@hypothesis.given(seed=SEEDS)
def test_minus_inf_where_the_target_has_no_mass(name, seed):
  out = _probe(name)(_minus_inf(name, seed))
  assert np.all(np.isfinite(np.asarray(out["none"]))), out["none"]
  grad = np.asarray(out["grad"])
  assert np.all(np.isfinite(grad)), grad
  np.testing.assert_array_equal(grad[..., 0], 0)


def _minus_inf_with_mass(name, seed):
  """Argument 0 at -inf on class 0, where the target puts mass."""
  args = [np.asarray(a) for a in _inputs(name, seed, 1.0)]
  x = args[0].copy()
  x[..., 0] = -np.inf
  args[0] = x
  kind, t = SPECS[name][0][1][0], args[1].copy()
  if kind == "int":
    t[:] = 0
  elif kind == "onehot":
    t[...] = 0
    t[..., 0] = 1
  elif kind == "binary":
    t[..., 0] = 1
  # "simplex" and "logprob" targets already put mass everywhere.
  args[1] = t
  return tuple(map(jnp.asarray, args))


@pytest.mark.parametrize("name", NEG_INF)
@hypothesis.settings(SETTINGS, max_examples=2)
@hypothesis.given(seed=SEEDS)
def test_minus_inf_under_target_mass_costs_inf_in_agreeing_modes(name, seed):
  # inf, with a finite gradient, and forward mode the same derivative:
  # no zero tangent (of the targets, say) may meet an infinite derivative.
  args = _minus_inf_with_mass(name, seed)
  f = jaxloss.get(name)
  kwargs = _spec(name)[1]

  def total(x):
    return jnp.sum(f(x, *args[1:], **kwargs))

  value, grad = jax.jit(jax.value_and_grad(total))(args[0])
  assert value == np.inf
  assert np.all(np.isfinite(np.asarray(grad))), grad
  dx = jnp.asarray(np.random.default_rng(seed).normal(size=args[0].shape),
                   args[0].dtype)
  _, tangent = jax.jit(lambda x, dx: jax.jvp(total, (x,), (dx,)))(args[0], dx)
  np.testing.assert_allclose(tangent, jnp.sum(grad * dx), rtol=1e-5,
                             atol=1e-6)


JIT_EAGER = ["huber_loss", "kl_divergence", "multiclass_sparsemax_loss",
             "sigmoid_binary_cross_entropy",
             "softmax_cross_entropy_with_integer_labels"]


@pytest.mark.parametrize("name", JIT_EAGER)
@hypothesis.settings(SETTINGS, max_examples=1)
@hypothesis.given(seed=SEEDS, scale=SCALES)
def test_jit_equals_eager(name, seed, scale):
  args = _inputs(name, seed, scale)
  loss = _loss(name)
  jitted = [loss(args, r) for r in ("none", "mean")]
  with jax.disable_jit():
    eager = [loss(args, r) for r in ("none", "mean")]
  for a, e in zip(jitted, eager):
    _close(a, e, rtol=1e-6)


# Elementwise losses: no sum whose order XLA may change when it fuses, so jit
# and eager agree bitwise. (Losses that reduce, over classes or for "mean",
# may differ by an ulp: XLA does not promise one summation order.)
BITWISE = ["hinge_loss", "huber_loss", "log_cosh", "poisson_nll_loss",
           "sigmoid_binary_cross_entropy", "sigmoid_focal_loss",
           "soft_margin_loss"]


def jit_and_eager_bitwise(names, seeds, scales):
  for name in names:
    for seed in seeds:
      for scale in scales:
        args = _inputs(name, seed, scale)
        loss = _loss(name)
        jitted = loss(args, "none")
        with jax.disable_jit():
          eager = loss(args, "none")
          again = loss(args, "none")
        np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager),
                                      err_msg=f"{name} {seed} {scale}")
        np.testing.assert_array_equal(np.asarray(again), np.asarray(eager),
                                      err_msg=f"{name} {seed} {scale}")


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_jit_equals_eager_bitwise_for_elementwise_losses():
  # The suite's compiler flags (suite_flags.py) can move a result by an
  # ulp: this comparison runs in a process of its own, compiled as users'
  # programs are.
  env = dict(os.environ)
  flags = env.pop("XLA_FLAGS", "").split()
  flags = [f for f in flags if f not in (suite_flags.LLVM_LEVEL_0,
                                         suite_flags.FUSION_EMITTERS_OFF)]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  script = ("import test_properties as t; t.jit_and_eager_bitwise("
            f"{BITWISE!r}, (0, 1, 2), (1.0, 1e2, 1e4))")
  run = subprocess.run([sys.executable, "-c", script], env=env,
                       cwd=pathlib.Path(__file__).parent,
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
