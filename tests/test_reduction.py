import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import catalogue
import jaxloss
from helpers import count_equations
from helpers import temporaries
from jaxloss import _reduction


def test_reductions():
  loss = jnp.array([1.0, 2.0, 3.0, 0.0])
  keep = jnp.array([True, True, True, False])
  assert _reduction.reduce("f", loss, "sum") == 6
  assert _reduction.reduce("f", loss, "mean") == 1.5
  assert _reduction.reduce("f", loss, "mean", keep=keep) == 2
  assert _reduction.reduce("f", loss, "mean",
                           denominator=jnp.array([1.0, 2.0])) == 2
  assert _reduction.reduce("f", loss, "none") is loss


def test_mean_over_nothing_is_zero_with_zero_gradient():
  def f(x):
    keep = jnp.zeros(3, bool)
    return _reduction.reduce("f", _reduction.mask(x, keep), "mean", keep=keep)
  assert f(jnp.ones(3)) == 0
  np.testing.assert_array_equal(jax.grad(f)(jnp.ones(3)), 0)


def test_unknown_reduction():
  with pytest.raises(ValueError, match="f: reduction must be one of 'none', "
                     "'mean', 'sum', got 'batchmean'"):
    _reduction.reduce("f", jnp.ones(3), "batchmean")


# The losses computed element by element (``_reduction.elementwise``): on
# CPUs their operands are laid out flat when rows are narrow.
ELEMENTWISE = {
    "binary_cross_entropy", "gaussian_nll_loss", "hinge_embedding_loss",
    "hinge_loss", "huber_loss", "kl_div", "l1_loss", "l2_loss", "log_cosh",
    "margin_ranking_loss", "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error", "mse_loss", "perceptron_loss",
    "poisson", "poisson_nll_loss", "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss", "smooth_l1_loss", "soft_margin_loss",
    "sparsemax_loss", "squared_error",
}


# Of those, the ones whose derivatives are taken flat too, on rows shorter
# than this.
FLAT_DERIVATIVES = {"kl_div": 32, "smooth_l1_loss": 32}


# Of those, the ones whose derivatives read the operands again, apart from
# the value and laid out flat, on rows of NARROW or more ("half": for
# half-precision operands alone).
DERIVATIVES_APART = {
    "binary_cross_entropy": True, "hinge_embedding_loss": True,
    "hinge_loss": True, "huber_loss": True, "l1_loss": "half",
    "l2_loss": "half", "log_cosh": True, "margin_ranking_loss": True,
    "mean_absolute_percentage_error": True, "mse_loss": "half",
    "perceptron_loss": True, "poisson": True, "poisson_nll_loss": True,
    "squared_error": "half",
}


def test_the_elementwise_losses_are_marked():
  marked = {name for name in jaxloss.names()
            if getattr(jaxloss.get(name), "elementwise", False)}
  assert marked == ELEMENTWISE
  assert {name: jaxloss.get(name).flat_derivatives for name in ELEMENTWISE
          if jaxloss.get(name).flat_derivatives} == FLAT_DERIVATIVES
  assert {name: jaxloss.get(name).derivatives_apart for name in ELEMENTWISE
          if jaxloss.get(name).derivatives_apart} == DERIVATIVES_APART


def test_derivatives_apart_take_no_flat_derivatives():
  with pytest.raises(ValueError, match="elementwise: derivatives read apart"):
    _reduction.elementwise(flat_derivatives=8, derivatives_apart=True)(
        lambda x, reduction="none": x)


def _flat_barriers(fn, *args):
  # The flat layout's barriers: one per 1-D operand (a loss's own barrier
  # over several operands is not one).
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return (count_equations(jaxpr, "optimization_barrier", rank=1)
          - count_equations(jaxpr, "optimization_barrier", rank=1,
                            min_outputs=2))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_loss_of_narrow_rows_is_the_loss_of_its_elements(
    name, reduction):
  # Rows of 5: the operands go flat on CPUs. The mark is honest: the loss of
  # [B, 5] arrays is the loss of their B * 5 elements, values and gradients.
  fn = catalogue.loss(name)
  args = catalogue.inputs(name, 6)
  shape = args[0].shape
  flat = [a.reshape(-1) for a in args]

  def total(*a):
    return jnp.sum(fn(*a, reduction=reduction))

  np.testing.assert_allclose(fn(*args, reduction=reduction),
                             fn(*flat, reduction=reduction).reshape(
                                 () if reduction != "none" else shape),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.grad(total)(*args),
                             jax.grad(total)(*flat).reshape(shape),
                             rtol=1e-6, atol=1e-7)
  expected = len(args) if jax.default_backend() == "cpu" else 0
  assert _flat_barriers(
      lambda *a: fn(*a, reduction=reduction), *args) == expected
  # Derivatives are taken at the arguments' own shape, unless the loss
  # takes them flat. Their value is the body's at the arguments' shape,
  # but where they are flat, or read apart: then it is the flat one.
  flat_grad = expected > 0 and shape[-1] < FLAT_DERIVATIVES.get(name, 0)
  apart = expected > 0 and DERIVATIVES_APART.get(name) is True
  for derivative in (jax.value_and_grad(total),
                     lambda *a: jax.jvp(total, a, a)):
    barriers = _flat_barriers(derivative, *args)
    if apart:   # the value's alone
      assert barriers == len(args)
    else:
      assert (barriers > 0) == flat_grad


