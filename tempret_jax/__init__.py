"""tempret-jax: JAX/Flax video-text retrieval for EPIC-KITCHENS-100 Multi-Instance Retrieval."""

__version__ = "0.1.0"
