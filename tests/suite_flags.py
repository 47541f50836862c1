"""The compiler flags the test suite runs under (set by conftest.py).

The suite compiles thousands of small programs, and their compilation is
most of its time. Two flags cut it (measured back to back on 2 cores:
``tests/test_transformations.py`` and ``tests/test_contract.py`` in 108 s
with the first alone, 73 s with both; the whole suite, with both, takes
the time the README's Development section gives):

* ``--xla_backend_optimization_level=0`` skips LLVM's optimisation passes;
* ``--xla_cpu_use_fusion_emitters=false`` has XLA:CPU emit its fusions with
  its older loop emitters, which compile faster than its MLIR fusion
  emitters.

XLA's own passes (fusion decisions, buffer assignment: what the memory tests
read) still run. Either flag can move a result by an ulp: the tests that
compare compiled results bitwise, or print them as a user sees them, run in
a process of their own without these flags.
"""

import os
import subprocess
import sys

LLVM_LEVEL_0 = "--xla_backend_optimization_level=0"
# Experimental: a jaxlib that no longer knows it would abort on it.
FUSION_EMITTERS_OFF = "--xla_cpu_use_fusion_emitters=false"


def suite_xla_flags():
  """The flags, less the fusion-emitter one where this jaxlib lacks it."""
  flags = f"{LLVM_LEVEL_0} {FUSION_EMITTERS_OFF}"
  probe = subprocess.run(
      [sys.executable, "-c", "import jax; jax.jit(abs)(1.0)"],
      env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
      capture_output=True, check=False)
  return flags if probe.returncode == 0 else LLVM_LEVEL_0
