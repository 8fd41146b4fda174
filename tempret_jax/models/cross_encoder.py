"""TempRet stage 2: an image-text-matching (ITM) cross-encoder for reranking.

Text tokens (the text tower's ln_final outputs, which carry CLIP's position embeddings) are
projected to the encoder width and pass through L blocks of [causal-free self-attention over
the real text tokens, cross-attention to the video tokens, MLP]; an ITM head on the first
(start-of-text) token gives one logit, P(match) = sigmoid(logit).

The video tokens carry their frame's position: a learned temporal embedding (one vector per
frame, shared by the frame's patch tokens) is added before their LayerNorm. Cross-attention
is blind to the order of its context, so without it the encoder could not tell a clip from the
same clip reversed (TempRet's point is temporal order: the report's temporal transformer has
learned positions on the frame features, and the cross-encoder here reads the same frames).

It runs on *cached* tower outputs: rerank scores the top-K candidates of each query from the
token arrays kept at embedding time, never re-running the towers. `score` broadcasts leading
dimensions, so (Q, 1, ...) texts against (Q, K, ...) videos (text->video rerank) or (V, K, ...)
texts against (V, 1, ...) videos (video->text rerank) are one call.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers
from tempret_jax.models.layers import StackSettings

Array = jax.Array


def itm_probability(logits: Array) -> Array:
    """P(match) from ITM logits, any shape."""
    return jax.nn.sigmoid(logits)


class CrossEncoder(nn.Module):
    """Parameters (W width): text_in (D_t, W); video_in (D_v, W); temporal_embed (T, W) when
    num_frames T > 0; ln_video; transformer/resblocks_i/{ln_1, attn, ln_cross, cross_attn,
    ln_2, mlp}; ln_post; itm_head (W, 1). `stack` configures the transformer; its dtype is
    every layer's."""

    width: int = 512
    layers: int = 4
    heads: int = 8
    num_frames: int = 0  # T: the video tokens are T frames' (M = T x tokens per frame)
    stack: StackSettings = StackSettings()

    def _frame_positions(self, video: Array) -> Array:
        """video (B, M, W) -> + the temporal embedding of each token's frame (M = T x N,
        frame-major as the towers emit them)."""
        b, m, w = video.shape
        if m % self.num_frames:
            raise ValueError(f"cross-encoder: {m} video tokens are not {self.num_frames} "
                             f"frames' (model.vision.num_frames)")
        embed = self.param("temporal_embed", nn.initializers.normal(0.02),
                           (self.num_frames, w), jnp.float32)
        video = video.reshape(b, self.num_frames, m // self.num_frames, w)
        return (video + embed[:, None].astype(video.dtype)).reshape(b, m, w)

    @nn.compact
    def __call__(self, text_tokens: Array, text_mask: Array, video_tokens: Array) -> Array:
        """text_tokens (B, L, D_t), text_mask (B, L) bool, video_tokens (B, M, D_v)
        -> (B,) float32 logits."""
        dtype = self.stack.dtype
        dense = lambda name, features: nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                                                name=name)
        x = dense("text_in", self.width)(text_tokens)
        video = dense("video_in", self.width)(video_tokens)
        if self.num_frames:
            video = self._frame_positions(video)
        video = layers.layer_norm("ln_video", dtype)(video)
        x = layers.Transformer(self.layers, self.heads, self.stack, cross_attention=True,
                               name="transformer")(
            x, mask=text_mask[:, None, None, :], context=video)
        x = layers.layer_norm("ln_post", dtype)(x[:, 0])
        return dense("itm_head", 1)(x)[:, 0].astype(jnp.float32)

    def score(self, text_tokens: Array, text_mask: Array, video_tokens: Array) -> Array:
        """ITM logits of every (text, video) pair, leading dimensions broadcast together.

        text_tokens (*A, L, D_t), text_mask (*A, L), video_tokens (*C, M, D_v)
        -> (*broadcast(A, C)), e.g. (Q, 1, L, D_t) x (Q, K, M, D_v) -> (Q, K). Equal to calling
        the module pair by pair.
        """
        lead = jnp.broadcast_shapes(text_tokens.shape[:-2], text_mask.shape[:-1],
                                    video_tokens.shape[:-2])

        def flat(x, trailing):
            return jnp.broadcast_to(x, lead + x.shape[x.ndim - trailing:]).reshape(
                (-1,) + x.shape[x.ndim - trailing:])

        logits = self(flat(text_tokens, 2), flat(text_mask, 1), flat(video_tokens, 2))
        return logits.reshape(lead)