@pytest.mark.parametrize("name", ["huber_loss", "poisson_nll_loss",
                                  "sigmoid_binary_cross_entropy"])
def test_elementwise_loss_keeps_its_shape_where_flat_would_not_pay(name):
  fn = catalogue.loss(name)
  wide = catalogue.inputs(name, 2)
  wide = [jnp.tile(a, (1, -(-_reduction.NARROW // a.shape[-1])))
          for a in wide]
  narrow = catalogue.inputs(name, 4)
  # Rows of NARROW or more pay nothing per row; a broadcast operand would
  # have to be written out flat; 1-D is flat already.
  assert _flat_barriers(lambda *a: fn(*a, reduction="mean"), *wide) == 0
  assert _flat_barriers(lambda *a: fn(*a, reduction="mean"),
                        narrow[0], narrow[1][:1]) == 0
  assert _flat_barriers(lambda *a: fn(*a, reduction="mean"),
                        *[a.reshape(-1) for a in narrow]) == 0


def test_batchmean_reads_the_batch_axis_of_narrow_rows():
  log_p = jnp.log(jnp.full((4, 3), 1 / 3))
  q = jnp.tile(jnp.array([0.5, 0.25, 0.25]), (4, 1))
  mean = jaxloss.kl_div(log_p, q, reduction="mean")
  np.testing.assert_allclose(jaxloss.kl_div(log_p, q, reduction="batchmean"),
                             mean * 3, rtol=1e-6)


def test_checked_messages_index_narrow_rows_in_their_own_shape():
  counts = jnp.ones((3, 2)).at[2, 1].set(-1.0)
  with pytest.raises(jaxloss.CheckError, match=(
      r"poisson_nll_loss: targets must be non-negative; first offending "
      r"element targets\[2, 1\] = -1")):
    jaxloss.checked(jaxloss.poisson_nll_loss)(jnp.zeros((3, 2)), counts,
                                              reduction="mean")


@pytest.mark.parametrize("name,width", [
    (name, width) for name, limit in sorted(FLAT_DERIVATIVES.items())
    for width in (2, limit - 1, limit, 2 * limit)])
def test_flat_derivatives_end_at_their_width(name, width):
  # Flat below their width, at their own shape from it; the same
  # gradient either way. (Their gradients keep their selects' terms at
  # every shape, as their plain formulas' do: no temporary to compare.)
  fn = catalogue.loss(name)
  args = [jnp.tile(a, (1, -(-width // a.shape[-1])))[:, :width]
          for a in catalogue.inputs(name, 64)]
  total = lambda *a: fn(*a, reduction="sum")
  flat = width < FLAT_DERIVATIVES[name]
  if jax.default_backend() == "cpu":
    assert _flat_barriers(total, *args) == len(args)
    assert (_flat_barriers(jax.value_and_grad(total), *args) > 0) == flat
  np.testing.assert_allclose(
      jax.grad(total)(*args),
      jax.grad(total)(*[a.reshape(-1) for a in args]).reshape(args[0].shape),
      rtol=1e-6, atol=1e-7)


def test_gradient_of_narrow_rows_writes_no_temporary():
  # Flat, the gradient could not take the buffer of the terms it shares with
  # the value (their shapes differ): 64 KiB of temporaries here.
  x = jax.ShapeDtypeStruct((4096, 4), jnp.float32)
  value_and_grad = jax.value_and_grad(
      lambda x, y: jaxloss.mse_loss(x, y, reduction="mean"))
  assert temporaries(value_and_grad, x, x) == 0


def _wide(name, batch=3):
  # Rows of NARROW or more: the loss keeps its operands' shape.
  return [jnp.tile(a, (1, -(-_reduction.NARROW // a.shape[-1])))
          for a in catalogue.inputs(name, batch)]


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("name", sorted(DERIVATIVES_APART))
def test_derivatives_apart_are_the_derivatives_of_the_loss(name, reduction):
  # Against autodiff of the function the loss wraps, which takes no rule of
  # its own: first and second order, on rows, on vectors and on narrow
  # rows (the value flat).
  fn = catalogue.loss(name)
  plain = inspect.unwrap(jaxloss.get(name))
  keywords = catalogue.SPECS[name][1]
  # In the dtype the rule is taken for; both compute in float32.
  dtype = jnp.bfloat16 if DERIVATIVES_APART[name] == "half" else jnp.float32
  rtol = 1e-5 if dtype == jnp.float32 else 1e-2
  wide = [a.astype(dtype) for a in _wide(name)]
  narrow = [a.astype(dtype) for a in catalogue.inputs(name, 6)]
  for args in (wide, [a.reshape(-1) for a in wide], narrow):
    rng = np.random.default_rng(1)
    v = [jnp.asarray(rng.normal(size=a.shape), a.dtype) for a in args]

    def total(f):
      # Squared: with "none" a cotangent other than ones.
      return lambda *a: jnp.sum(f(*a, reduction=reduction) ** 2)

    ours, theirs = total(fn), total(lambda *a, **k: plain(*a, **keywords,
                                                          **k))
    argnums = tuple(range(len(args)))
    close = lambda got, want, atol: np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=rtol,
        atol=atol)
    close(jax.jvp(ours, args, v)[1], jax.jvp(theirs, args, v)[1], 0)
    for got, want in zip(jax.grad(ours, argnums)(*args),
                         jax.grad(theirs, argnums)(*args)):
      close(got, want, 1e-7)
    hvp = lambda f: jax.jvp(jax.grad(f, argnums), args, v)[1]
    for got, want in zip(hvp(ours), hvp(theirs)):
      close(got, want, 1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion")
@pytest.mark.parametrize("name", sorted(DERIVATIVES_APART))
@pytest.mark.parametrize("shape", [(4096, 256), (65536, 16), (262144, 4)])
def test_derivatives_apart_keep_no_temporary(name, shape):
  # Sharing the value's terms (or a broadcast constant) with the gradient's
  # pass, XLA:CPU wrote them out (4 MiB in float32 here, for most of these
  # losses; in bfloat16 for the rest, their float32 conversions). On narrow
  # rows the value is flat, the derivatives at the rows' shape.
  fn = catalogue.loss(name)
  for dtype in (jnp.float32, jnp.bfloat16):
    specs = [jax.ShapeDtypeStruct(shape, dtype) for _ in
             catalogue.inputs(name, 2)]
    for total in (lambda *a: jnp.mean(fn(*a)),
                  lambda *a: fn(*a, reduction="mean")):
      assert temporaries(jax.value_and_grad(total), *specs) < 4096 * 256


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the rule is taken on CPUs")
@pytest.mark.parametrize("name", sorted(
    name for name, how in DERIVATIVES_APART.items() if how == "half"))
def test_derivatives_apart_for_half_precision_alone(name):
  # In float32 these losses' programs are the body's own: no barrier.
  fn = catalogue.loss(name)
  args = _wide(name)
  total = lambda *a: jnp.sum(fn(*a, reduction="mean"))
  for dtype, barriers in ((jnp.float32, 0), (jnp.bfloat16, 1)):
    jaxpr = jax.make_jaxpr(jax.value_and_grad(total))(
        *[a.astype(dtype) for a in args]).jaxpr
    assert count_equations(jaxpr, "optimization_barrier") == barriers


def test_derivatives_apart_take_the_hyperparameters_derivatives():
  # A traced delta is an operand of the rule: its derivative is the
  # loss's, and a concrete one keeps its check.
  x, y = _wide("huber_loss")
  delta = jnp.float32(0.7)
  ours = jax.grad(lambda d: jaxloss.huber_loss(x, y, delta=d,
                                               reduction="sum"))(delta)
  plain = inspect.unwrap(jaxloss.huber_loss)
  theirs = jax.grad(lambda d: plain(x, y, delta=d, reduction="sum"))(delta)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  assert ours != 0
  with pytest.raises(ValueError, match="huber_loss: delta"):
    jax.grad(lambda x: jaxloss.huber_loss(x, y, delta=0.0,
                                          reduction="sum"))(x)
