"""Small shared test utilities."""

import contextlib

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
