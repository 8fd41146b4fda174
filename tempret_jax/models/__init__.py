"""Flax linen modules: video and text towers, temporal transformer, refinement, cross-encoder."""

from tempret_jax.models.retrieval import RetrievalModel, model_config

__all__ = ["RetrievalModel", "model_config"]
