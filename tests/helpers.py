"""Small shared test utilities."""

import contextlib
import functools
import re

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest

import jaxloss

MODES = ("jit", "eager")
FLOATS = ("float16", "bfloat16", "float32", "float64")
# Relative tolerance of a half-precision input rounding, for comparisons
# against a float64 reference evaluated on the rounded inputs.
RTOL = {"float16": 2e-3, "bfloat16": 2e-3, "float32": 2e-5, "float64": 1e-12}


def run(mode, fn, *args, **kwargs):
  """``fn`` compiled (its own jit) or op by op under ``jax.disable_jit``."""
  ctx = jax.disable_jit() if mode == "eager" else contextlib.nullcontext()
  with ctx:
    return fn(*args, **kwargs)


@contextlib.contextmanager
def dtype_context(dtype):
  """float64 needs x64 enabled; other dtypes run in the default mode."""
  with jax.enable_x64(dtype == "float64"):
    yield


def rounded(x, dtype):
  """``x`` rounded to ``dtype``, back in float64 for the reference."""
  import jax.numpy as jnp  # noqa: PLC0415
  return np.asarray(jnp.asarray(x, dtype)).astype(np.float64)


def assert_finite(tree, what=""):
  for leaf in jax.tree_util.tree_leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64))), what


# The tests compile many small programs: LLVM's optimisation passes only
# change their speed, not their results, and would dominate the run time.
jit_fast = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def check_grads_directional(f, x, directions=3, eps=1e-4):
  """``jax.grad`` against central differences in random directions (x64).

  ``jax.test_util.check_grads`` does the same with more compiled programs.
  """
  grad = jit_fast(jax.grad(f))(x)
  value = jit_fast(f)
  leaves, tree = jax.tree.flatten(x)
  rng_v = np.random.default_rng(5)
  for _ in range(directions):
    v = jax.tree.unflatten(tree, [rng_v.normal(size=l.shape) for l in leaves])
    shifted = [jax.tree.map(lambda a, b, s=s: a + s * eps * b, x, v)
               for s in (1, -1)]
    numeric = (value(shifted[0]) - value(shifted[1])) / (2 * eps)
    analytic = sum(np.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                  jax.tree.leaves(v)))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def check_autodiff_modes(total, x, v):
  """jvp, linearize, jacfwd, Hessian-vector and grad-of-grad products of
  the scalar ``total`` at ``x`` in direction ``v``, in float64 against
  central differences and against each other (two compiled programs)."""

  @jax.jit
  def modes(x):
    jv = jax.jvp(total, (x,), (v,))[1]
    lin = jax.linearize(total, x)[1](v)
    hv = jnp.tensordot(jax.hessian(total)(x), v, axes=v.ndim)
    ggv = jax.grad(lambda x: jnp.vdot(jax.grad(total)(x), v))(x)
    return jv, lin, jax.jacfwd(total)(x), hv, ggv

  @jax.jit
  def differences(x, eps=1e-6):
    grad = jax.grad(total)
    return ((total(x + eps * v) - total(x - eps * v)) / (2 * eps),
            (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps), grad(x))

  jv, lin, fwd, hv, ggv = modes(x)
  numeric_jv, numeric_hv, grad = differences(x)
  np.testing.assert_allclose(jv, numeric_jv, rtol=1e-7)
  np.testing.assert_allclose(lin, jv, rtol=1e-12)
  np.testing.assert_allclose(fwd, grad, rtol=1e-12)
  np.testing.assert_allclose(hv, numeric_hv, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(ggv, hv, rtol=1e-12)


def _float32_args(args):
  return tuple(jnp.asarray(a, jnp.float32 if a.dtype.kind == "f" else None)
               for a in map(np.asarray, args))


def check_hyperparameter(name, keyword, args, options, values, bad,
                         interval):
  """A traced ``keyword`` of loss ``name``: the concrete values under jit,
  vmap over ``values``, no recompile for a new value, a float64 gradient
  against central differences; a concrete ``bad`` fails at trace time with
  the ``interval`` in the message."""
  f = getattr(jaxloss, name)
  with jax.enable_x64(True):
    args64 = tuple(jnp.asarray(a) for a in args)

    def total(h):
      return jnp.sum(f(*args64, **options, **{keyword: h}))

    run = jit_fast(lambda h, hs: (total(h), jax.vmap(total)(hs),
                                  jax.grad(total)(h)))
    h1, h2 = values
    value, mapped, grad = run(jnp.float64(h1), jnp.array(values))
    concrete = [total(h1)]
    compiles = f.compiled._cache_size()
    concrete.append(total(h2))
    assert f.compiled._cache_size() == compiles, "a new value recompiled"
    np.testing.assert_allclose(value, concrete[0], rtol=1e-12)
    np.testing.assert_allclose(mapped, concrete, rtol=1e-12)
    step = 1e-6
    numeric = (run(h1 + step, jnp.array(values))[0]
               - run(h1 - step, jnp.array(values))[0]) / (2 * step)
    assert grad != 0
    np.testing.assert_allclose(grad, numeric, rtol=1e-6)
  with pytest.raises(ValueError, match=(
      rf"{name}: {keyword} must be in {interval}, got {bad}")):
    f(*_float32_args(args), **options, **{keyword: bad})


def check_traced_out_of_range(hypers):
  """Every ``(name, keyword, args, options, _, bad, interval)`` of
  ``hypers`` with a traced ``bad`` value raises under ``jaxloss.checked``:
  one checked program for every case, a lax.switch over them."""
  branches = [functools.partial(
      lambda bad, f, args, options, keyword: jnp.sum(
          f(*args, **options, **{keyword: bad})).astype(jnp.float32),
      f=getattr(jaxloss, name), options=options, keyword=keyword,
      args=_float32_args(args))
              for name, keyword, args, options, _, _, _ in hypers]
  program = jaxloss.checked(jax.jit(
      lambda i, bad: jax.lax.switch(i, branches, bad)))
  for i, (name, keyword, _, _, _, bad, interval) in enumerate(hypers):
    with pytest.raises(jaxloss.CheckError, match=(
        rf"{name}: {keyword} must be in {interval}; got {bad:g}")):
      program(i, jnp.float32(bad))


def equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if isinstance(inner, jax_core.Jaxpr):
          yield from equations(inner)


def count_equations(jaxpr, primitive=None, rank=None, min_outputs=1):
  """Equations of a jaxpr, those of its sub-jaxprs included: all, or those
  of the primitive named ``primitive``; with ``rank``, those whose first
  output has that many dimensions; with ``min_outputs``, those with at
  least that many outputs (a variadic reduction's)."""
  return sum((primitive is None or eqn.primitive.name == primitive)
             and (rank is None or eqn.outvars[0].aval.ndim == rank)
             and len(eqn.outvars) >= min_outputs
             for eqn in equations(jaxpr))


def temporaries(fn, *args):
  """The bytes of temporaries XLA allocates for ``fn`` at ``args`` (arrays
  or ``jax.ShapeDtypeStruct``s): compiled, not run."""
  return jax.jit(fn).lower(*args).compile().memory_analysis(
      ).temp_size_in_bytes


def condition_shapes(hlo):
  """The result shapes of a compiled program's conditionals (layouts and
  tuples left out): ``["f32[]"]`` for one scalar condition."""
  return [re.sub(r"\{[^}]*\}", "", s).strip("()")
          for s in re.findall(r"= (\S+) conditional\(", hlo)]
