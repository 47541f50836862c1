"""Every loss composes like optax's: traced hyperparameters, one compile,
every autodiff mode.

Driven by ``jaxloss.names()``: a loss is covered the day it is registered.
Each public loss declares its structural keywords (static) and its numeric
hyperparameters (``.static_argnames``, ``.hyperparameters``, from
``jaxloss._jit.jit``); the tests read them, so nothing here lists a loss's
options by hand. Inputs come from ``tests/catalogue.py``.

Exactness is checked in float64 against central differences; the compiled
programs are few per loss (the traced hyperparameters make one program serve
every value), which keeps the module fast.
"""

import collections
import inspect
import math
import re

import jax
from jax.extend.core import primitives as jax_primitives
import jax.numpy as jnp
import numpy as np
import pytest

import catalogue
import jaxloss
from jaxloss import _jit
from helpers import equations

NAMES = jaxloss.names()
B = 3
# Kinds of catalogue input the losses are smooth in: differentiated below.
CONTINUOUS = {"real", "unit", "probs", "pos", "scores", "simplex", "logprob",
              "away_from_zero"}
# Losses whose gradient is by definition not the derivative of their value.
DETACHED = {
    "circle_loss": "the pair weights are constants in the gradient "
                   "(stop_gradient), as in the paper and in Keras",
}
# Static keywords that are numbers: class indices and torch's restricted
# integer choices.
STRUCTURAL_NUMBERS = {"axis", "ignore_index", "blank_id", "p"}


def _hypers(name):
  return getattr(jaxloss.get(name), "hyperparameters", {})


def _with_hypers():
  return [n for n in NAMES if _hypers(n)]


def _inputs(name, batch=B, dtype=jnp.float64):
  return catalogue.inputs(name, batch, seed=3, dtype=dtype)


def _loss(name):
  """The loss itself (the first output of a loss returning more)."""
  f = catalogue.loss(name)

  def loss(*args, **kwargs):
    out = f(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out
  return loss


def _objective(name, args):
  """``sum(r * loss)`` with fixed random weights ``r`` of the loss's shape."""
  f = _loss(name)
  shape = jnp.shape(f(*args))
  r = jnp.asarray(np.random.default_rng(7).uniform(0.5, 1.5, shape),
                  jnp.float64)
  return lambda *a, **kw: jnp.sum(r * f(*a, **kw))


def _values(name, h):
  """Two distinct valid nonzero values of hyperparameter ``h``."""
  spec = _hypers(name)[h]
  default = inspect.signature(jaxloss.get(name)).parameters[h].default
  if isinstance(default, (int, float)) and not isinstance(default, bool) and (
      default != 0):
    base = float(default)
  elif math.isfinite(spec.low) and math.isfinite(spec.high):
    base = spec.low + 0.3 * (spec.high - spec.low)
  elif math.isfinite(spec.low):
    base = spec.low + 0.7
  elif math.isfinite(spec.high):
    base = spec.high - 0.7
  else:
    base = 0.7
  second = base * 1.25
  if not spec.inside(second, np):
    second = base * 0.8
  return base, second


def _step(v):
  """A central-difference step for a hyperparameter at ``v`` (nonzero): not
  so small that rounding dominates, never reaching zero."""
  return min(max(1e-4 * abs(v), 1e-8), 0.1 * abs(v))


def _close(got, want, rtol, atol, what):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float64),
                               np.asarray(w, np.float64), rtol=rtol,
                               atol=atol, err_msg=what)


@pytest.mark.parametrize("name", NAMES)
def test_every_numeric_keyword_is_declared(name):
  # A numeric keyword is a traced hyperparameter unless it picks structure.
  f = jaxloss.get(name)
  hypers = getattr(f, "hyperparameters", None)
  static = getattr(f, "static_argnames", None)
  assert hypers is not None and static is not None, (
      f"{name} is not wrapped by jaxloss._jit.jit")
  for p in inspect.signature(f).parameters.values():
    number = (isinstance(p.default, (int, float))
              and not isinstance(p.default, bool))
    if number and p.name not in hypers:
      assert p.name in static and p.name in STRUCTURAL_NUMBERS, (
          f"{name}: numeric keyword {p.name!r} is neither a hyperparameter "
          "nor a structural keyword")
  assert not set(hypers) & set(static)
  for h in hypers:
    assert h not in STRUCTURAL_NUMBERS


