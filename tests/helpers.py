"""Small shared test utilities."""

import contextlib
import functools

import jax
import numpy as np

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
