"""Regression losses against float64 NumPy references, optax and the edges."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxloss
from helpers import check_hyperparameter, check_traced_out_of_range, jit_fast
from helpers import temporaries

_jit = jit_fast

rng = np.random.default_rng(0)
P = rng.normal(0, 2, (4, 3))
T = rng.normal(0, 2, (4, 3))
RATE = rng.uniform(0.1, 3.0, (4, 3))
# Off the integers: the Stirling term of poisson_nll_loss jumps at count 1.
COUNTS = rng.integers(0, 5, (4, 3)) + 0.25
LOG2 = math.log(2)


def ref_huber(e, delta=1.0):
  a = np.abs(e)
  return np.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta))


def ref_log_cosh(e):
  a = np.abs(e)
  with np.errstate(over="ignore"):
    return np.where(a < 50, np.log(np.cosh(np.minimum(a, 50))), a - LOG2)


def ref_smooth_l1(e, beta):
  a = np.abs(e)
  if beta == 0:
    return a
  return np.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta)


def ref_poisson_nll(x, y, log_input, full, eps=1e-8):
  loss = np.exp(x) - y * x if log_input else x - y * np.log(x + eps)
  if full:
    with np.errstate(divide="ignore", invalid="ignore"):
      stirling = y * np.log(y) - y + 0.5 * np.log(2 * np.pi * y)
    loss = loss + np.where(y > 1, stirling, 0)
  return loss


def ref_gaussian_nll(x, y, var, full=False, eps=1e-6):
  v = np.maximum(var, eps)
  loss = 0.5 * (np.log(v) + (x - y)**2 / v)
  return loss + (0.5 * np.log(2 * np.pi) if full else 0)


# name -> (jaxloss call on (p, t), float64 reference, inputs)
CASES = {
    "squared_error": (jaxloss.squared_error, lambda p, t: (p - t)**2,
                      (P, T)),
    "l2_loss": (jaxloss.l2_loss, lambda p, t: 0.5 * (p - t)**2, (P, T)),
    "huber_loss": (lambda p, t, **k: jaxloss.huber_loss(p, t, delta=1.5, **k),
                   lambda p, t: ref_huber(p - t, 1.5), (P, T)),
    "log_cosh": (jaxloss.log_cosh, lambda p, t: ref_log_cosh(p - t), (P, T)),
    "l1_loss": (jaxloss.l1_loss, lambda p, t: np.abs(p - t), (P, T)),
    "mse_loss": (jaxloss.mse_loss, lambda p, t: (p - t)**2, (P, T)),
    "smooth_l1_loss": (
        lambda p, t, **k: jaxloss.smooth_l1_loss(p, t, beta=0.7, **k),
        lambda p, t: ref_smooth_l1(p - t, 0.7), (P, T)),
    "poisson_nll_loss": (
        lambda p, t, **k: jaxloss.poisson_nll_loss(p, t, full=True, **k),
        lambda p, t: ref_poisson_nll(p, t, True, True), (P, COUNTS)),
    "poisson_nll_loss_rates": (
        lambda p, t, **k: jaxloss.poisson_nll_loss(p, t, log_input=False,
                                                   **k),
        lambda p, t: ref_poisson_nll(p, t, False, False), (RATE, COUNTS)),
    "gaussian_nll_loss": (
        lambda p, t, **k: jaxloss.gaussian_nll_loss(p, t, 0.3 + t * t,
                                                    full=True, **k),
        lambda p, t: ref_gaussian_nll(p, t, 0.3 + t * t, True), (P, T)),
    "mean_absolute_percentage_error": (
        jaxloss.mean_absolute_percentage_error,
        lambda p, t: 100 * np.abs(p - t) / np.maximum(np.abs(t), 1e-7),
        (P, T)),
    "mean_squared_logarithmic_error": (
        jaxloss.mean_squared_logarithmic_error,
        lambda p, t: (np.log(np.maximum(p, 1e-7) + 1)
                      - np.log(np.maximum(t, 1e-7) + 1))**2, (RATE, T)),
    "poisson": (jaxloss.poisson, lambda p, t: p - t * np.log(p + 1e-7),
                (RATE, COUNTS)),
}
NAMES = sorted(CASES)


# Every loss runs inside one jitted function per test, so that the suite
# compiles a handful of programs instead of one per loss and option.
def _inputs(dtype, cases=CASES):
  return {name: tuple(jnp.asarray(a, dtype) for a in case[2])
          for name, case in cases.items()}


def _run(inputs, reductions=("none", "sum", "mean"), cases=CASES):
  """``{name: (none, sum, mean)}`` for every loss."""
  return {name: tuple(cases[name][0](*inputs[name], reduction=r)
                      for r in reductions)
          for name in inputs}


def _weighted_total(inputs, cases=CASES):
  """A random combination of every loss: one gradient check covers all."""
  weights = np.random.default_rng(1).uniform(0.5, 1.5, len(inputs))
  return sum(c * cases[name][0](*inputs[name], reduction="sum")
             for c, name in zip(weights, sorted(inputs)))


def test_matches_float64_reference_and_reductions():
  with jax.enable_x64(True):
    got = _jit(_run)(_inputs(jnp.float64))
  for name in NAMES:
    _, ref, (p, t) = CASES[name]
    none, total, mean = (np.asarray(x) for x in got[name])
    assert none.dtype == jnp.float64 and none.shape == p.shape, name
    np.testing.assert_allclose(none, ref(p, t), rtol=1e-12, atol=1e-13,
                               err_msg=name)
    np.testing.assert_allclose(total, np.sum(none), rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(mean, np.mean(none), rtol=1e-12, err_msg=name)


@pytest.mark.slow  # Over 15 s on 2 shared cores.
def test_jit_matches_eager_and_vmap_matches_batched():
  inputs = _inputs(jnp.float32)
  jitted, mapped = _jit(lambda x: (_run(x, ("none",)), jax.vmap(lambda x: {
      name: CASES[name][0](*x[name]) for name in NAMES})(x)))(inputs)
  # Op by op is slow to warm up: the losses with branches and wrappers.
  eager_names = ("gaussian_nll_loss", "log_cosh")
  with jax.disable_jit():
    eager = {name: CASES[name][0](*inputs[name]) for name in eager_names}
  for name in NAMES:
    if name in eager:
      np.testing.assert_allclose(jitted[name][0], eager[name], rtol=1e-6,
                                 atol=1e-6, err_msg=name)
    np.testing.assert_allclose(mapped[name], jitted[name][0], rtol=1e-6,
                               atol=1e-6, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_gives_float32_statistics(dtype):
  inputs = _inputs(dtype)
  got = _jit(lambda x: _run(x, ("none",)))(inputs)
  for name in NAMES:
    assert all(x.dtype == jnp.float32 for x in got[name]), name
    if name == "gaussian_nll_loss":   # its var is rounded to the input dtype
      continue
    # The reference sees the same rounded inputs: only the statistics differ.
    rounded = [np.asarray(x, np.float64) for x in inputs[name]]
    np.testing.assert_allclose(got[name][0], CASES[name][1](*rounded),
                               rtol=2e-5, atol=1e-5, err_msg=name)


def test_finite_gradients_at_extreme_inputs():
  big = np.where(rng.uniform(size=P.shape) < 0.5, -1e4, 1e4)
  inputs = {}
  for name in NAMES:
    _, _, (p, t) = CASES[name]
    b = big
    if name in ("poisson_nll_loss_rates", "mean_squared_logarithmic_error",
                "poisson"):
      b = np.abs(big)       # rates
    if name == "poisson_nll_loss":
      b = np.clip(big, -80, 80)   # log-rates: exp(1e4) is inf in the value
    # Huge predictions, zero predictions and zero errors, against targets
    # that are partly zero.
    pred = np.concatenate([b, np.zeros_like(p), t])
    targ = np.concatenate([t, t, t])
    targ[::2] = 0
    inputs[name] = (jnp.asarray(pred, jnp.float32),
                    jnp.asarray(targ, jnp.float32))
  value, grads = _jit(jax.value_and_grad(_weighted_total))(inputs)
  assert np.isfinite(value)
  for name in NAMES:
    for g in grads[name]:
      assert np.all(np.isfinite(g)), name


# ---------------------------------------------------------------------------
# optax parity, and where jaxloss deliberately differs.

OPTAX = {
    "squared_error": (jaxloss.squared_error, optax.losses.squared_error),
    "l2_loss": (jaxloss.l2_loss, optax.losses.l2_loss),
    "huber_loss": (
        lambda p, t: jaxloss.huber_loss(p, t, delta=0.5),
        lambda p, t: optax.losses.huber_loss(p, t, delta=0.5)),
    "log_cosh": (jaxloss.log_cosh, optax.losses.log_cosh),
}


def test_optax_parity():
  p, t = jnp.asarray(P, jnp.float32), jnp.asarray(T, jnp.float32)

  @_jit
  def both(p, t):
    out = {}
    for name, (ours, theirs) in OPTAX.items():
      out[name] = [(f(p, t), f(p, None),
                    jax.grad(lambda p, f=f: f(p, t).sum())(p))
                   for f in (ours, theirs)]
    return out

  for name, (ours, theirs) in both(p, t).items():
    for a, b in zip(ours, theirs):
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7, err_msg=name)


def test_optax_signatures_are_kept():
  import inspect  # noqa: PLC0415
  for name in ("squared_error", "l2_loss", "huber_loss", "log_cosh"):
    ours = inspect.signature(getattr(jaxloss, name)).parameters
    theirs = inspect.signature(getattr(optax.losses, name)).parameters
    for arg, param in theirs.items():
      assert arg in ours, (name, arg)
      assert ours[arg].kind == param.kind, (name, arg)
      assert ours[arg].default == param.default, (name, arg)


def test_log_cosh_is_accurate_for_small_errors_where_optax_cancels():
  e = jnp.array([1e-5, 1e-4, 1e-3, 3e-2], jnp.float32)
  expected = np.log1p(2 * np.sinh(np.asarray(e, np.float64) / 2)**2)
  np.testing.assert_allclose(jaxloss.log_cosh(e), expected, rtol=1e-6)
  theirs = np.asarray(optax.losses.log_cosh(e))
  assert theirs[0] == 0 and theirs[1] == 0       # cancelled to nothing
  assert abs(theirs[2] / expected[2] - 1) > 0.05  # 7% off at 1e-3


def test_log_cosh_at_huge_and_infinite_errors():
  e = jnp.array([-jnp.inf, -3e38, -1e20, 9.0, 11.0, 1e20, 3e38, jnp.inf])
  got = jaxloss.log_cosh(e)
  expected = np.abs(np.asarray(e, np.float64)) - LOG2
  expected[3:5] = np.log(np.cosh([9.0, 11.0]))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  grads = jax.vmap(jax.grad(jaxloss.log_cosh))(e)
  np.testing.assert_allclose(grads, np.tanh(np.asarray(e, np.float64)),
                             rtol=1e-6)


def test_half_precision_comes_out_float32_unlike_optax():
  p = jnp.asarray(P, jnp.bfloat16)
  assert optax.losses.huber_loss(p).dtype == jnp.bfloat16
  assert jaxloss.huber_loss(p).dtype == jnp.float32


# ---------------------------------------------------------------------------
# The shape contract: targets, weights and deltas broadcast to the shape of
# the predictions, never enlarge it.

CONTRACT = {name: fn for name, (fn, _, _) in CASES.items()
            if not name.endswith("_rates")}


def test_targets_broadcast_to_predictions_but_never_enlarge_them():
  p = jnp.asarray(P, jnp.float32)
  t = jnp.asarray(T[0], jnp.float32)
  np.testing.assert_allclose(jaxloss.squared_error(p, t),
                             (P - T[0])**2, rtol=1e-5)
  np.testing.assert_allclose(jaxloss.mse_loss(p, t[:1]),
                             (P - T[0, 0])**2, rtol=1e-5)
  column, row = jnp.zeros((3, 1)), jnp.zeros(3)
  for name, fn in CONTRACT.items():
    # [N] against [N, 1], the commonest silent wrong number, both ways; and
    # a target that would enlarge a 0-d prediction.
    for pred, targ in ((row, column), (column, row), (row[0], row[:1])):
      with pytest.raises(ValueError, match=(
          rf"{name}: targets shape {re.escape(str(targ.shape))} does not "
          rf"broadcast to predictions shape {re.escape(str(pred.shape))}")):
        fn(pred + 1.0, targ + 1.0)
  for name, fn in (("mse_loss", jaxloss.mse_loss),
                   ("l1_loss", jaxloss.l1_loss)):
    with pytest.raises(ValueError, match=(
        rf"{name}: weight shape \(3, 1\) does not broadcast to predictions "
        rf"shape \(3,\)")):
      fn(row, row, weight=column)
  with pytest.raises(ValueError, match=(
      r"huber_loss: delta shape \(3, 1\) does not broadcast to predictions "
      r"shape \(3,\)")):
    jaxloss.huber_loss(row, row, delta=column + 1)
  with pytest.raises(ValueError, match=(
      r"gaussian_nll_loss: targets shape \(3, 1\) does not broadcast to "
      r"predictions shape \(3,\)")):
    jaxloss.gaussian_nll_loss(row, column, 1.0)


def test_zero_dimensional_inputs_as_torch():
  x, y = jnp.array(1.5), jnp.array(-0.5)
  got = [jaxloss.mse_loss(x, y), jaxloss.l1_loss(x, y, reduction="mean"),
         jaxloss.smooth_l1_loss(x, y, reduction="sum"),
         jaxloss.huber_loss(x, y, delta=0.5),
         jaxloss.gaussian_nll_loss(x, y, jnp.array(2.0))]
  assert all(g.shape == () for g in got)
  np.testing.assert_allclose(got, [4.0, 2.0, 1.5, 0.875,
                                   ref_gaussian_nll(1.5, -0.5, 2.0)],
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# Hyperparameters: traced or concrete, under jit, vmap and grad.

VAR = rng.uniform(0.1, 2.0, (4, 3))
# (loss, keyword, positional inputs, other keywords, two valid nonzero
#  values, an invalid one, the interval the message names).
HYPERS = [
    ("huber_loss", "delta", (P, T), {}, (0.7, 1.9), -1.0, r"\(0, inf\)"),
    ("smooth_l1_loss", "beta", (P, T), {}, (0.7, 1.9), -0.5, r"\[0, inf\)"),
    ("poisson_nll_loss", "eps", (RATE, COUNTS), {"log_input": False},
     (0.3, 1.1), -1.0, r"\[0, inf\)"),
    ("gaussian_nll_loss", "eps", (P, T, VAR), {}, (0.5, 1.5), -1e-3,
     r"\[0, inf\)"),
    ("mean_absolute_percentage_error", "epsilon", (P, T), {}, (0.5, 1.5),
     0.0, r"\(0, inf\)"),
    ("mean_squared_logarithmic_error", "epsilon", (P, T), {}, (0.2, 0.9),
     -1.0, r"\[0, inf\)"),
    ("poisson", "epsilon", (RATE, COUNTS), {}, (0.2, 0.9), -1.0,
     r"\[0, inf\)"),
]
HYPER_IDS = [f"{h[0]}-{h[1]}" for h in HYPERS]


@pytest.mark.parametrize("name,keyword,args,options,values,bad,interval",
                         HYPERS, ids=HYPER_IDS)
def test_hyperparameter_traced_equals_concrete_and_has_the_right_gradient(
    name, keyword, args, options, values, bad, interval):
  check_hyperparameter(name, keyword, args, options, values, bad, interval)


def test_traced_hyperparameters_out_of_range_fail_under_checked():
  check_traced_out_of_range(HYPERS)


def test_smooth_l1_beta_zero_is_l1_traced_or_concrete():
  p, t = jnp.asarray(P, jnp.float32), jnp.asarray(T, jnp.float32)
  l1 = np.abs(P - T)
  np.testing.assert_allclose(jaxloss.smooth_l1_loss(p, t, beta=0), l1,
                             rtol=1e-5)
  betas = jnp.array([0.0, 0.5])
  mapped = jax.vmap(lambda b: jaxloss.smooth_l1_loss(p, t, beta=b))(betas)
  np.testing.assert_allclose(mapped[0], l1, rtol=1e-5)
  np.testing.assert_allclose(mapped[1], ref_smooth_l1(P - T, 0.5), rtol=1e-5)
  # d/dbeta at beta = 0 (traced): the right derivative, -1/2 where e != 0.
  e = jnp.array([0.0, 0.3, -2.0])
  grad = jax.grad(lambda b: jaxloss.smooth_l1_loss(
      e, jnp.zeros(3), beta=b, reduction="sum"))(jnp.float32(0.0))
  np.testing.assert_allclose(grad, -1.0)


def _instructions(f, *args):
  text = jax.jit(f).lower(*args).compile().as_text()
  return [line for line in text.splitlines() if " = " in line]


@pytest.mark.parametrize("name,keyword,nonzero", [
    ("smooth_l1_loss", "beta", 1.0), ("gaussian_nll_loss", "eps", 1e-6),
    ("poisson", "epsilon", 1e-7), ("poisson_nll_loss", "eps", 1e-8)])
def test_a_concrete_zero_leaves_its_term_out_of_the_program(name, keyword,
                                                            nonzero):
  f = getattr(jaxloss, name)
  args = (jnp.ones(8),) * (3 if name == "gaussian_nll_loss" else 2)
  options = {"log_input": False} if name == "poisson_nll_loss" else {}
  zero = _instructions(lambda *a: f(*a, **options, **{keyword: 0.0}), *args)
  # A traced value (a concrete positive one leaves out the zero's guard).
  other = _instructions(lambda h, *a: f(*a, **options, **{keyword: h}),
                        jnp.float32(nonzero), *args)
  assert len(zero) < len(other)
  if name == "smooth_l1_loss":   # the L1 loss alone
    assert not any(op in line for line in zero
                   for op in ("divide", "select"))


@pytest.mark.parametrize("name,keyword", [("poisson", "epsilon"),
                                          ("poisson_nll_loss", "eps")])
def test_a_concrete_positive_epsilon_leaves_out_the_zero_guard(name,
                                                               keyword):
  # y log(rate + eps) needs a guard only where rate + eps = 0: never for a
  # valid rate with eps > 0 known at trace time (the default included). A
  # traced eps may be 0. Same values, on zero counts and rates too.
  f = functools.partial(getattr(jaxloss, name), **(
      {"log_input": False} if name == "poisson_nll_loss" else {}))
  rates = jnp.array([0.0, 0.0, 0.5, 2.0, 3.0])
  counts = jnp.array([0.0, 2.0, 0.0, 1.0, 4.0])

  def guarded(program):
    return any(" sign(" in line for line in program)

  for concrete in ({}, {keyword: 1e-3}):
    program = _instructions(lambda r, y: f(r, y, **concrete), rates, counts)
    assert not guarded(program), concrete
  traced = _instructions(lambda r, y, e: f(r, y, **{keyword: e}), rates,
                         counts, jnp.float32(1e-3))
  assert guarded(traced)
  for h in (1e-3, 1.0):
    want = rates - counts * np.log(np.asarray(rates) + h)
    for got in (f(rates, counts, **{keyword: h}),
                jax.jit(lambda e: f(rates, counts, **{keyword: e}))(
                    jnp.float32(h))):
      np.testing.assert_allclose(got, want, rtol=1e-6)
    grads = jax.grad(lambda r, y: jnp.sum(f(r, y, **{keyword: h})),
                     (0, 1))(rates, counts)
    np.testing.assert_allclose(grads[0], 1 - counts / (rates + h),
                               rtol=1e-6)
    np.testing.assert_allclose(grads[1], -np.log(np.asarray(rates) + h),
                               rtol=1e-6)


# ---------------------------------------------------------------------------
# Every autodiff mode on every loss, and empty batches.


def check_autodiff_modes(f, x, seed=7, exact=()):
  """Every autodiff mode of ``f`` along a random direction ``v``, x64 on.

  ``f`` maps the inputs to a dict of scalars, one per loss. On the line
  ``g(s) = f(x + s v)``: ``jvp``, ``linearize``, ``jacfwd`` and ``jacrev``
  give ``g'(0)``, ``hessian`` (forward over reverse) and ``jacrev`` of
  ``jacrev`` (grad of grad) give ``g''(0)``: they agree with each other and,
  except for the losses in ``exact``, with float64 central differences.
  """
  rng_v = np.random.default_rng(seed)
  v = jax.tree.map(lambda a: jnp.asarray(rng_v.normal(size=a.shape)), x)

  def line(s, x, v):
    return f(jax.tree.map(lambda a, b: a + s * b, x, v))

  @jit_fast
  def modes(x, v):
    g = functools.partial(line, x=x, v=v)
    zero, one = jnp.zeros((), jnp.float64), jnp.ones((), jnp.float64)
    return (jax.jvp(g, (zero,), (one,))[1], jax.linearize(g, zero)[1](one),
            jax.jacfwd(g)(zero), jax.jacrev(g)(zero), jax.hessian(g)(zero),
            jax.jacrev(jax.jacrev(g))(zero))

  jvp, *first, hessian, grad_grad = modes(x, v)
  g = jit_fast(line)
  h, k = 1e-4, 1e-6          # steps of the second and first differences
  at = [g(s, x, v) for s in (-h, 0.0, h, -k, k)]
  for name in jvp:
    for other in first:
      np.testing.assert_allclose(other[name], jvp[name], rtol=1e-10,
                                 atol=1e-12, err_msg=name)
    np.testing.assert_allclose(grad_grad[name], hessian[name], rtol=1e-10,
                               atol=1e-12, err_msg=name)
    if name in exact:
      continue
    np.testing.assert_allclose(jvp[name], (at[4][name] - at[3][name]) / (2 * k),
                               rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(
        hessian[name], (at[2][name] - 2 * at[1][name] + at[0][name]) / h**2,
        rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_every_autodiff_mode_matches_finite_differences():
  with jax.enable_x64(True):
    check_autodiff_modes(
        lambda x: {n: CASES[n][0](*x[n], reduction="sum") for n in x},
        _inputs(jnp.float64))


def test_empty_batch_gives_zero_with_zero_gradient():
  inputs = {name: tuple(jnp.zeros((0, 3)) + a[:1, :1] for a in args)
            for name, (_, _, args) in CASES.items()}

  @jit_fast
  def run(inputs):
    out = _run(inputs)
    grads = jax.grad(lambda x: sum(
        CASES[n][0](*x[n], reduction="mean") for n in x))(inputs)
    return out, grads

  out, grads = run(inputs)
  for name in CASES:
    none, total, mean = out[name]
    assert none.shape == (0, 3) and total == 0 and mean == 0, name
    assert all(g.shape == (0, 3) for g in grads[name]), name


# ---------------------------------------------------------------------------
# torch semantics (the values themselves are in tests/torch_cases_*.py).


def test_l1_mse_weighted_mean_divides_by_the_weight_sum():
  p, t = jnp.asarray(P), jnp.asarray(T)
  w = jnp.asarray(rng.uniform(0, 2, (3,)), jnp.float32)   # broadcast per column
  full_w = np.broadcast_to(np.asarray(w, np.float64), P.shape)
  for fn, ref in ((jaxloss.l1_loss, np.abs(P - T)),
                  (jaxloss.mse_loss, (P - T)**2)):
    np.testing.assert_allclose(fn(p, t, weight=w), ref * full_w, rtol=1e-5)
    np.testing.assert_allclose(fn(p, t, weight=w, reduction="mean"),
                               np.sum(ref * full_w) / np.sum(full_w),
                               rtol=1e-5)
    zero = jnp.zeros_like(p)
    value, grad = jax.value_and_grad(
        lambda p, fn=fn: fn(p, t, weight=zero, reduction="mean"))(p)
    assert value == 0 and np.all(grad == 0)   # torch: 0 / 0 = NaN


def test_l1_and_smooth_l1_slope_is_zero_at_zero_error():
  p = jnp.array([1.0, 2.0])
  for fn in (jaxloss.l1_loss,
             lambda p, t: jaxloss.smooth_l1_loss(p, t, beta=0.0),
             jaxloss.mean_absolute_percentage_error):
    np.testing.assert_array_equal(jax.grad(lambda p: fn(p, p).sum())(p), 0)


@pytest.mark.parametrize("fn", [
    jaxloss.l1_loss, jaxloss.huber_loss, jaxloss.smooth_l1_loss,
    functools.partial(jaxloss.smooth_l1_loss, beta=0.0),
    functools.partial(jaxloss.smooth_l1_loss, beta=2.0),
], ids=["l1", "huber", "smooth_l1", "smooth_l1-beta0", "smooth_l1-beta2"])
def test_slope_at_infinite_errors_in_both_modes(fn):
  # inf, with torch's slope: the untaken quadratic branch must not meet
  # inf * 0 in reverse mode.
  p = jnp.array([-jnp.inf, jnp.inf, 3.0])
  t = jnp.zeros(3)
  np.testing.assert_array_equal(fn(p, t)[:2], jnp.inf)
  slope = [-1, 1, 1]
  np.testing.assert_allclose(jax.grad(lambda p: fn(p, t).sum())(p), slope)
  np.testing.assert_allclose(jax.jacfwd(lambda p: fn(p, t))(p).diagonal(),
                             slope)


def test_smooth_l1_is_huber_over_beta():
  p, t = jnp.asarray(P, jnp.float32), jnp.asarray(T, jnp.float32)
  for beta in (0.3, 1.0, 2.0):
    np.testing.assert_allclose(jaxloss.smooth_l1_loss(p, t, beta=beta),
                               jaxloss.huber_loss(p, t, delta=beta) / beta,
                               rtol=1e-6)


def test_poisson_nll_stirling_only_above_one_and_zero_counts_are_safe():
  x = jnp.array([0.5, 0.5, 0.5, 0.5])
  y = jnp.array([0.0, 1.0, 1.5, 4.0])
  got = jaxloss.poisson_nll_loss(x, y, full=True) - jaxloss.poisson_nll_loss(
      x, y)
  stirling = 4 * np.log(4) - 4 + 0.5 * np.log(2 * np.pi * 4)
  stirling_15 = 1.5 * np.log(1.5) - 1.5 + 0.5 * np.log(2 * np.pi * 1.5)
  np.testing.assert_allclose(got, [0, 0, stirling_15, stirling], rtol=1e-5,
                             atol=1e-6)
  # Count 0: 0 * log(rate + eps) = 0 even at rate 0 (torch: NaN), the rate
  # gradient is 1 - 0 / rate = 1, the count gradient -log(rate) (0 at 0).
  rates = jnp.array([0.0, 2.0])
  counts = jnp.array([0.0, 0.0])
  grad_r, grad_y = _jit(jax.grad(lambda r, y: jaxloss.poisson_nll_loss(
      r, y, log_input=False, full=True, eps=0.0).sum(), argnums=(0, 1)))(
          rates, counts)
  np.testing.assert_allclose(grad_r, [1.0, 1.0])
  np.testing.assert_allclose(grad_y, [0.0, -np.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(
      jaxloss.poisson_nll_loss(rates, counts, log_input=False, eps=0.0),
      [0.0, 2.0])


def test_poisson_nll_zero_count_at_log_rate_minus_inf_costs_nothing():
  # Rate 0 and count 0: certain, loss 0 (torch: 0 * -inf = NaN); a positive
  # count at rate 0 costs inf with gradient e^x - y = -y.
  x = jnp.array([-jnp.inf, -jnp.inf, 0.5])
  y = jnp.array([0.0, 2.0, 0.0])
  f = jit_fast(lambda x: jaxloss.poisson_nll_loss(x, y))
  np.testing.assert_array_equal(f(x), [0.0, np.inf, np.exp(np.float32(0.5))])
  g = jit_fast(jax.grad(lambda x: jaxloss.poisson_nll_loss(x, y).sum()))(x)
  np.testing.assert_allclose(g, [0.0, -2.0, np.exp(0.5)], rtol=1e-6)
  # In the counts, -x: 0 where the value reads 0 (not inf), inf at rate 0.
  g = jit_fast(jax.grad(lambda y: jaxloss.poisson_nll_loss(x, y).sum()))(y)
  np.testing.assert_array_equal(g, [0.0, np.inf, -0.5])


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_poisson_nll_reduced_value_is_the_plain_sum_unless_nan(reduction):
  # On CPUs the reduced value is the plain formula's sum behind one scalar
  # condition, the guarded sum only where that is NaN; the same numbers,
  # value and gradient, as the terms' own sum.
  x = jnp.array([-jnp.inf, 0.3, 0.5, -1.0])
  y = jnp.array([0.0, 2.0, 0.0, 1.0])
  def total(x, y):
    return jaxloss.poisson_nll_loss(x, y, reduction=reduction)

  def want(x, y):
    return jnp.sum(jaxloss.poisson_nll_loss(x, y)) / (
        1 if reduction == "sum" else x.size)

  for args in ((x, y), (x[1:], y[1:]), (x, y.at[0].set(1.0))):
    np.testing.assert_allclose(jax.jit(total)(*args), want(*args),
                               rtol=1e-6)
    for f in (total, want):
      value, grads = jax.jit(jax.value_and_grad(f, (0, 1)))(*args)
      if f is total:
        got = (value, grads)
      else:
        np.testing.assert_allclose(got[0], value, rtol=1e-6)
        for g, w in zip(got[1], grads):
          np.testing.assert_allclose(g, w, rtol=1e-6)
  if jax.default_backend() == "cpu":
    hlo = jax.jit(total).lower(x, y).compile().as_text()
    assert hlo.count("conditional(") == 1
    # bfloat16 input is upcast in each form's own pass: no float32 copy
    # written out for the condition.
    big = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16)
    for fn in (total, jax.value_and_grad(total)):
      assert temporaries(fn, big, big) < 512 * 256


def test_poisson_nll_terms_upcast_half_precision_apart():
  # Through "none" the value's pass and the gradient's each convert
  # bfloat16 input on their own: sharing one conversion, XLA:CPU wrote both
  # inputs and the exponentials out in float32 (48 MiB at [16384, 256]).
  # The numbers are float32's, in the counts too.
  big = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16)
  mean = lambda x, y: jnp.mean(jaxloss.poisson_nll_loss(x, y))
  if jax.default_backend() == "cpu":
    for fn in (jax.value_and_grad(mean), jax.value_and_grad(mean, (0, 1))):
      assert temporaries(fn, big, big) < 512 * 256
  x = jnp.array([-jnp.inf, 0.3, 0.5, -1.0], jnp.bfloat16)
  y = jnp.array([0.0, 2.0, 0.0, 3.0], jnp.bfloat16)
  got = jax.jit(jax.value_and_grad(mean, (0, 1)))(x, y)
  want = jax.value_and_grad(mean, (0, 1))(x.astype(jnp.float32),
                                          y.astype(jnp.float32))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(got[1], want[1]):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32),
                               w.astype(jnp.bfloat16).astype(jnp.float32))


def test_poisson_is_poisson_nll_on_rates():
  r, y = jnp.asarray(RATE), jnp.asarray(COUNTS)
  np.testing.assert_allclose(
      jaxloss.poisson(r, y),
      jaxloss.poisson_nll_loss(r, y, log_input=False, eps=1e-7), rtol=1e-6)


def test_gaussian_nll_var_shapes_follow_torch():
  x = jnp.asarray(P, jnp.float32)
  y = jnp.asarray(T, jnp.float32)
  row = rng.uniform(0.5, 2.0, (4,))
  expected_row = ref_gaussian_nll(P, T, row[:, None])
  np.testing.assert_allclose(
      jaxloss.gaussian_nll_loss(x, y, jnp.asarray(row, jnp.float32)),
      expected_row, rtol=1e-5)
  np.testing.assert_allclose(
      jaxloss.gaussian_nll_loss(x, y, jnp.asarray(row[:, None], jnp.float32)),
      expected_row, rtol=1e-5)
  np.testing.assert_allclose(jaxloss.gaussian_nll_loss(x, y, 0.5),
                             ref_gaussian_nll(P, T, 0.5), rtol=1e-5)
  # A square input: one fewer dimension means one variance per row (torch),
  # not numpy's per-column broadcasting.
  sq = jnp.asarray(P[:3], jnp.float32)
  v = np.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(
      jaxloss.gaussian_nll_loss(sq, jnp.zeros_like(sq),
                                jnp.asarray(v, jnp.float32)),
      ref_gaussian_nll(P[:3], 0, v[:, None]), rtol=1e-5)


def test_gaussian_nll_var_shapes_torch_rejects_are_rejected():
  x = jnp.zeros((4, 3, 2))
  for var in (jnp.ones((4, 1, 1)), jnp.ones((4, 3, 2, 1)), jnp.ones((3, 2)),
              jnp.ones((4, 3, 3))):
    with pytest.raises(ValueError, match=(
        rf"gaussian_nll_loss: var shape {re.escape(str(var.shape))} does "
        r"not fit predictions shape \(4, 3, 2\)")):
      jaxloss.gaussian_nll_loss(x, x, var)


def test_gaussian_nll_clamp_passes_the_gradient_through():
  var = jnp.array([1e-9, 2.0])
  x, y = jnp.array([0.1, 1.0]), jnp.array([0.0, 0.0])
  got = jaxloss.gaussian_nll_loss(x, y, var)
  np.testing.assert_allclose(got, ref_gaussian_nll(np.array([0.1, 1.0]), 0,
                                                   np.array([1e-9, 2.0])),
                             rtol=1e-5)
  g = jax.grad(lambda v: jaxloss.gaussian_nll_loss(x, y, v).sum())(var)
  v = np.array([1e-6, 2.0])   # the clamped values
  np.testing.assert_allclose(g, 0.5 * (1 / v - np.array([0.01, 1.0]) / v**2),
                             rtol=1e-5)


def test_gaussian_nll_negative_variance():
  x = jnp.zeros(3)
  with pytest.raises(ValueError, match="gaussian_nll_loss: var must be "
                     "non-negative"):
    jaxloss.gaussian_nll_loss(x, x, -1.0)
  with pytest.raises(ValueError, match="var must be non-negative"):
    jaxloss.gaussian_nll_loss(x, x, np.array([1.0, -1.0, 1.0]))
  got = jaxloss.gaussian_nll_loss(x, x, jnp.array([1.0, -1.0, 1.0]))
  assert np.isnan(got[1]) and np.all(np.isfinite(got[::2]))


@pytest.mark.parametrize("eps", [1e-6, 0.0, 0.5, -1e-3])
def test_gaussian_nll_negative_variance_under_every_clamp(eps):
  # The value's flag is the log of the variance itself: NaN below 0 whatever
  # the clamp (none at eps = 0, a traced one, a negative one that clamps
  # nothing), through every reduction; elsewhere the value is the exact
  # form's, which the gradient's evaluation takes.
  x = jnp.array([0.0, 1.0, 2.0, 0.5, 0.0])
  y = jnp.array([0.0, 0.0, 1.0, 0.0, 0.0])
  var = jnp.array([-1.0, 0.25, 2.0, 0.0, -0.0])

  def loss(var, eps, reduction="none"):
    return jaxloss.gaussian_nll_loss(x, y, var, eps=eps, reduction=reduction)

  got = jax.jit(loss)(var, eps)
  assert np.isnan(got[0])
  for reduction in ("mean", "sum"):
    assert np.isnan(jax.jit(loss, static_argnames="reduction")(
        var, eps, reduction))
  clamp = max(eps, 0.0)
  v = np.maximum(np.asarray(var[1:], np.float64), clamp)
  with np.errstate(divide="ignore", invalid="ignore"):
    want = 0.5 * (np.log(v) + np.asarray(x - y)[1:] ** 2 / v)
  np.testing.assert_allclose(got[1:], want, rtol=1e-6)
  if eps > 0:
    # The value under differentiation is the exact form's.
    value, _ = jax.value_and_grad(lambda v: loss(v, eps)[1:3].sum())(var)
    np.testing.assert_allclose(value, np.sum(want[:2]), rtol=1e-6)
    np.testing.assert_allclose(loss(var, eps)[1:], got[1:], rtol=1e-6)


def test_l1_loss_of_complex_input_is_the_modulus_as_torch():
  rng_c = np.random.default_rng(11)
  x = rng_c.normal(size=(3, 2)) + 1j * rng_c.normal(size=(3, 2))
  y = rng_c.normal(size=(3, 2)) + 1j * rng_c.normal(size=(3, 2))
  y[0, 0] = x[0, 0]                       # a zero error: gradient 0
  xs, ys = jnp.asarray(x, jnp.complex64), jnp.asarray(y, jnp.complex64)
  got = jaxloss.l1_loss(xs, ys)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np.abs(x - y), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jaxloss.nn.L1Loss()(xs, ys),
                             np.mean(np.abs(x - y)), rtol=1e-6)
  np.testing.assert_allclose(jaxloss.l1_loss(xs, jnp.real(ys)),
                             np.abs(x - y.real), rtol=1e-6)
  # JAX's convention for a real function of z = a + ib: d/da - i d/db,
  # the conjugate of torch's .grad, (z - y) / |z - y|.
  grad = jax.grad(lambda z: jaxloss.l1_loss(z, ys, reduction="sum"))(xs)
  e = x - y
  expected = np.conj(np.where(e == 0, 0, e / np.where(e == 0, 1, np.abs(e))))
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  assert grad[0, 0] == 0


def test_nn_classes_check_their_options_when_built():
  for make, message in [
      (lambda: jaxloss.nn.HuberLoss(delta=0.0),
       r"HuberLoss: delta must be in \(0, inf\), got 0.0"),
      (lambda: jaxloss.nn.HuberLoss(delta=-1),
       r"HuberLoss: delta must be in \(0, inf\), got -1"),
      (lambda: jaxloss.nn.SmoothL1Loss(beta=-1.0),
       r"SmoothL1Loss: beta must be in \[0, inf\), got -1.0"),
      (lambda: jaxloss.nn.PoissonNLLLoss(eps=-1.0),
       r"PoissonNLLLoss: eps must be in \[0, inf\), got -1.0"),
      (lambda: jaxloss.nn.GaussianNLLLoss(eps=float("nan")),
       r"GaussianNLLLoss: eps must be in \[0, inf\), got nan")]:
    with pytest.raises(ValueError, match=message):
      make()
  with pytest.raises(TypeError, match=r"HuberLoss: delta must be a number or "
                     r"an array, got complex"):   # torch's module error input
    jaxloss.nn.HuberLoss(delta=1 + 0j)
  assert jaxloss.nn.SmoothL1Loss(beta=0.0).beta == 0.0


def test_nn_classes_raise_where_torch_warns_about_broadcasting():
  row, column = jnp.zeros(3), jnp.zeros((3, 1))
  for cls in (jaxloss.nn.L1Loss, jaxloss.nn.MSELoss, jaxloss.nn.HuberLoss,
              jaxloss.nn.SmoothL1Loss, jaxloss.nn.PoissonNLLLoss):
    with pytest.raises(ValueError, match=r"targets shape \(3, 1\) does not "
                       r"broadcast to predictions shape \(3,\)"):
      cls()(row, column)
  with pytest.raises(ValueError, match=r"targets shape \(3,\) does not "
                     r"broadcast to predictions shape \(3, 1\)"):
    jaxloss.nn.GaussianNLLLoss()(column, row, jnp.ones((3, 1)))


def test_keras_losses_average_the_last_axis_in_keras():
  # keras.losses.X(y_true, y_pred) == jaxloss.X(y_pred, y_true).mean(-1),
  # written out from Keras's formulas.
  p, t = jnp.asarray(RATE), jnp.asarray(COUNTS + 0.5)
  keras_mape = 100 * np.mean(np.abs(COUNTS + 0.5 - RATE)
                             / np.maximum(np.abs(COUNTS + 0.5), 1e-7), -1)
  np.testing.assert_allclose(
      jaxloss.mean_absolute_percentage_error(p, t).mean(-1), keras_mape,
      rtol=1e-5)
  keras_msle = np.mean((np.log(np.maximum(RATE, 1e-7) + 1.0)
                        - np.log(np.maximum(COUNTS + 0.5, 1e-7) + 1.0))**2, -1)
  np.testing.assert_allclose(
      jaxloss.mean_squared_logarithmic_error(p, t).mean(-1), keras_msle,
      rtol=1e-5)


def test_msle_clamps_negative_inputs_with_zero_gradient():
  p = jnp.array([-3.0, 0.5])
  g = jax.grad(lambda p: jaxloss.mean_squared_logarithmic_error(
      p, jnp.ones(2)).sum())(p)
  assert g[0] == 0 and np.isfinite(g[1]) and g[1] != 0


# ---------------------------------------------------------------------------
# Errors.


def test_errors_name_the_function_and_argument():
  x = jnp.zeros((3,))
  with pytest.raises(TypeError, match="l1_loss: predictions must have a "
                     "floating or complex dtype, got int32"):
    jaxloss.l1_loss(jnp.zeros(3, jnp.int32), x)
  with pytest.raises(TypeError, match="mse_loss: predictions must have a "
                     "floating dtype, got complex64"):
    jaxloss.mse_loss(jnp.zeros(3, jnp.complex64), x)
  with pytest.raises(TypeError, match="huber_loss: targets must be real"):
    jaxloss.huber_loss(x, jnp.zeros(3, jnp.complex64))
  with pytest.raises(ValueError, match=r"mse_loss: targets shape \(4,\) does "
                     r"not broadcast to predictions shape \(3,\): axis 0 has "
                     r"length 4 where predictions has 3"):
    jaxloss.mse_loss(x, jnp.zeros(4))
  with pytest.raises(ValueError, match="squared_error: reduction must be one "
                     "of 'none', 'mean', 'sum', got 'avg'"):
    jaxloss.squared_error(x, reduction="avg")
  with pytest.raises(ValueError, match=r"mse_loss: weight shape \(2,\) does "
                     r"not broadcast to predictions shape \(3,\)"):
    jaxloss.mse_loss(x, x, weight=jnp.ones(2))
  with pytest.raises(ValueError, match=r"smooth_l1_loss: beta must be in "
                     r"\[0, inf\), got -1.0"):
    jaxloss.smooth_l1_loss(x, x, beta=-1.0)
  with pytest.raises(ValueError, match=r"gaussian_nll_loss: var shape \(2,\) "
                     r"does not fit predictions shape \(3,\)"):
    jaxloss.gaussian_nll_loss(x, x, jnp.ones(2))
  with pytest.raises(ValueError, match=r"var shape \(4, 1, 1\) does not fit "
                     r"predictions shape \(4, 3, 2\).*torch's rules"):
    jaxloss.gaussian_nll_loss(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)),
                              jnp.ones((4, 1, 1)))
  with pytest.raises(ValueError, match="gaussian_nll_loss: reduction must"):
    jaxloss.gaussian_nll_loss(x, x, 1.0, reduction="batchmean")
  with pytest.raises(TypeError, match="gaussian_nll_loss: full must be a "
                     "bool"):
    jaxloss.gaussian_nll_loss(x, x, 1.0, full=1)
  with pytest.raises(TypeError, match="poisson: predictions must have a "
                     "floating dtype"):
    jaxloss.poisson(jnp.arange(3), x)


# What each loss's value computes in arithmetic alone, so that XLA:CPU fuses
# it with the mean and writes nothing besides (a select there would have it
# write every term out first).
FUSED_VALUES = {
    "huber_loss": lambda x, y: jaxloss.huber_loss(x, y),
    "log_cosh": lambda x, y: jaxloss.log_cosh(x, y),
    "l2_loss": lambda x, y: jaxloss.l2_loss(x, y),
    "poisson": lambda x, y: jaxloss.poisson(x, y),
    "poisson_nll_loss(log_input=False)": lambda x, y: jaxloss.poisson_nll_loss(
        x, y, log_input=False),
    "poisson_nll_loss": lambda x, y: jaxloss.poisson_nll_loss(x, y),
    "gaussian_nll_loss": lambda x, y: jaxloss.gaussian_nll_loss(x, y, x),
    "gaussian_nll_loss(eps=0)": lambda x, y: jaxloss.gaussian_nll_loss(
        x, y, x, eps=0.0),
}


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusion of a sum")
@pytest.mark.parametrize("name", FUSED_VALUES)
def test_value_fuses_with_its_mean(name):
  x = jnp.asarray(RATE, jnp.float32)
  x = jnp.tile(x, (64, 64))                  # 256 x 192: 192 KiB of terms
  y = jnp.tile(jnp.asarray(COUNTS, jnp.float32), (64, 64))
  assert temporaries(lambda x, y: jnp.mean(FUSED_VALUES[name](x, y)),
                     x, y) == 0


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="XLA:CPU's fusion of a sum with the gradient")
def test_percentage_error_gradient_keeps_only_the_gradient():
  # The value's sum fuses with the gradient's pass: the gradient's own
  # buffer is the one temporary (the plain formula keeps three).
  x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)
  assert temporaries(jax.value_and_grad(lambda p, t: jnp.mean(
      jaxloss.mean_absolute_percentage_error(p, t))), x, x) <= 4 * 1024 * 1024


def test_zero_count_edge_reads_the_same_in_value_and_gradient():
  # A zero count reads log 1 at rates in (-1, 0] (no NaN at rate 0) and NaN
  # below -1, a rate out of the domain, whether or not a derivative is
  # taken; a positive count at a negative rate is NaN.
  rates = jnp.array([0.0, -0.5, -1.0, -3.0, -0.5, 2.0])
  counts = jnp.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])

  def f(r, y):
    return jaxloss.poisson_nll_loss(r, y, log_input=False, eps=0.0)

  want = np.array([0.0, -0.5, np.nan, np.nan, np.nan, 2.0], np.float32)
  np.testing.assert_array_equal(_jit(f)(rates, counts), want)
  value, tangent = _jit(lambda r: jax.jvp(lambda r: f(r, counts), (r,),
                                          (jnp.ones_like(r),)))(rates)
  np.testing.assert_array_equal(value, want)
  # d/d rate = 1 - count / rate: 1 at every zero count.
  np.testing.assert_array_equal(tangent, [1, 1, 1, 1, 3, 1])
