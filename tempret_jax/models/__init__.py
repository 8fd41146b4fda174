"""Flax linen modules: video and text towers, temporal transformer, refinement, cross-encoder."""
