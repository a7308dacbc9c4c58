"""sener_jax: SeNER long-text entity extraction in JAX/Flax."""

__version__ = "0.1.0"