@pytest.mark.parametrize("name", NAMES)
def test_traced_inside_a_program_the_loss_is_inlined(name):
  # Called while a program is traced, the loss adds its equations to that
  # program rather than a nested call of its own, which XLA:CPU lowered and
  # inlined again: a tenth of a small loss's compile time.
  args = _inputs(name, dtype=jnp.float32)
  jaxpr = jax.make_jaxpr(_loss(name))(*args).jaxpr

  assert not [e for e in equations(jaxpr) if e.params.get("name") == "inner"]


def _program(fn, args):
  """``fn`` compiled for ``args``: its optimized HLO as a multiset of
  instructions (names, metadata and backend configuration left out), its
  temporaries, and its results."""
  compiled = jax.jit(fn).lower(*args).compile()
  lines = []
  for line in compiled.as_text().splitlines():
    if " = " not in line:
      continue
    line = re.sub(r", (metadata|backend_config)=.*", "", line.strip())
    lines.append(re.sub(r"%[\w.\-]+", "%", line))
  return (collections.Counter(lines),
          compiled.memory_analysis().temp_size_in_bytes,
          jax.tree.map(np.asarray, compiled(*args)))


def _own_calls(monkeypatch):
  """The names of the jitted calls bound from now on."""
  names = []
  bind = jax_primitives.jit_p.bind

  def spy(*args, **params):
    names.append(params["name"])
    return bind(*args, **params)
  monkeypatch.setattr(jax_primitives.jit_p, "bind", spy)
  return names


@pytest.mark.parametrize("name", NAMES)
def test_under_grad_the_loss_is_no_call_of_its_own(name, monkeypatch):
  # Differentiated in a program being traced, the public function traces
  # its body straight into it: its own jit would first be linearized as a
  # call of its own (up to half of a gradient's first tracing). Its value
  # alone goes through that jit, whose traced program a later trace at the
  # same shapes reuses; so does an eager grad, which would otherwise run
  # op by op.
  f = _loss(name)
  args = _inputs(name, dtype=jnp.float32)

  def total(*a):
    return jnp.sum(f(*a))

  calls = _own_calls(monkeypatch)
  jax.clear_caches()
  jax.jit(jax.value_and_grad(total)).trace(*args)
  jax.jit(jax.vmap(jax.grad(total))).trace(*(a[None] for a in args))
  assert "inner" not in calls
  jax.jit(total).trace(*args)
  assert "inner" in calls
  del calls[:]
  jax.grad(total)(*args)
  assert "inner" in calls


@pytest.mark.parametrize("name", NAMES)
def test_traced_directly_or_through_its_jit_the_program_is_the_same(
    name, monkeypatch):
  # The body traced into the caller's program, or called through the loss's
  # own jit (inline=True, as where JAX's stack of traces cannot be read):
  # the same compiled program, temporaries and numbers, with each
  # hyperparameter a concrete nonzero number.
  _same_program_directly_or_through(name, _inputs(name, dtype=jnp.float32),
                                    monkeypatch)


@pytest.mark.parametrize("name", [
    n for n in NAMES if getattr(jaxloss.get(n), "derivatives_apart", False)])
