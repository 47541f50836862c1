"""KL divergences: optax's row-wise ones and torch's pointwise kl_div."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxloss
from derivatives import check_derivatives
from helpers import condition_shapes
from helpers import temporaries

rng = np.random.default_rng(11)
N, C = 3, 4
LOG_P = np.log(rng.dirichlet(np.ones(C), N))
T = rng.dirichlet(np.ones(C), N)
T_ZERO = T.copy()
T_ZERO[0, 1] = T_ZERO[2, 3] = 0.0
LOG_P_INF = LOG_P.copy()
LOG_P_INF[0, 1] = -np.inf                # zero target on a -inf prediction
MEASURE = rng.uniform(0.2, 2.0, (N, C))


# convex_kl_divergence warns at every call (optax's deprecation): the tests
# that run it for its values let it; test_convex_kl_divergence_warns_as_optax
# checks the warning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The function convex_kl_divergence is deprecated:"
    "DeprecationWarning")

KL = ("convex_kl_divergence", "generalized_kl_divergence", "kl_div",
      "kl_divergence", "kl_divergence_with_log_targets")


def target_name(name):
  return "log_targets" if name == "kl_divergence_with_log_targets" else (
      "targets")


def ref_kl_terms(lp, t):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - lp), 0)


def ref_generalized_terms(lp, t):
  return ref_kl_terms(lp, t) + np.exp(lp) - t


ROWWISE = {
    "kl_divergence": ref_kl_terms,
    "generalized_kl_divergence": ref_generalized_terms,
    "convex_kl_divergence": ref_generalized_terms,
}


def optax_fn(name):
  fn = getattr(optax.losses, name)

  def quiet(*args, **kwargs):
    with warnings.catch_warnings():
      # optax's convex_kl_divergence is deprecated there, with a warning.
      warnings.simplefilter("ignore", DeprecationWarning)
      return fn(*args, **kwargs)
  return jax.jit(quiet, static_argnames="axis")


def value_and_grads(fn, *args, **kwargs):
  return jax.jit(jax.value_and_grad(
      lambda *a: jnp.sum(fn(*a, **kwargs)), argnums=(0, 1)))(*args)


@pytest.mark.parametrize("name", sorted(ROWWISE))
def test_rowwise_reference_float64(name):
  fn, ref = getattr(jaxloss, name), ROWWISE[name]
  keep = rng.random((N, C)) > 0.3
  with jax.enable_x64(True):
    lp, t = jnp.asarray(LOG_P_INF), jnp.asarray(T_ZERO)
    got = fn(lp, t)
    assert got.dtype == jnp.float64 and got.shape == (N,)
    np.testing.assert_allclose(got, ref(LOG_P_INF, T_ZERO).sum(-1),
                               rtol=1e-12)
    np.testing.assert_allclose(
        fn(lp, t, where=jnp.asarray(keep)),
        np.where(keep, ref(LOG_P_INF, T_ZERO), 0).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(fn(lp, t, axis=None),
                               ref(LOG_P_INF, T_ZERO).sum(), rtol=1e-12)
    np.testing.assert_allclose(fn(lp.T, t.T, axis=0), got, rtol=1e-12)
    np.testing.assert_allclose(fn(lp, t, reduction="mean"), got.mean(),
                               rtol=1e-12)
    np.testing.assert_allclose(fn(lp, t, reduction="sum"), got.sum(),
                               rtol=1e-12)
    check_grads(fn, (jnp.asarray(LOG_P), jnp.asarray(MEASURE)), order=1,
                modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("name", sorted(ROWWISE))
def test_rowwise_optax_parity(name):
  fn, theirs = getattr(jaxloss, name), optax_fn(name)
  lp, t = jnp.asarray(LOG_P, jnp.float32), jnp.asarray(T_ZERO, jnp.float32)
  keep = jnp.asarray(rng.random((N, C)) > 0.3)
  np.testing.assert_allclose(fn(lp, t), theirs(lp, t), rtol=1e-6)
  np.testing.assert_allclose(fn(lp, t, where=keep), theirs(lp, t, where=keep),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(fn(lp, t, axis=None), theirs(lp, t, axis=None),
                             rtol=1e-6)
  # Zero targets against -inf log-predictions: optax gives NaN, and NaN
  # target gradients at every zero target.
  lp_inf = jnp.asarray(LOG_P_INF, jnp.float32)
  assert np.isnan(theirs(lp_inf, t)[0])
  _, (_, their_dt) = value_and_grads(theirs, lp, t)
  assert np.isnan(their_dt[0, 1])
  value, (d_lp, d_t) = value_and_grads(fn, lp_inf, t)
  assert np.isfinite(value)
  assert np.all(np.isfinite(d_lp)) and np.all(np.isfinite(d_t))
  # At a zero target the t log t term carries no gradient; the generalized
  # divergence keeps the -t term's -1.
  zero_slope = 0 if name == "kl_divergence" else -1
  assert d_t[0, 1] == zero_slope and d_t[2, 3] == zero_slope
  assert d_lp[0, 1] == 0


def test_kl_divergence_gradients_and_extremes():
  lp, t = jnp.asarray(LOG_P, jnp.float32), jnp.asarray(T, jnp.float32)
  _, (d_lp, d_t) = value_and_grads(jaxloss.kl_divergence, lp, t)
  np.testing.assert_allclose(d_lp, -t, rtol=1e-6)
  np.testing.assert_allclose(d_t, jnp.log(t) + 1 - lp, rtol=1e-5)
  # A positive target on a -inf or -1e4 log-prediction: inf or 1e4-sized,
  # with finite gradients for the log-predictions.
  lp_extreme = lp.at[0, 0].set(-jnp.inf).at[1, 0].set(-1e4)
  value, (d_lp, _) = value_and_grads(jaxloss.kl_divergence, lp_extreme, t)
  assert value == jnp.inf
  np.testing.assert_allclose(d_lp, -t, rtol=1e-6)
  assert float(jaxloss.kl_divergence(lp_extreme, t)[1]) == pytest.approx(
      1e4 * float(t[1, 0]), rel=1e-3)


def test_kl_divergence_with_log_targets_underflowing_targets():
  """A log-target whose exponential underflows is a zero target, as
  kl_divergence reads it: 0 with zero gradients on a -inf log-prediction
  (it was NaN), also in forward mode in the log-predictions alone."""
  lp = jnp.array([[-jnp.inf, 0.0], [-1.0, 0.0]])
  lt = jnp.array([[-110.0, 0.0], [-110.0, 0.0]])
  value = jaxloss.kl_divergence_with_log_targets(lp, lt)
  np.testing.assert_array_equal(value, jaxloss.kl_divergence(lp, jnp.exp(lt)))
  assert np.all(np.isfinite(value))
  d_lp = jax.grad(lambda lp: jaxloss.kl_divergence_with_log_targets(
      lp, lt)[0])(lp)
  np.testing.assert_array_equal(d_lp, [[0.0, -1.0], [0.0, 0.0]])
  _, tangent = jax.jvp(
      lambda lp: jaxloss.kl_divergence_with_log_targets(lp, lt),
      (lp,), (jnp.ones_like(lp),))
  np.testing.assert_array_equal(tangent, [-1.0, -1.0])
  # Positive mass on a -inf log-prediction costs inf; forward mode in the
  # log-predictions alone stays finite there (no inf * 0).
  lp = jnp.array([-jnp.inf, 0.0])
  lt = jnp.log(jnp.array([0.5, 0.5]))
  value, tangent = jax.jvp(
      lambda lp: jaxloss.kl_divergence_with_log_targets(lp, lt),
      (lp,), (jnp.ones_like(lp),))
  assert value == jnp.inf and tangent == -1.0


def test_kl_divergence_with_log_targets():
  with np.errstate(divide="ignore"):
    lt = np.log(T_ZERO)                         # -inf at the zero targets
  with jax.enable_x64(True):
    got = jaxloss.kl_divergence_with_log_targets(jnp.asarray(LOG_P_INF),
                                                 jnp.asarray(lt))
    np.testing.assert_allclose(got, ref_kl_terms(LOG_P_INF, T_ZERO).sum(-1),
                               rtol=1e-12)
    check_grads(jaxloss.kl_divergence_with_log_targets,
                (jnp.asarray(LOG_P), jnp.asarray(np.log(T))), order=1,
                modes=("rev",), eps=1e-6)
  lp, ltf = jnp.asarray(LOG_P, jnp.float32), jnp.asarray(np.log(T), jnp.float32)
  theirs = optax_fn("kl_divergence_with_log_targets")
  np.testing.assert_allclose(
      jaxloss.kl_divergence_with_log_targets(lp, ltf), theirs(lp, ltf),
      rtol=1e-6)
  lt32 = jnp.asarray(lt, jnp.float32)
  assert np.isnan(theirs(lp, lt32)[0])
  value, grads = value_and_grads(jaxloss.kl_divergence_with_log_targets,
                                 jnp.asarray(LOG_P_INF, jnp.float32), lt32)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert grads[0][0, 1] == 0 and grads[1][0, 1] == 0


def test_rowwise_transforms_and_dtypes():
  lp, t = jnp.asarray(LOG_P, jnp.float32), jnp.asarray(T, jnp.float32)
  plain = jaxloss.kl_divergence(lp, t)
  np.testing.assert_allclose(jax.vmap(jaxloss.kl_divergence)(lp, t), plain,
                             rtol=1e-6)
  with jax.disable_jit():
    eager = jaxloss.kl_divergence(lp, t)
  np.testing.assert_allclose(eager, plain, rtol=1e-6)
  # Broadcasting: one target row against every prediction (the other way
  # round enlarges the loss: an error, see test_shape_contract).
  np.testing.assert_allclose(jaxloss.kl_divergence(lp, t[:1]),
                             jaxloss.kl_divergence(lp, jnp.broadcast_to(
                                 t[:1], lp.shape)))
  for dtype in (jnp.float16, jnp.bfloat16):
    got = jaxloss.kl_divergence(lp.astype(dtype), t.astype(dtype))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, plain, rtol=0.05, atol=0.02)
  # A mean over no kept row is 0.
  assert jaxloss.kl_divergence(lp, t, where=jnp.zeros((N, C), bool),
                               reduction="mean") == 0
  half_rows = jnp.zeros((N, C), bool).at[0].set(True)
  np.testing.assert_allclose(
      jaxloss.kl_divergence(lp, t, where=half_rows, reduction="mean"),
      plain[0], rtol=1e-6)


def test_convex_kl_divergence_warns_as_optax():
  lp, t = jnp.asarray(LOG_P, jnp.float32), jnp.asarray(T, jnp.float32)
  with pytest.warns(DeprecationWarning) as ours:
    got = jaxloss.convex_kl_divergence(lp, t)
  with pytest.warns(DeprecationWarning) as theirs:
    optax.losses.convex_kl_divergence(lp, t)
  assert str(ours[0].message) == str(theirs[0].message) == (
      "The function convex_kl_divergence is deprecated. Please use "
      "generalized_kl_divergence instead.")
  assert ours[0].filename == __file__        # the caller's line
  np.testing.assert_array_equal(got,
                                jaxloss.generalized_kl_divergence(lp, t))
  # Under the caller's jit it warns when traced.
  with pytest.warns(DeprecationWarning, match="convex_kl_divergence"):
    jax.jit(jaxloss.convex_kl_divergence)(lp, t)


@pytest.mark.parametrize("name", KL)
def test_shape_contract(name):
  """Targets broadcast to log_predictions' shape, never enlarge it; the
  summed (class) axis of the row-wise divergences matches exactly."""
  fn, t = getattr(jaxloss, name), target_name(name)

  def raises(lp_shape, t_shape, why):
    with pytest.raises(ValueError, match=(
        rf"^{name}: {t} shape {re.escape(str(t_shape))} does not broadcast "
        rf"to log_predictions shape {re.escape(str(lp_shape))}: {why}")):
      fn(jnp.zeros(lp_shape), jnp.zeros(t_shape))

  # [N] against [N, 1], both ways: torch's kl_div broadcasts them to [N, N].
  raises((3,), (3, 1), "it has more axes than log_predictions")
  raises((3, 1), (3,), "axis 1 has length 3 where log_predictions has 1")
  raises((1, 4), (2, 4), "axis 0 has length 2 where log_predictions has 1")
  lp = jnp.asarray(LOG_P, jnp.float32)
  row = jnp.asarray(T[:1], jnp.float32)
  if name == "kl_divergence_with_log_targets":
    row = jnp.log(row)
  np.testing.assert_allclose(fn(lp, row),
                             fn(lp, jnp.broadcast_to(row, lp.shape)))
  if name == "kl_div":      # elementwise: no class axis
    np.testing.assert_allclose(fn(lp, row[:, :1]),
                               fn(lp, jnp.broadcast_to(row[:, :1], lp.shape)))
    return
  raises((N, C), (N, 1), r"the class axis 1 must have length 4, as in "
         r"log_predictions, not 1")
  with pytest.raises(ValueError, match=(
      rf"{name}: where shape \(3, 4, 1\) does not broadcast to "
      r"log_predictions shape \(3, 4\)")):
    fn(lp, lp, where=jnp.ones((N, C, 1), bool))
  # A mask of length 1 on the summed axis drops whole rows, as optax's.
  rows = jnp.array([[True], [False], [True]])
  np.testing.assert_allclose(
      fn(lp, jnp.exp(lp) if t == "targets" else lp, where=rows),
      fn(lp, jnp.exp(lp) if t == "targets" else lp,
         where=jnp.broadcast_to(rows, lp.shape)))


@pytest.mark.parametrize("name", KL)
def test_empty_batch(name):
  fn = getattr(jaxloss, name)
  lp, t = jnp.zeros((0, C)), jnp.zeros((0, C))
  reductions = ("none", "mean", "sum") + (
      ("batchmean",) if name == "kl_div" else ())
  with jax.disable_jit():
    for reduction in reductions:
      value, grads = jax.value_and_grad(
          lambda lp, t, r=reduction: jnp.sum(fn(lp, t, reduction=r)),
          argnums=(0, 1))(lp, t)
      out = fn(lp, t, reduction=reduction)
      want_shape = ((0, C) if name == "kl_div" else (0,)) if (
          reduction == "none") else ()
      assert out.shape == want_shape and np.all(np.asarray(out) == 0)
      assert value == 0 and all(g.shape == (0, C) for g in grads)


def test_forward_and_second_order_derivatives():
  """jvp, jacfwd and hessians (forward over reverse) of every divergence
  against float64 finite differences, on positive targets."""
  def total(lp, t):
    out = 0.0
    for i, name in enumerate(KL):
      target = jnp.log(t) if name == "kl_divergence_with_log_targets" else t
      out = out + (i + 1) * jnp.sum(getattr(jaxloss, name)(lp, target))
    return out

  with jax.enable_x64(True):
    check_derivatives(total, (jnp.asarray(LOG_P), jnp.asarray(MEASURE)))


def test_rowwise_errors():
  lp = jnp.zeros((2, 3))
  with pytest.raises(TypeError, match="kl_divergence: targets must have a "
                     "floating dtype, got int32"):
    jaxloss.kl_divergence(lp, jnp.zeros((2, 3), int))
  with pytest.raises(TypeError, match="kl_divergence: log_predictions must "
                     "have a floating dtype"):
    jaxloss.kl_divergence(jnp.zeros((2, 3), int), lp)
  with pytest.raises(ValueError, match=r"generalized_kl_divergence: targets "
                     r"shape \(2, 4\) does not broadcast to log_predictions "
                     r"shape \(2, 3\)"):
    jaxloss.generalized_kl_divergence(lp, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="kl_divergence_with_log_targets: axis "
                     "2 is out of bounds for log_predictions of rank 2"):
    jaxloss.kl_divergence_with_log_targets(lp, lp, axis=2)
  with pytest.raises(TypeError, match="convex_kl_divergence: where must be a "
                     "boolean mask"), pytest.warns(DeprecationWarning):
    jaxloss.convex_kl_divergence(lp, lp, where=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="kl_divergence: reduction must be one "
                     "of 'none', 'mean', 'sum', got 'batchmean'"):
    jaxloss.kl_divergence(lp, lp, reduction="batchmean")


# ----------------------------------------------------------------------------
# kl_div (torch's conventions)


def test_kl_div_reference_and_reductions():
  with jax.enable_x64(True):
    lp, t = jnp.asarray(LOG_P_INF), jnp.asarray(T_ZERO)
    terms = ref_kl_terms(LOG_P_INF, T_ZERO)
    got = jaxloss.kl_div(lp, t)
    assert got.shape == (N, C)
    np.testing.assert_allclose(got, terms, rtol=1e-12)
    np.testing.assert_allclose(jaxloss.kl_div(lp, t, reduction="sum"),
                               terms.sum(), rtol=1e-12)
    np.testing.assert_allclose(jaxloss.kl_div(lp, t, reduction="mean"),
                               terms.mean(), rtol=1e-12)
    np.testing.assert_allclose(jaxloss.kl_div(lp, t, reduction="batchmean"),
                               terms.sum() / N, rtol=1e-12)
    np.testing.assert_allclose(
        jaxloss.kl_div(lp, jnp.log(t), log_target=True), terms, rtol=1e-12)
    # batchmean of an unbatched (0-d) input divides by 1, as torch.
    np.testing.assert_allclose(
        jaxloss.kl_div(lp[2, 0], t[2, 0], reduction="batchmean"), terms[2, 0],
        rtol=1e-12)
  # Every row's sum is kl_divergence.
  np.testing.assert_allclose(
      jaxloss.kl_div(jnp.asarray(LOG_P, jnp.float32),
                     jnp.asarray(T, jnp.float32)).sum(-1),
      jaxloss.kl_divergence(jnp.asarray(LOG_P, jnp.float32),
                            jnp.asarray(T, jnp.float32)), rtol=1e-6)


def test_kl_div_edges_and_dtypes():
  lp = jnp.asarray(LOG_P_INF, jnp.float32)
  t = jnp.asarray(T_ZERO, jnp.float32)
  value, (d_lp, d_t) = value_and_grads(jaxloss.kl_div, lp, t)
  assert np.isfinite(value)                 # torch: NaN at 0 * -inf
  assert np.all(np.isfinite(d_lp)) and np.all(np.isfinite(d_t))
  lt = jnp.log(t)
  value, (d_lp, d_lt) = value_and_grads(jaxloss.kl_div, lp, lt,
                                        log_target=True)
  assert np.isfinite(value)
  assert np.all(np.isfinite(d_lp)) and np.all(np.isfinite(d_lt))
  for dtype in (jnp.float16, jnp.bfloat16):
    assert jaxloss.kl_div(lp.astype(dtype), t).dtype == jnp.float32
  np.testing.assert_allclose(jax.vmap(jaxloss.kl_div)(lp, t),
                             jaxloss.kl_div(lp, t), rtol=1e-6)


def test_kl_div_errors():
  with pytest.raises(ValueError, match="kl_div: reduction must be one of "
                     "'none', 'mean', 'sum', 'batchmean', got 'avg'"):
    jaxloss.kl_div(jnp.zeros(3), jnp.zeros(3), reduction="avg")
  with pytest.raises(TypeError, match="kl_div: log_target must be a bool, "
                     "got 1"):
    jaxloss.kl_div(jnp.zeros(3), jnp.zeros(3), log_target=1)
  with pytest.raises(ValueError, match=r"kl_div: targets shape \(2,\) does "
                     r"not broadcast to log_predictions shape \(3,\)"):
    jaxloss.kl_div(jnp.zeros(3), jnp.zeros(2))
  # torch: "kl_div: Complex inputs not supported", "Integral inputs not
  # supported".
  with pytest.raises(TypeError, match="kl_div: targets must have a floating "
                     "dtype, got complex64"):
    jaxloss.kl_div(jnp.zeros(3), jnp.zeros(3, jnp.complex64))
  with pytest.raises(TypeError, match="kl_div: targets must have a floating "
                     "dtype, got int32"):
    jaxloss.kl_div(jnp.zeros(3), jnp.zeros(3, jnp.int32))


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the plain form is for XLA:CPU's fused sums")
@pytest.mark.parametrize("mode", ["value", "grad"])
def test_log_target_kl_sums_the_plain_terms_unless_one_is_nan(mode):
  # A guard on every term costs XLA:CPU's fused sum a fifth of its time:
  # the plain sum runs behind one scalar condition, the guarded one only
  # for input where a term is 0 * inf.
  lp = jnp.asarray(np.log(rng.dirichlet(np.ones(C), (4, N))), jnp.float32)
  lt = jnp.asarray(np.log(rng.dirichlet(np.ones(C), (4, N))), jnp.float32)

  def f(lp, lt):
    return jaxloss.kl_divergence_with_log_targets(lp, lt, reduction="sum")

  g = jax.value_and_grad(f, argnums=(0, 1)) if mode == "grad" else f
  # Reduced, the condition is on the total: one sum of every term, never
  # the rows written out.
  assert condition_shapes(jax.jit(g).lower(lp, lt).compile().as_text()) == [
      "f32[]"]
  lt = lt.at[0, 1, 2].set(-jnp.inf).at[2, 0, 1].set(-200.0)
  lp = lp.at[2, 0, 1].set(-jnp.inf)
  out = jax.jit(g)(lp, lt)
  value = out[0] if mode == "grad" else out
  # Targets as float32 holds them: e^-200 is 0 there.
  t = np.exp(np.asarray(lt)).astype(np.float64)
  on = t > 0
  terms = np.where(on, t * (np.where(on, lt, 0) - np.where(on, lp, 0)), 0)
  np.testing.assert_allclose(value, terms.sum(), rtol=1e-5)
  if mode == "grad":
    assert all(np.all(np.isfinite(d)) for d in out[1])


@pytest.mark.parametrize("axis", [-1, (1, 2)])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "where"])
def test_log_target_kl_reductions_are_the_rows_reduced(axis, masked):
  # "mean" and "sum" take one sum of every term (dropped entries' terms are
  # 0), the mean over the rows with a kept entry, as the rows reduced.
  lp = jnp.asarray(np.log(rng.dirichlet(np.ones(C), (4, N))), jnp.float32)
  lt = jnp.asarray(np.log(rng.dirichlet(np.ones(C), (4, N))), jnp.float32)
  lt = lt.at[0, 1, 2].set(-jnp.inf)
  where = None
  if masked:
    where = jnp.asarray(rng.uniform(size=(4, N, 1)) > 0.4)
    where = where.at[1].set(False)
  kl = jaxloss.kl_divergence_with_log_targets

  def reduced(lp, lt, reduction):
    return kl(lp, lt, axis=axis, where=where, reduction=reduction)

  rows = kl(lp, lt, axis=axis, where=where)
  keep = (np.ones(rows.shape, bool) if where is None else
          np.any(np.broadcast_to(where, lp.shape), axis=axis))
  for reduction, want in (("sum", np.sum(rows)),
                          ("mean", np.sum(rows) / keep.sum())):
    np.testing.assert_allclose(jax.jit(reduced, static_argnums=2)(
        lp, lt, reduction), want, rtol=1e-6)
    grads = jax.grad(reduced, (0, 1))(lp, lt, reduction)
    scale = 1 if reduction == "sum" else 1 / keep.sum()
    wants = jax.grad(lambda a, b: scale * jnp.sum(kl(a, b, axis=axis,
                                                     where=where)),
                     (0, 1))(lp, lt)
    for g, w in zip(grads, wants):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)
    # Forward mode and a second order (Hessian times a vector) alike.
    v = jnp.asarray(rng.normal(size=lp.shape), jnp.float32)
    hvps = [jax.jvp(jax.grad(f), (lp,), (v,)) for f in (
        lambda a: reduced(a, lt, reduction),
        lambda a: scale * jnp.sum(kl(a, lt, axis=axis, where=where)))]
    for got, want in zip(*hvps):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["generalized_kl_divergence",
                                  "convex_kl_divergence"])
def test_generalized_kl_gradient_writes_only_its_result(name):
  # The mass terms' derivative p = exp(log p) is its own exponential, not
  # the value's: shared, XLA wrote p out for the gradient's pass, a
  # temporary the size of the input besides the gradient (XLA:CPU did at
  # 4096 rows, not at 1024).
  x = jax.ShapeDtypeStruct((4096, 64), jnp.float32)
  step = jax.value_and_grad(
      lambda lp, t: jnp.mean(getattr(jaxloss, name)(lp, t)))
  assert temporaries(step, x, x) <= 1.01 * x.size * 4


def test_kl_log_targets_gradient_takes_its_own_exponential():
  # The gradient's weight exp(log t) is its own, not the value's: shared,
  # XLA:CPU wrote it out in a loop of its own, which the value's sum and the
  # gradient's pass then read (9 arrays' bytes in all against 6 now: each
  # input read by the value, log t read again and the gradient written).
  x = jax.ShapeDtypeStruct((4096, 64), jnp.float32)
  step = jax.value_and_grad(
      lambda lp, lt: jnp.mean(jaxloss.kl_divergence_with_log_targets(lp, lt)))
  analysis = jax.jit(step).lower(x, x).compile().cost_analysis()
  assert analysis["bytes accessed"] < 7 * x.size * 4


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
def test_kl_log_targets_half_precision_value_writes_no_float32_copy():
  # Each form of the condition upcasts its operands in its own sums: upcast
  # before it, they were its operands, two float32 copies written out
  # (4 MiB here against 2 KiB).
  x = jax.ShapeDtypeStruct((512, 1024), jnp.bfloat16)
  value = lambda lp, lt: jnp.mean(jaxloss.kl_divergence_with_log_targets(
      lp, lt))
  assert temporaries(value, x, x) < 0.05 * x.size * 4
  # The numbers are the float32 ones, and NaN input still takes the
  # guarded sum: a -inf log-target costs 0, also on a -inf log-prediction.
  lp = jnp.log(jnp.array([[0.25, 0.25, 0.5, 0.0]], jnp.bfloat16))
  lt = jnp.log(jnp.array([[0.5, 0.5, 0.0, 0.0]], jnp.bfloat16))
  want = jaxloss.kl_divergence_with_log_targets(lp.astype(jnp.float32),
                                                lt.astype(jnp.float32))
  got = jax.jit(jaxloss.kl_divergence_with_log_targets)(lp, lt)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-6)
  lp64, lt64 = np.asarray(lp, np.float64)[0, :2], np.asarray(lt, np.float64)[0, :2]
  np.testing.assert_allclose(got, [np.sum(np.exp(lt64) * (lt64 - lp64))],
                             rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
@pytest.mark.parametrize("name", ["generalized_kl_divergence",
                                  "convex_kl_divergence"])
def test_mass_terms_upcast_half_precision_apart(name):
  # The mass terms' sum converts bfloat16 operands on its own: sharing the
  # divergence terms' conversion, XLA:CPU wrote a float32 copy of both
  # operands out (three copies in all with the terms, as float32 input
  # keeps one).
  x = jax.ShapeDtypeStruct((512, 1024), jnp.bfloat16)
  value = lambda lp, t: jnp.mean(getattr(jaxloss, name)(lp, t))
  assert temporaries(value, x, x) <= 1.01 * x.size * 4
  lp = jnp.log(jnp.array([[0.25, 0.25, 0.5]], jnp.bfloat16))
  t = jnp.array([[0.5, 0.25, 0.25]], jnp.bfloat16)
  want = getattr(jaxloss, name)(lp.astype(jnp.float32), t.astype(jnp.float32))
  np.testing.assert_allclose(jax.jit(getattr(jaxloss, name))(lp, t), want,
                             rtol=1e-6)
