import jax

# Silent broadcasting hides shape bugs: every implicit rank promotion fails.
jax.config.update("jax_numpy_rank_promotion", "raise")