def test_derivatives_apart_through_its_jit_keep_what_the_body_knows(
    name, monkeypatch):
  # On rows of 128 or more the derivatives read apart are a rule that JAX
  # traces after the body where the loss went through its own jit: it
  # keeps the body's knowledge of its concrete hyperparameters (Keras's
  # poisson's positive epsilon, which takes the log's guard away).
  args = [jnp.tile(a, (1, 128 // a.shape[-1] + 1))
          for a in _inputs(name, dtype=jnp.float32)]
  _same_program_directly_or_through(name, args, monkeypatch)


def _same_program_directly_or_through(name, args, monkeypatch):
  f = _loss(name)
  hypers = {h: _values(name, h)[0] for h in _hypers(name)}
  value_and_grad = jax.value_and_grad(lambda *a: jnp.sum(f(*a, **hypers)))
  direct = _program(value_and_grad, args)
  monkeypatch.setattr(_jit, "_find_top_trace", None)
  jax.clear_caches()
  through = _program(value_and_grad, args)
  assert direct[:2] == through[:2]
  for a, b in zip(jax.tree.leaves(direct[2]), jax.tree.leaves(through[2])):
    np.testing.assert_array_equal(a, b)


def test_a_numpy_argument_under_jit_takes_the_loss_own_jit(monkeypatch):
  # A concrete argument would reach the body as it is, where the loss's own
  # jit hands it a tracer: that call goes through the jit.
  f = jaxloss.softmax_cross_entropy_with_integer_labels
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)),
                       jnp.float32)
  labels = np.array([0, 4, 2, 1])
  calls = _own_calls(monkeypatch)
  got = jax.jit(lambda x: f(x, labels, label_smoothing=0.1))(logits)
  assert "inner" in calls
  np.testing.assert_array_equal(
      got, jax.jit(f)(logits, jnp.asarray(labels), label_smoothing=0.1))


# Functions of jax.numpy every family calls.
SPIED = ("where", "sum", "exp", "log", "maximum", "minimum", "abs", "max",
         "isfinite", "mean", "square", "sqrt")


@pytest.mark.parametrize("name", NAMES)
def test_jax_numpy_is_inlined_while_the_loss_traces(name, monkeypatch):
  # Most jax.numpy functions are jitted functions of their own: under the
  # caller's jit and grad each call would be a nested program, looked up,
  # traced and linearized apart, most of a small loss's tracing time. The
  # body and its derivative rules run them inlined (jaxloss._jit.inlined).
  calls = []
  for fname in SPIED:
    def spy(*args, _original=getattr(jnp, fname), **kwargs):
      calls.append(bool(jax.config.jax_disable_jit))
      return _original(*args, **kwargs)
    monkeypatch.setattr(jnp, fname, spy)
  f = _loss(name)
  kwargs = {}
  reduction = inspect.signature(jaxloss.get(name)).parameters.get(
      "reduction")
  if (reduction is not None and reduction.default == "none"
      and "reduction" not in catalogue.SPECS[name][1]):
    kwargs["reduction"] = "mean"   # the reductions' own jnp calls
  args = _inputs(name, dtype=jnp.float32)
  jax.clear_caches()   # the body runs again, not a trace cached by a test
  jax.jit(jax.value_and_grad(lambda *a: f(*a, **kwargs).sum())).trace(*args)
  assert calls and all(calls), calls


LOOPS = ("scan", "fori_loop", "while_loop", "map", "associative_scan")


@pytest.mark.parametrize("name", NAMES)
def test_loops_stay_loops_while_the_loss_traces(name, monkeypatch):
  # Under jax.disable_jit, the body's and its rules' tracing mode, lax.scan
  # and fori_loop run their steps in Python: a loop met there would unroll,
  # one copy of its body per step, with the same numbers. Every loop in a
  # body runs under jaxloss._jit.staged, jit on.
  unrolled = []
  for fname in LOOPS:
    def spy(*args, _original=getattr(jax.lax, fname), _name=fname,
            **kwargs):
      if jax.config.jax_disable_jit:
        unrolled.append(_name)
      return _original(*args, **kwargs)
    monkeypatch.setattr(jax.lax, fname, spy)
  f = _loss(name)
  args = _inputs(name, dtype=jnp.float32)
  # A loss that chunks its work loops over chunks: a token and two classes
  # to a chunk make every loop it has run.
  chunked = "chunk_size" in inspect.signature(jaxloss.get(name)).parameters
  jax.clear_caches()
  for kwargs in ({}, {"chunk_size": 1}, {"chunk_size": (1, 2)}):
    jax.jit(jax.value_and_grad(lambda *a: f(*a, **kwargs).sum())).trace(*args)
    jax.jit(jax.hessian(lambda a: f(a, *args[1:], **kwargs).sum())).trace(
        args[0])
    if not chunked:
      break
  assert not unrolled, unrolled


