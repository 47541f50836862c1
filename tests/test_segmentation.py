"""Dice, generalized Dice and Tversky losses against float64 NumPy
references, optax and Keras's formula."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from derivatives import check_derivatives
from helpers import check_grads_directional, jit_fast, temporaries

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
  # The empty pair's derivatives are 0, eager and jitted; other classes'
  # values are the plain ratio's, and a NaN stays NaN.
  for f in (jax.grad(jaxloss.tversky_loss), _jit(jax.grad(
      lambda p, t: jaxloss.tversky_loss(p, t, alpha=0.3, beta=0.7)))):
    np.testing.assert_array_equal(f(jnp.zeros(3), jnp.zeros(3)), 0.0)
  np.testing.assert_allclose(
      jaxloss.tversky_loss(jnp.array([[0.0, 0.0], [0.5, 0.25]]),
                           jnp.array([[0.0, 0.0], [1.0, 0.0]]), axis=1),
      [0.0, 1 - 0.5 / (0.5 + 0.5 * 0.25 + 0.5 * 0.5)], rtol=1e-6)
  assert np.isnan(jaxloss.tversky_loss(jnp.array([jnp.nan, 0.0]),
                                       jnp.zeros(2)))
  # The value alone (arithmetic) and the value under differentiation
  # (selects) agree, empty pairs included.
  p = jnp.array([[0.0, 0.0], [0.5, 0.25], [0.0, 0.0]])
  t = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  total = lambda p: jnp.sum(jaxloss.tversky_loss(p, t, axis=1))
  np.testing.assert_array_equal(jax.value_and_grad(total)(p)[0], total(p))


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
                     r"does not broadcast to predictions shape \(2, 3, 4\): "
                     r"the class axis 2 must have length 4, as in "
                     r"predictions, not 5"):
    jaxloss.dice_loss(x, jnp.zeros((2, 3, 5)))
  with pytest.raises(TypeError, match="dice_loss: predictions must have a "
                     "floating dtype"):
    jaxloss.dice_loss(jnp.zeros((2, 3, 4), jnp.int32), x)
  with pytest.raises(ValueError, match=r"dice_loss: class_weights shape "
                     r"\(3,\) does not broadcast to the per-class loss shape "
                     r"\(2, 4\): the class axis 1 must have length 4"):
    jaxloss.dice_loss(x, x, class_weights=jnp.ones(3))
  with pytest.raises(ValueError, match=r"dice_loss: axis \(1, 2\) must leave "
                     r"out the class axis"):
    jaxloss.dice_loss(x, x, axis=(1, 2))
  with pytest.raises(ValueError, match="dice_loss: reduction must be one of"):
    jaxloss.dice_loss(x, x, reduction="batchmean")
  with pytest.raises(ValueError, match=r"multiclass_generalized_dice_loss: "
                     r"targets shape \(2, 3\) does not broadcast to "
                     r"predictions shape \(2, 3, 4\)"):
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


# ---------------------------------------------------------------------------
# The shape contract: targets broadcast to the predictions, never enlarge
# them; the class axis matches exactly.


def test_shape_contract():
  def raises(call, name, t_shape, p_shape, why):
    with pytest.raises(ValueError, match=(
        rf"^{name}: targets shape {re.escape(str(t_shape))} does not "
        rf"broadcast to predictions shape {re.escape(str(p_shape))}: "
        rf"{why}")):
      call(jnp.full(p_shape, 0.5), jnp.zeros(t_shape))

  # [N] against [N, 1], both ways.
  raises(jaxloss.tversky_loss, "tversky_loss", (4, 1), (4,),
         "it has more axes than predictions")
  raises(jaxloss.tversky_loss, "tversky_loss", (4,), (4, 1),
         "axis 1 has length 4 where predictions has 1")
  raises(jaxloss.tversky_loss, "tversky_loss", (3, 4), (1, 4),
         "axis 0 has length 3 where predictions has 1")
  # One channel of targets against C classes (optax's channel rule adds it).
  for fn in ("dice_loss", "multiclass_generalized_dice_loss"):
    raises(getattr(jaxloss, fn), fn, (2, 3, 1), (2, 3, 4),
           "the class axis 2 must have length 4, as in predictions, not 1")
  # A missing class axis reads as one channel (optax's rule), never as a
  # batch broadcast.
  with pytest.raises(ValueError, match=(
      r"^dice_loss: targets shape \(2, 3, 1\) does not broadcast to "
      r"predictions shape \(2, 3, 4\): the class axis 2 must have length 4")):
    jaxloss.dice_loss(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=(
      r"^dice_loss: targets shape \(3, 4, 1\) does not broadcast to "
      r"predictions shape \(2, 3, 4\): axis 0 has length 3")):
    jaxloss.dice_loss(jnp.zeros((2, 3, 4)), jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match=(
      r"^binary_dice_loss: targets shape \(2, 3, 2\) does not broadcast to "
      r"predictions shape \(2, 3, 1\): axis 2 has length 2 where predictions "
      r"has 1")):
    jaxloss.binary_dice_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3, 2)))
  # Batch axes of length 1 broadcast.
  x, t = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(ONE_HOT, jnp.float32)
  p, y = jnp.asarray(PROBS, jnp.float32), jnp.asarray(BIN_TARGETS)
  for call in (lambda x, t: jaxloss.dice_loss(x, t, reduction="none"),
               jaxloss.multiclass_generalized_dice_loss):
    np.testing.assert_allclose(call(x, t[:1]),
                               call(x, jnp.broadcast_to(t[:1], t.shape)),
                               rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.tversky_loss(p, y[:1], axis=(1, 2)),
      jaxloss.tversky_loss(p, jnp.broadcast_to(y[:1], y.shape), axis=(1, 2)),
      rtol=1e-6)


@pytest.mark.parametrize("name", ["dice_loss", "binary_dice_loss",
                                  "multiclass_generalized_dice_loss",
                                  "tversky_loss"])
def test_empty_batch(name):
  fn = getattr(jaxloss, name)
  x = jnp.zeros((0, 3, 2 if name != "binary_dice_loss" else 1))
  kwargs = {"axis": (1, 2), "reduction": "mean"} if (
      name == "tversky_loss") else {}
  (value, out), grad = jit_fast(jax.value_and_grad(
      lambda x: (jnp.sum(fn(x, x, **kwargs)), fn(x, x, **kwargs)),
      has_aux=True))(x)
  want = (0,) if name in ("dice_loss", "binary_dice_loss") else ()
  assert out.shape == want and np.all(np.asarray(out) == 0), out
  assert value == 0 and grad.shape == x.shape


# ---------------------------------------------------------------------------
# Hyperparameters: traced or concrete, one compile, differentiable, checked.

HYPERS = [("dice_loss", "smooth"), ("dice_loss", "alpha"),
          ("dice_loss", "beta"), ("binary_dice_loss", "smooth"),
          ("multiclass_generalized_dice_loss", "smooth"),
          ("tversky_loss", "alpha"), ("tversky_loss", "beta"),
          ("tversky_loss", "smooth")]


def _hyper_call(name, hyper, dtype=jnp.float32):
  """``hyper -> loss`` on fixed inputs, summed to a scalar."""
  fn = getattr(jaxloss, name)
  if name == "binary_dice_loss":
    args = (BIN_LOGITS, BIN_TARGETS)
  elif name == "tversky_loss":
    args = (PROBS, BIN_TARGETS)
  else:
    args = (LOGITS, ONE_HOT)
  args = tuple(jnp.asarray(a, dtype) for a in args)
  kwargs = {"axis": (1, 2)} if name == "tversky_loss" else {}
  return lambda h: jnp.sum(fn(*args, **kwargs, **{hyper: h}))


@pytest.mark.parametrize("name,hyper", HYPERS)
def test_hyperparameters(name, hyper):
  fn = getattr(jaxloss, name)
  assert fn.hyperparameters[hyper].interval() == "[0, inf)"
  f = _hyper_call(name, hyper)
  values = (0.3, 0.8)
  concrete = [f(v) for v in values]
  size = fn.compiled._cache_size()
  concrete.append(f(1.7))                # a new value: no new compile
  assert fn.compiled._cache_size() == size
  # Traced (a jit argument) under vmap: the same numbers.
  traced = jax.jit(jax.vmap(f))(jnp.asarray(values + (1.7,)))
  np.testing.assert_allclose(traced, concrete, rtol=1e-6)
  # A concrete value out of range raises when called, naming both.
  with pytest.raises(ValueError, match=rf"^{name}: {hyper} must be in "
                     r"\[0, inf\), got -0.5"):
    f(-0.5)
  with pytest.raises(jaxloss.CheckError, match=rf"{name}: {hyper} must be "
                     r"in \[0, inf\)"):
    jaxloss.checked(jax.jit(f))(jnp.float32(-0.5))
  # The gradient against float64 central differences.
  with jax.enable_x64(True):
    f64 = _hyper_call(name, hyper, jnp.float64)
    grad = jax.jit(jax.grad(f64))(0.6)
    eps = 1e-6
    np.testing.assert_allclose(grad, (f64(0.6 + eps) - f64(0.6 - eps))
                               / (2 * eps), rtol=1e-6, atol=1e-9)


def test_a_concrete_zero_leaves_its_term_out():
  p, y = jnp.asarray(PROBS, jnp.float32), jnp.asarray(BIN_TARGETS)

  def sums(**kwargs):
    jaxpr = jax.make_jaxpr(lambda p: jaxloss.tversky_loss(p, y, **kwargs))(p)
    return str(jaxpr).count("reduce_sum")

  # FP and FN each need a sum of their own (the value checks have theirs).
  tp_only = sums(alpha=0.0, beta=0.0)
  assert sums(alpha=0.5, beta=0.0) == sums(alpha=0.0, beta=0.5) == tp_only + 1
  assert sums(alpha=0.5, beta=0.5) == tp_only + 2
  # A traced zero is the same number.
  for hyper in ("alpha", "beta", "smooth"):
    np.testing.assert_allclose(
        jax.jit(lambda h, k=hyper: jaxloss.tversky_loss(p, y, **{k: h}))(0.0),
        jaxloss.tversky_loss(p, y, **{hyper: 0}), rtol=1e-6)


def test_second_order_derivatives():
  """jvp and Hessian-vector products: softmax and sigmoid, every Tversky
  term, class weights and the generalized weights."""
  names = ("binary_dice_loss", "dice_loss_options",
           "multiclass_generalized_dice_loss", "tversky_loss_all_axes")
  with jax.enable_x64(True):
    inputs = _inputs(jnp.float64)

    def total(floats):
      return sum(CASES[n][0](*floats[n], *inputs[n][1], reduction="sum")
                 for n in names)

    check_derivatives(total, ({n: inputs[n][0] for n in names},),
                      directions=1)


# ---------------------------------------------------------------------------
# apply_softmax=False: probabilities over C > 1 classes sum to 1, as optax
# checks on concrete input.


def test_probabilities_must_sum_to_one():
  p = np.full((1, 2, 3), 0.3)                  # sums 0.9
  t = np.eye(3)[None, [0, 2]]
  message = (r"predictions must be probabilities that sum to 1 over the "
             r"class axis with apply_softmax=False, got sums in \[0.9, 0.9\]")
  with pytest.raises(ValueError, match="must be valid probability"):
    optax.losses.dice_loss(jnp.asarray(p), jnp.asarray(t),
                           apply_softmax=False)
  for name in ("dice_loss", "multiclass_generalized_dice_loss"):
    fn = getattr(jaxloss, name)
    for given in (p, jnp.asarray(p, jnp.float32)):
      with pytest.raises(ValueError, match=f"^{name}: {message}"):
        fn(given, t, apply_softmax=False)
    # Traced: checked under jaxloss.checked only.
    traced = jax.jit(lambda p, fn=fn: fn(p, t, apply_softmax=False))
    assert np.all(np.isfinite(traced(p)))
    with pytest.raises(jaxloss.CheckError, match=(
        rf"{name}: predictions.sum\(-1\) must be 1 with apply_softmax=False "
        r"\(probabilities over the classes\); first offending element "
        r"predictions.sum\(-1\)\[0, 0\] = 0.9")):
      jaxloss.checked(traced)(p)
  # Softmax probabilities rounded to half precision sum to 1 within their
  # rounding; a single channel holds sigmoid probabilities.
  half = jnp.asarray(SOFT_PROBS, jnp.bfloat16)
  jaxloss.dice_loss(half, jnp.asarray(ONE_HOT), apply_softmax=False)
  jaxloss.dice_loss(p[..., :1], t[..., :1], apply_softmax=False)
  jaxloss.binary_dice_loss(p[..., 0], t[..., 0], apply_sigmoid=False)


def test_binary_gradient_keeps_no_input_sized_temporary():
  # One class is computed without a class axis of size 1: summed with it,
  # XLA:CPU wrote the probabilities out and copied them before the sums
  # (optax does), an input-sized temporary for the gradient too. Input
  # with that axis still gets one: the gradient's layout, then a copy.
  x = jax.ShapeDtypeStruct((64, 32, 32), jnp.float32)

  def mean(x, t):
    return jnp.mean(jaxloss.binary_dice_loss(x, t))

  assert temporaries(jax.value_and_grad(mean), x, x) < x.size * 4 / 8


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
def test_value_keeps_no_more_temporaries_than_optax():
  # The empty class's 0/0 in arithmetic: a select on the per-class sums kept
  # XLA:CPU from fusing them with the softmax, which it then wrote out
  # (4 MiB here, optax's value 8 KiB).
  x = jax.ShapeDtypeStruct((2048, 16, 16, 2), jnp.float32)
  for ours, theirs in ((jaxloss.dice_loss, optax.losses.dice_loss),
                       (jaxloss.multiclass_generalized_dice_loss,
                        optax.losses.multiclass_generalized_dice_loss)):
    with jax.numpy_rank_promotion("allow"):   # optax's class weights
      limit = temporaries(lambda x, t: jnp.mean(theirs(x, t)), x, x)
    assert temporaries(lambda x, t: jnp.mean(ours(x, t)), x, x) <= limit


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
@pytest.mark.parametrize("dtype, copies", [(jnp.float32, 1), (jnp.bfloat16, 2)])
def test_softmax_gradient_keeps_one_probability_array(dtype, copies):
  # The derivatives' own softmax, exp(x - logsumexp(x)), summed over the
  # image at once: through autodiff of jax.nn.softmax XLA:CPU wrote out the
  # exponentials, the probabilities and their normalizer broadcast to the
  # logits' shape (2.4 float32 copies of the logits, 4.3 in bfloat16, where
  # the targets' conversion is written out too; optax's: 2.4 and 2.2).
  x = jax.ShapeDtypeStruct((16, 32, 32, 8), dtype)
  for fn in (jaxloss.dice_loss, jaxloss.multiclass_generalized_dice_loss):
    step = jax.value_and_grad(lambda x, t, fn=fn: jnp.mean(fn(x, t)))
    assert temporaries(step, x, x) <= 1.01 * copies * x.size * 4, fn


def test_softmax_derivatives_in_the_targets_too():
  # Soft targets are differentiated through the same rule: forward and
  # reverse mode against float64 finite differences, with every option.
  with jax.enable_x64(True):
    x = jnp.asarray(LOGITS)
    t = jnp.asarray(np_softmax(LOGITS[::-1] / 2))
    w = jnp.asarray(CLASS_W)

    def total(x, t):
      return (jnp.sum(jaxloss.dice_loss(x, t, class_weights=w, smooth=0.3,
                                        alpha=0.2, beta=0.7))
              + jaxloss.multiclass_generalized_dice_loss(x, t))

    check_derivatives(total, (x, t))
