import os

# The suite compiles thousands of small programs, and LLVM's optimisation
# passes take a quarter of its time. XLA's own passes (fusion, buffer
# assignment: what the memory tests read) still run. The level can move a
# result by an ulp: the one test that compares compiled programs bitwise
# runs in a process of its own at the default level. Set before jax starts
# a backend; an XLA_FLAGS of the caller's own is kept.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

# Silent broadcasting hides shape bugs: every implicit rank promotion fails.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Eight CPU devices for the sharding tests, in the test process only: set
# before any test touches a backend. Unsharded work runs on the first device,
# as it would with one.
jax.config.update("jax_num_cpu_devices", 8)