@pytest.mark.parametrize("name", _with_hypers())
def test_hyperparameters_traced_vmapped_differentiated_compiled_once(name):
  f = jaxloss.get(name)
  hypers = sorted(_hypers(name))
  firsts, seconds = (np.asarray(v) for v in zip(*(_values(name, h)
                                                  for h in hypers)))
  with jax.enable_x64(True):
    args = _inputs(name)
    objective = _objective(name, args)
    loss = _loss(name)

    def concrete(values):
      return loss(*args, **{h: float(v) for h, v in zip(hypers, values)})

    first = concrete(firsts)
    compiles = f.compiled._cache_size()
    second = concrete(seconds)
    assert f.compiled._cache_size() == compiles, (
        f"{name}: a new value of {hypers} compiled again")

    def traced(values):
      return loss(*args, **dict(zip(hypers, values)))

    def total(values):
      return objective(*args, **dict(zip(hypers, values)))

    steps = np.asarray([_step(v) for v in firsts])
    shifts = np.diag(steps)
    batch = np.concatenate([firsts[None], seconds[None], firsts + shifts,
                            firsts - shifts])

    @jax.jit
    def program(firsts, batch):
      # One program: the loss and its gradient at traced values, and under
      # vmap at a batch of them (the second values, and the shifted ones
      # for central differences).
      return (traced(list(firsts)), jax.grad(total)(firsts),
              jax.vmap(traced)(batch), jax.vmap(total)(batch))

    at_first, grads, batched, totals = program(jnp.asarray(firsts),
                                               jnp.asarray(batch))
    _close(at_first, first, 1e-10, 1e-12, "traced under jit")
    _close(jax.tree.map(lambda a: a[0], batched), first, 1e-10, 1e-12, "vmap")
    _close(jax.tree.map(lambda a: a[1], batched), second, 1e-10, 1e-12,
           "vmap")
    k = len(hypers)
    numeric = (totals[2:2 + k] - totals[2 + k:]) / (2 * steps)
    np.testing.assert_allclose(grads, numeric, rtol=1e-5,
                               atol=1e-8 * (1 + np.max(np.abs(numeric))),
                               err_msg=f"d loss / d {hypers}")
    assert np.all(np.isfinite(grads))

    # Exact zeros take their own program; it agrees with the traced one.
    zero_able = [i for i, h in enumerate(hypers)
                 if _hypers(name)[h].inside(0.0, np)]
    if zero_able:
      at_zero = np.where(np.isin(np.arange(k), zero_able), 0.0, firsts)
      _close(concrete(at_zero), jax.jit(traced)(jnp.asarray(at_zero)),
             1e-10, 1e-12, "an exact zero against a traced zero")


@pytest.mark.parametrize("name", [
    n for n in _with_hypers()
    if any(spec.inside(0.0, np) for spec in _hypers(n).values())])
