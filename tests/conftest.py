import os

import suite_flags

# The suite's compiler flags, set before jax starts a backend; an XLA_FLAGS
# of the caller's own is kept. pytest-xdist's workers inherit the
# controller's.
if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = suite_flags.suite_xla_flags()

import jax  # noqa: E402

# Silent broadcasting hides shape bugs: every implicit rank promotion fails.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Eight CPU devices for the sharding tests, in the test process only: set
# before any test touches a backend. Unsharded work runs on the first device,
# as it would with one.
jax.config.update("jax_num_cpu_devices", 8)
