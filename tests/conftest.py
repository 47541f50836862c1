import jax

# Silent broadcasting hides shape bugs: every implicit rank promotion fails.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Eight CPU devices for the sharding tests, in the test process only: set
# before any test touches a backend. Unsharded work runs on the first device,
# as it would with one.
jax.config.update("jax_num_cpu_devices", 8)