def test_gradient_by_a_traced_zero_hyperparameter(name):
  # At a traced 0 (the default of label smoothing, z-loss, ...) the gradient
  # by the hyperparameter is the derivative there: a one-sided difference
  # into the interval agrees (second order: -3 f(0) + 4 f(h) - f(2 h)).
  hypers = sorted(_hypers(name))
  firsts = np.asarray([_values(name, h)[0] for h in hypers])
  with jax.enable_x64(True):
    args = _inputs(name)
    objective = _objective(name, args)

    def total(values):
      return objective(*args, **dict(zip(hypers, values)))

    grad = jax.jit(jax.grad(total))
    value = jax.jit(total)
    for i, h in enumerate(hypers):
      spec = _hypers(name)[h]
      if not spec.inside(0.0, np):
        continue
      at_zero = firsts.copy()
      at_zero[i] = 0.0
      step = 1e-4 if spec.inside(2e-4, np) else -1e-4
      shifted = [value(jnp.asarray(at_zero + k * step * np.eye(len(hypers))[i]))
                 for k in range(3)]
      numeric = (-3 * shifted[0] + 4 * shifted[1] - shifted[2]) / (2 * step)
      got = grad(jnp.asarray(at_zero))[i]
      assert np.isfinite(got), (h, got)
      np.testing.assert_allclose(got, numeric, rtol=1e-5,
                                 atol=1e-7 * (1 + abs(numeric)),
                                 err_msg=f"d loss / d {h} at a traced 0")


def _integer_value(spec):
  """A whole number inside ``spec``'s interval, 0 only if it is the only
  one there; None if there is none."""
  for v in (1, 2, 3, 0):
    if spec.inside(float(v), np):
      return v
  return None


@pytest.mark.parametrize("name", _with_hypers())
def test_integer_hyperparameters_traced_and_differentiated(name):
  # A hyperparameter may be an integer array (its dtype is checked for
  # "a real number"): traced under jit, with the gradient by the inputs,
  # it gives what the same float does.
  hypers = sorted(_hypers(name))
  wrt = _continuous(name)
  with jax.enable_x64(True):
    args = _inputs(name)
    objective = _objective(name, args)
    values = {h: _integer_value(_hypers(name)[h]) for h in hypers}
    values = {h: v for h, v in values.items() if v is not None}
    if not values:
      pytest.skip(f"no whole number is a valid {hypers}")

    @jax.jit
    def program(x, hyper_values):
      def f(*diff):
        full = list(args)
        for i, d in zip(wrt, diff):
          full[i] = d
        return objective(*full, **hyper_values)
      return f(*x), jax.grad(f, tuple(range(len(wrt))))(*x)

    x = tuple(args[i] for i in wrt)
    as_int = program(x, {h: jnp.asarray(v, jnp.int32)
                         for h, v in values.items()})
    as_float = program(x, {h: jnp.asarray(v, jnp.float64)
                           for h, v in values.items()})
    _close(as_int, as_float, 1e-12, 1e-12, f"{name} at {values}")
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(as_int))


@pytest.mark.parametrize("name", _with_hypers())
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_hyperparameters(name, dtype):
  # A bfloat16 or float16 hyperparameter, traced: the value and the
  # gradients (by the inputs and by the hyperparameters) are the float32
  # ones at the same (rounded) values, the latter rounded once to the
  # hyperparameter's dtype. Summing a cotangent in half precision over the
  # uses of a hyperparameter loses it where they cancel.
  hypers = sorted(_hypers(name))
  wrt = _continuous(name)
  args = _inputs(name, dtype=jnp.float32)
  objective = _objective(name, args)
  values = {h: _values(name, h)[0] for h in hypers}

  @jax.jit
  def program(x, hyper_values):
    def f(x, hyper_values):
      full = list(args)
      for i, d in zip(wrt, x):
        full[i] = d
      return objective(*full, **hyper_values)
    return f(x, hyper_values), jax.grad(f, (0, 1))(x, hyper_values)

  x = tuple(args[i] for i in wrt)
  with np.errstate(over="ignore"):   # ctc's log_epsilon: -inf in float16
    half = {h: jnp.asarray(v, dtype) for h, v in values.items()}
  value, (grad_x, grad_h) = program(x, half)
  want_value, (want_x, want_h) = program(
      x, {h: v.astype(jnp.float32) for h, v in half.items()})
  _close((value, grad_x), (want_value, want_x), 1e-6, 1e-6, name)
  for h in hypers:
    assert grad_h[h].dtype == dtype
    _close(grad_h[h], want_h[h].astype(dtype), 0, 0, f"{name}: d/d {h}")


