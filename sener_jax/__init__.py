"""sener_jax: SeNER long-text entity extraction in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
    # `sener_jax.Extractor` without importing jax/flax when only the package is imported.
    if name == "Extractor":
        from sener_jax.predict import Extractor

        return Extractor
    raise AttributeError(f"module 'sener_jax' has no attribute {name!r}")
