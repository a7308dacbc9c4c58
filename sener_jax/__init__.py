"""sener_jax: SeNER long-text entity extraction in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
    # `sener_jax.Extractor` is resolved on first use, not imported here: every `import sener_jax.x`
    # runs this file first, and an eager import would load jax/flax/orbax even for the light modules
    # (render, prediction_io, data readers). Not a cycle guard: predict never imports this package.
    if name == "Extractor":
        from sener_jax.predict import Extractor

        return Extractor
    raise AttributeError(f"module 'sener_jax' has no attribute {name!r}")