@pytest.mark.parametrize("name", _with_hypers())
def test_float64_hyperparameters_keep_the_loss_dtype(name):
  # Under jax_enable_x64, float64 hyperparameter arrays against float32
  # inputs: the loss stays float32, as its docstring says, and agrees with
  # the Python-number hyperparameters; the gradient by a hyperparameter is
  # float64, its own dtype.
  hypers = sorted(_hypers(name))
  with jax.enable_x64(True):
    args = _inputs(name, dtype=jnp.float32)
    loss = _loss(name)
    values = {h: _values(name, h)[0] for h in hypers}
    want = loss(*args, **values)
    got = loss(*args, **{h: jnp.asarray(v, jnp.float64)
                         for h, v in values.items()})
    assert got.dtype == want.dtype == jnp.float32, (got.dtype, want.dtype)
    _close(got, want, 1e-6, 1e-6, name)
    grads = jax.grad(lambda hv: jnp.sum(loss(*args, **hv)))(
        {h: jnp.asarray(v, jnp.float64) for h, v in values.items()})
    assert all(g.dtype == jnp.float64 for g in grads.values())


def _outside(spec):
  """Values just outside ``spec``'s interval (none if it is the whole line)."""
  out = []
  if math.isfinite(spec.low):
    out.append(spec.low if spec.low_open else spec.low - 0.5)
  if math.isfinite(spec.high):
    out.append(spec.high if spec.high_open else spec.high + 0.5)
  return out


@pytest.mark.parametrize("name", _with_hypers())
def test_hyperparameter_ranges_checked_concrete_and_traced(name):
  f = jaxloss.get(name)
  hypers = sorted(_hypers(name))
  firsts = tuple(_values(name, h)[0] for h in hypers)
  args = _inputs(name, dtype=jnp.float32)
  loss = _loss(name)
  checked = jaxloss.checked(jax.jit(
      lambda *values: loss(*args, **dict(zip(hypers, values)))))
  checked(*firsts)
  for i, h in enumerate(hypers):
    for bad in _outside(_hypers(name)[h]):
      values = dict(zip(hypers, firsts), **{h: bad})
      with pytest.raises(ValueError, match=f"{name}: {h} must be in"):
        loss(*args, **values)
      with pytest.raises(jaxloss.CheckError, match=f"{name}: {h} must be"):
        checked(*values.values())
    with pytest.raises(TypeError, match=f"{name}: {h} must be a number"):
      loss(*args, **{h: "0.5"})
  del f


@pytest.mark.parametrize("name", NAMES)
def test_traced_structural_keywords_fail_clearly(name):
  f = jaxloss.get(name)
  args = _inputs(name, dtype=jnp.float32)
  for k in getattr(f, "static_argnames", ()):
    if k in catalogue.SPECS[name][1]:
      continue
    with pytest.raises(TypeError, match=f"{name}: {k} must be .*fixed when "
                       "the function is traced"):
      jax.jit(lambda s, k=k: f(*args, **{k: s}))(jnp.asarray(1))


