"""Dice, generalized Dice and Tversky losses against float64 NumPy
references, optax and Keras's formula."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from helpers import check_grads_directional, jit_fast

_jit = jit_fast
_check_grads = check_grads_directional

rng = np.random.default_rng(2)
B, H, W, K = 2, 3, 4, 3
LOGITS = rng.normal(0, 2, (B, H, W, K))
ONE_HOT = np.eye(K)[rng.integers(0, K, (B, H, W))]
BIN_LOGITS = rng.normal(0, 2, (B, H, W))
BIN_TARGETS = (rng.uniform(size=(B, H, W)) < 0.4).astype(np.float64)
PROBS = rng.uniform(0.01, 0.99, (B, H, W))
CLASS_W = np.array([0.5, 1.0, 2.0])


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_tversky(p, t, alpha, beta, smooth, axes):
  tp = np.sum(p * t, axis=axes)
  fp = np.sum(p * (1 - t), axis=axes)
  fn = np.sum((1 - p) * t, axis=axes)
  return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def ref_dice(logits, t, *, class_weights=None, smooth=1.0, alpha=0.5,
             beta=0.5, softmax=True, reduction="mean", ignore_background=False,
             axes=(1, 2)):
  p = np_softmax(logits) if softmax else logits
  loss = ref_tversky(p, t, alpha, beta, smooth, axes)
  if class_weights is not None:
    loss = loss * class_weights
  if ignore_background:
    loss = loss[..., 1:]
  return {"mean": loss.mean(-1), "sum": loss.sum(-1), "none": loss}[reduction]


def ref_generalized(logits, t, ignore_background=False):
  freq = t.reshape(-1, t.shape[-1]).sum(0)
  w = 1 / (freq**2 + 1e-7)
  w = w / w.sum() * len(w)
  return ref_dice(logits, t, class_weights=w, reduction="none",
                  ignore_background=ignore_background).mean()


def ref_binary(logits, t, smooth=1.0):
  p = 1 / (1 + np.exp(-logits))
  return ref_tversky(p, t, 0.5, 0.5, smooth, tuple(range(1, p.ndim)))


SOFT_PROBS = np_softmax(LOGITS)

# name -> (call(*floats, reduction=...) or None, float64 reference, floats,
#          constants). Losses whose ``reduction`` is optax's class reduction
# are wrapped to take none/sum/mean over their whole output.


def _total(fn):
  def call(*args, reduction="none"):
    out = fn(*args)
    return {"none": out, "sum": jnp.sum(out), "mean": jnp.mean(out)}[reduction]
  return call


CASES = {
    "dice_loss": (
        _total(lambda x, t: jaxloss.dice_loss(x, t)),
        lambda x, t: ref_dice(x, t), (LOGITS,), (ONE_HOT,)),
    "dice_loss_options": (
        _total(lambda x, t: jaxloss.dice_loss(
            x, t, class_weights=jnp.asarray(CLASS_W, x.dtype), smooth=0.5,
            alpha=0.3, beta=0.7, reduction="none", ignore_background=True,
            axis=(1,))),
        lambda x, t: ref_dice(x, t, class_weights=CLASS_W, smooth=0.5,
                              alpha=0.3, beta=0.7, reduction="none",
                              ignore_background=True, axes=(1,)),
        (LOGITS,), (ONE_HOT,)),
    "dice_loss_probabilities": (
        _total(lambda p, t: jaxloss.dice_loss(
            p, t, apply_softmax=False, reduction="sum")),
        lambda p, t: ref_dice(p, t, softmax=False, reduction="sum"),
        (SOFT_PROBS,), (ONE_HOT,)),
    "binary_dice_loss": (
        _total(jaxloss.binary_dice_loss), ref_binary, (BIN_LOGITS,),
        (BIN_TARGETS,)),
    "multiclass_generalized_dice_loss": (
        _total(jaxloss.multiclass_generalized_dice_loss), ref_generalized,
        (LOGITS,), (ONE_HOT,)),
    "tversky_loss": (
        lambda p, t, **k: jaxloss.tversky_loss(p, t, alpha=0.3, beta=0.7,
                                               axis=(1, 2), **k),
        lambda p, t: ref_tversky(p, t, 0.3, 0.7, 0.0, (1, 2)),
        (PROBS,), (BIN_TARGETS,)),
    "tversky_loss_all_axes": (
        lambda p, t, **k: jaxloss.tversky_loss(p, t, smooth=1.0, **k),
        lambda p, t: ref_tversky(p, t, 0.5, 0.5, 1.0, None),
        (PROBS,), (BIN_TARGETS,)),
}
NAMES = sorted(CASES)


def _inputs(dtype):
  return {name: (tuple(jnp.asarray(x, dtype) for x in floats),
                 tuple(jnp.asarray(x) for x in consts))
          for name, (_, _, floats, consts) in CASES.items()}


def _run(inputs, reductions=("none", "sum", "mean")):
  return {name: tuple(CASES[name][0](*f, *c, reduction=r)
                      for r in reductions)
          for name, (f, c) in inputs.items()}


def test_matches_float64_reference_and_reductions():
  with jax.enable_x64(True):
    got = _jit(_run)(_inputs(jnp.float64))
  for name in NAMES:
    _, ref, floats, consts = CASES[name]
    none, total, mean = (np.asarray(x) for x in got[name])
    assert none.dtype == np.float64, name
    np.testing.assert_allclose(none, ref(*floats, *consts), rtol=1e-12,
                               err_msg=name)
    np.testing.assert_allclose(total, np.sum(none), rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(mean, np.mean(none), rtol=1e-12, err_msg=name)


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_jit_matches_eager_and_gradients_match_finite_differences():
  inputs = _inputs(jnp.float32)
  jitted = _jit(lambda x: _run(x, ("none",)))(inputs)
  with jax.disable_jit():
    eager = {n: CASES[n][0](*inputs[n][0], *inputs[n][1])
             for n in ("dice_loss_options",)}
  for name, value in eager.items():
    np.testing.assert_allclose(jitted[name][0], value, rtol=1e-6, atol=1e-6,
                               err_msg=name)
  with jax.enable_x64(True):
    inputs = _inputs(jnp.float64)
    weights = np.random.default_rng(3).uniform(0.5, 1.5, len(NAMES))

    def total(floats):
      return sum(w * CASES[n][0](*floats[n], *inputs[n][1], reduction="sum")
                 for w, n in zip(weights, NAMES))

    _check_grads(total, {n: f for n, (f, _) in inputs.items()})


def test_vmap_over_samples_matches_the_batch():
  x, t = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(ONE_HOT, jnp.float32)
  p, y = jnp.asarray(PROBS, jnp.float32), jnp.asarray(BIN_TARGETS)

  @_jit
  def both(x, t, p, y):
    per_sample = jax.vmap(lambda x, t: jaxloss.dice_loss(
        x, t, axis=(0, 1), reduction="none"))(x, t)
    tversky = jax.vmap(lambda p, y: jaxloss.tversky_loss(p, y, alpha=0.2,
                                                         beta=0.8))(p, y)
    return (per_sample, jaxloss.dice_loss(x, t, reduction="none"), tversky,
            jaxloss.tversky_loss(p, y, alpha=0.2, beta=0.8, axis=(1, 2)))

  a, b, c, d = both(x, t, p, y)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(c, d, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_gives_float32_statistics(dtype):
  inputs = _inputs(dtype)
  got = _jit(lambda x: _run(x, ("none",)))(inputs)
  for name in NAMES:
    _, ref, _, consts = CASES[name]
    assert all(x.dtype == jnp.float32 for x in got[name]), name
    if name == "dice_loss_options":   # its class weights are rounded too
      continue
    rounded = [np.asarray(x, np.float64) for x in inputs[name][0]]
    np.testing.assert_allclose(got[name][0], ref(*rounded, *consts),
                               rtol=1e-5, atol=1e-6, err_msg=name)


def test_finite_gradients_at_extreme_logits():
  x = jnp.asarray(np.where(LOGITS > 0, 1e4, -1e4), jnp.float32)
  xb = jnp.asarray(np.where(BIN_LOGITS > 0, 1e4, -1e4), jnp.float32)
  t, tb = jnp.asarray(ONE_HOT), jnp.asarray(BIN_TARGETS)
  grads = _jit(jax.grad(lambda x, xb: (
      jaxloss.dice_loss(x, t).sum()
      + jaxloss.multiclass_generalized_dice_loss(x, t)
      + jaxloss.binary_dice_loss(xb, tb).sum()
      + jaxloss.dice_loss(x, t, smooth=0.0).sum()), argnums=(0, 1)))(x, xb)
  assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------------------
# optax: same calls, same numbers; and where jaxloss deliberately differs.


def test_optax_signatures_are_kept():
  for name in ("dice_loss", "binary_dice_loss",
               "multiclass_generalized_dice_loss"):
    ours = inspect.signature(getattr(jaxloss, name)).parameters
    theirs = inspect.signature(getattr(optax.losses, name)).parameters
    assert list(ours) == list(theirs), name
    for arg, param in theirs.items():
      assert ours[arg].kind == param.kind, (name, arg)
      assert ours[arg].default == param.default, (name, arg)


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_optax_parity():
  x, t = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(ONE_HOT, jnp.float32)
  xb, tb = (jnp.asarray(BIN_LOGITS, jnp.float32),
            jnp.asarray(BIN_TARGETS, jnp.float32))
  w = jnp.asarray(CLASS_W, jnp.float32)
  calls = {
      "dice": lambda m, x: m.dice_loss(x, t),
      "dice_options": lambda m, x: m.dice_loss(
          x, t, class_weights=w, smooth=0.1, alpha=0.2, beta=0.8,
          reduction="sum", ignore_background=True, axis=(1, 2)),
      "dice_none": lambda m, x: m.dice_loss(x, t, reduction="none", axis=1),
      "dice_one_channel": lambda m, x: m.dice_loss(x[..., :1], t[..., :1]),
      "dice_channel_added": lambda m, x: m.dice_loss(x[..., 0], t[..., :1]),
      "binary": lambda m, x: m.binary_dice_loss(xb + x[0, 0, 0, 0], tb),
      "binary_channel": lambda m, x: m.binary_dice_loss(
          xb[..., None] + x[0, 0, 0, 0], tb[..., None], smooth=0.3),
      "generalized": lambda m, x: m.multiclass_generalized_dice_loss(x, t),
      "generalized_bg": lambda m, x: m.multiclass_generalized_dice_loss(
          x, t, smooth=0.5, ignore_background=True),
  }

  @_jit
  def values_and_grads(x):
    return {name: [jax.value_and_grad(lambda x, m=m: jnp.sum(call(m, x)))(x)
                   for m in (jaxloss, optax.losses)]
            for name, call in calls.items()}

  # optax broadcasts its class weights implicitly.
  with jax.numpy_rank_promotion("allow"):
    results = values_and_grads(x)
  for name, (ours, theirs) in results.items():
    np.testing.assert_allclose(ours[0], theirs[0], rtol=2e-6, atol=1e-7,
                               err_msg=name)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=2e-5, atol=1e-7,
                               err_msg=name)
  with jax.numpy_rank_promotion("allow"):
    for name, call in calls.items():
      assert (jax.eval_shape(lambda x, c=call: c(jaxloss, x), x).shape
              == jax.eval_shape(lambda x, c=call: c(optax.losses, x), x).shape)
    # apply_softmax=False: optax checks the probabilities eagerly.
    probs = jnp.asarray(SOFT_PROBS, jnp.float32)
    np.testing.assert_allclose(
        jaxloss.dice_loss(probs, t, apply_softmax=False),
        optax.losses.dice_loss(probs, t, apply_softmax=False), rtol=2e-6)


def test_probabilities_without_softmax_work_under_jit_and_for_one_channel():
  p, y = jnp.asarray(PROBS, jnp.float32), jnp.asarray(BIN_TARGETS)
  with pytest.raises(ValueError, match="must be valid probability"):
    optax.losses.binary_dice_loss(p, y, apply_sigmoid=False)
  got = _jit(lambda p: jaxloss.binary_dice_loss(p, y,
                                                   apply_sigmoid=False))(p)
  np.testing.assert_allclose(
      got, ref_tversky(PROBS, BIN_TARGETS, 0.5, 0.5, 1.0, (1, 2)), rtol=1e-6)


def test_empty_class_with_zero_smoothing_is_a_perfect_match():
  x = jnp.full((1, 4, 2), -1e4).at[..., 0].set(1e4)   # class 1 never predicted
  t = jnp.zeros((1, 4, 2)).at[..., 0].set(1.0)        # and never present
  theirs = optax.losses.dice_loss(x, t, smooth=0.0, reduction="none")
  assert np.isnan(theirs[0, 1])

  @_jit
  def run(x):
    return jax.value_and_grad(lambda x: jaxloss.dice_loss(
        x, t, smooth=0.0, reduction="sum").sum())(x)

  value, grad = run(x)
  assert value == 0 and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(
      jaxloss.tversky_loss(jnp.zeros(3), jnp.zeros(3)), 0.0)


def test_generalized_dice_counts_in_float_where_optax_wraps_integers():
  n = 80_000   # class 0 counts 50_000 pixels: 50_000 ** 2 > 2 ** 31
  labels = np.zeros(n, np.int32)
  labels[:30_000] = 1
  t = jnp.asarray(np.eye(2, dtype=np.int32)[labels][None])
  x = jnp.asarray(rng.normal(size=(1, n, 2)), jnp.float32)
  ours = jaxloss.multiclass_generalized_dice_loss(x, t)
  expected = jaxloss.multiclass_generalized_dice_loss(x, t.astype(jnp.float32))
  np.testing.assert_allclose(ours, expected, rtol=1e-6)
  with jax.numpy_rank_promotion("allow"):
    theirs = optax.losses.multiclass_generalized_dice_loss(x, t)
  assert not np.isclose(theirs, expected, rtol=1e-3)


# ---------------------------------------------------------------------------
# Tversky: the Dice identity and Keras.


def test_tversky_with_equal_halves_is_dice():
  p, y = jnp.asarray(PROBS), jnp.asarray(BIN_TARGETS)
  for smooth in (0.0, 1.0):
    np.testing.assert_allclose(
        jaxloss.tversky_loss(p, y, alpha=0.5, beta=0.5, smooth=smooth,
                             axis=(1, 2)),
        jaxloss.dice_loss(p[..., None], y[..., None], smooth=smooth,
                          apply_softmax=False, reduction="none")[..., 0],
        rtol=1e-6)


def test_tversky_against_keras_formula():
  # keras.losses.tversky(y_true, y_pred, alpha, beta), from its source: its
  # alpha multiplies sum(y_true * (1 - y_pred)), the false negatives.
  def keras_tversky(y_true, y_pred, alpha, beta):
    tp = np.sum(y_true * y_pred)
    fn = np.sum((1 - y_pred) * y_true)
    fp = np.sum(y_pred * (1 - y_true))
    return 1 - tp / (tp + fn * alpha + fp * beta + 1e-7)

  got = jaxloss.tversky_loss(jnp.asarray(PROBS, jnp.float32),
                             jnp.asarray(BIN_TARGETS), alpha=0.7, beta=0.3)
  np.testing.assert_allclose(got, keras_tversky(BIN_TARGETS, PROBS, 0.3, 0.7),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# Errors.


def test_errors_name_the_function_and_argument():
  x = jnp.zeros((2, 3, 4))
  with pytest.raises(ValueError, match=r"dice_loss: targets shape \(2, 3, 5\) "
                     r"does not match predictions shape \(2, 3, 4\)"):
    jaxloss.dice_loss(x, jnp.zeros((2, 3, 5)))
  with pytest.raises(TypeError, match="dice_loss: predictions must have a "
                     "floating dtype"):
    jaxloss.dice_loss(jnp.zeros((2, 3, 4), jnp.int32), x)
  with pytest.raises(ValueError, match=r"dice_loss: class_weights must have "
                     r"shape \(4,\) \(one per class\), got \(3,\)"):
    jaxloss.dice_loss(x, x, class_weights=jnp.ones(3))
  with pytest.raises(ValueError, match=r"dice_loss: axis \(1, 2\) must leave "
                     r"out the class axis"):
    jaxloss.dice_loss(x, x, axis=(1, 2))
  with pytest.raises(ValueError, match="dice_loss: reduction must be one of"):
    jaxloss.dice_loss(x, x, reduction="batchmean")
  with pytest.raises(ValueError, match=r"multiclass_generalized_dice_loss: "
                     r"targets shape \(2, 3\) does not match"):
    jaxloss.multiclass_generalized_dice_loss(x, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"tversky_loss: targets shape \(5,\) "
                     r"does not broadcast to predictions shape \(2, 3, 4\)"):
    jaxloss.tversky_loss(x, jnp.zeros(5))
  with pytest.raises(ValueError, match="tversky_loss: axis 3 is out of "
                     "bounds for predictions of rank 3"):
    jaxloss.tversky_loss(x, x, axis=3)
  with pytest.raises(TypeError, match="binary_dice_loss: targets must be "
                     "real"):
    jaxloss.binary_dice_loss(x, jnp.zeros((2, 3, 4), jnp.complex64))