def _continuous(name):
  """Indices of the positional arguments the loss is smooth in."""
  return tuple(i for i, (kind, _) in enumerate(catalogue.SPECS[name][0])
               if kind in CONTINUOUS)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_autodiff_mode_against_finite_differences(name):
  # jvp, linearize, grad (jacrev), jacfwd, Hessian-vector products from
  # forward-over-reverse, reverse-over-reverse (grad of grad) and the full
  # Hessian, in float64 against central differences, by every smooth
  # argument at once. One compiled program holds them all.
  wrt = _continuous(name)
  step = 1e-6
  with jax.enable_x64(True):
    args = _inputs(name, batch=2)
    objective = _objective(name, args)

    def f(*diff):
      full = list(args)
      for i, d in zip(wrt, diff):
        full[i] = d
      return objective(*full)

    argnums = tuple(range(len(wrt)))
    grad = jax.grad(f, argnums)

    @jax.jit
    def modes(x, t):
      def shifted(s):
        return tuple(a + s * step * d for a, d in zip(x, t))
      out = {"value": f(*x)}
      out["jvp_value"], out["jvp"] = jax.jvp(f, x, t)
      out["numeric"] = (f(*shifted(1)) - f(*shifted(-1))) / (2 * step)
      out["linearize"] = jax.linearize(f, *x)[1](*t)
      out["grad"] = grad(*x)
      out["jacfwd"] = jax.jacfwd(f, argnums)(*x)
      out["hvp"] = jax.jvp(lambda *a: grad(*a), x, t)[1]
      out["numeric_hvp"] = jax.tree.map(lambda a, b: (a - b) / (2 * step),
                                        grad(*shifted(1)), grad(*shifted(-1)))
      out["grad_of_grad"] = jax.grad(lambda *a: sum(
          jnp.vdot(g, d) for g, d in zip(grad(*a), t)), argnums)(*x)
      def first(a):
        return f(a, *x[1:])
      hessian = jax.hessian(first)(x[0])
      out["hessian_t"] = hessian.reshape(x[0].size, -1) @ t[0].reshape(-1)
      out["first_hvp"] = jax.jvp(jax.grad(first), (x[0],), (t[0],))[1]
      return out

    x = tuple(args[i] for i in wrt)
    rng = np.random.default_rng(11)
    t = tuple(jnp.asarray(rng.normal(size=a.shape)) for a in x)
    out = modes(x, t)
    _close(out["jvp_value"], out["value"], 1e-12, 1e-12, "jvp primal")
    if name not in DETACHED:
      _close(out["jvp"], out["numeric"], 1e-6, 1e-8,
             "jvp against differences")
    _close(out["linearize"], out["jvp"], 1e-10, 1e-12, "linearize")
    _close(sum(jnp.vdot(g, d) for g, d in zip(out["grad"], t)), out["jvp"],
           1e-10, 1e-12, "grad against jvp")
    _close(out["jacfwd"], out["grad"], 1e-10, 1e-12, "jacfwd against jacrev")
    scale = max(1.0, max(float(jnp.max(jnp.abs(h))) for h in out["hvp"]))
    if name not in DETACHED:
      _close(out["hvp"], out["numeric_hvp"], 1e-5, 1e-7 * scale,
             "forward-over-reverse against differences of the gradient")
    _close(out["grad_of_grad"], out["hvp"], 1e-9, 1e-10 * scale,
           "grad of grad")
    _close(out["hessian_t"], out["first_hvp"].reshape(-1), 1e-9,
           1e-10 * scale, "hessian")


def _implementations(name):
  p = inspect.signature(jaxloss.get(name)).parameters.get("implementation")
  return p is not None


@pytest.mark.parametrize("name", [n for n in NAMES if _implementations(n)])
def test_default_path_matches_the_reference_in_every_mode(name):
  # float32 rounding apart, the fast path's derivatives are the formula's.
  args = _inputs(name, dtype=jnp.float32)
  wrt = _continuous(name)
  t = tuple(jnp.asarray(np.random.default_rng(2).normal(size=args[i].shape),
                        jnp.float32) for i in wrt)

  def f(implementation):
    loss = _loss(name)

    def g(*diff):
      full = list(args)
      for i, d in zip(wrt, diff):
        full[i] = d
      return jnp.sum(loss(*full, implementation=implementation))
    return g
  x = tuple(args[i] for i in wrt)
  for mode in (lambda g: jax.jvp(g, x, t),
               lambda g: jax.jvp(jax.grad(g), x[:1], t[:1])):
    _close(mode(f("auto")), mode(f("reference")), 2e-5, 1e-6,
           "default against reference")
