"""CLIP's causal text transformer.

Input: token ids (B, L), L <= context_length (77), as produced by the CLIP tokenizer:
<start_of_text> tokens <end_of_text> then zero padding. The end-of-text id (49407) is the
largest id in the vocabulary, so its position is `argmax(ids)`, as CLIP pools. The causal mask
means no token attends to padding that follows it, so no padding mask is needed here.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers
from tempret_jax.models.layers import StackSettings

Array = jax.Array


def end_of_text_index(ids: Array) -> Array:
    """Position of the end-of-text token (CLIP: the largest id): ids (B, L) -> (B,) int."""
    return jnp.argmax(ids, axis=-1)


def text_padding_mask(ids: Array) -> Array:
    """True on real tokens (up to and including end-of-text): ids (B, L) -> (B, L) bool."""
    return jnp.arange(ids.shape[-1]) <= end_of_text_index(ids)[..., None]


class TextTransformer(nn.Module):
    """CLIP text tower. CLIP ViT-B/16: width 512, 12 layers, 8 heads, out 512;
    CLIP ViT-L/14: 768, 12, 12, 768.

    Parameters (D width, E output_dim): token_embedding/embedding (vocab_size, D);
    positional_embedding (context_length, D); transformer/...; ln_final; text_projection (D, E)
    [project: without it (ContextRefine-CLIP) the pooled output is ln_final(x)[end-of-text],
    width D]. `stack` configures the (causal) transformer; its dtype and ln_eps are every
    layer's.
    """

    vocab_size: int = 49408  # CLIP's BPE vocabulary, end-of-text (49407) last
    context_length: int = 77  # the longest L
    width: int = 512  # D
    layers: int = 12
    heads: int = 8
    output_dim: int = 512
    project: bool = True  # False: no text_projection, the pooled output is (B, D)
    stack: StackSettings = StackSettings()

    @nn.compact
    def __call__(self, ids: Array) -> Tuple[Array, Array]:
        """ids (B, L) int -> (pooled (B, E), tokens (B, L, D)).

        pooled = ln_final(x)[end-of-text] @ text_projection (not normalised; (B, D) and no
        projection without `project`); tokens are the
        ln_final outputs of every position (for the cross-encoder; mask them with
        `text_padding_mask`).
        """
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"text ids: expected (B, L) with L <= {self.context_length}, "
                             f"got shape {ids.shape}")
        dtype = self.stack.dtype
        x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=dtype, param_dtype=jnp.float32, name="token_embedding")(ids)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                         (self.context_length, self.width))
        x = x + pos[: ids.shape[1]].astype(x.dtype)
        x = layers.Transformer(self.layers, self.heads, self.stack, causal=True,
                               name="transformer")(x)
        x = layers.layer_norm("ln_final", dtype, self.stack.ln_eps)(x)
        eot = jnp.take_along_axis(x, end_of_text_index(ids)[:, None, None], axis=1)[:, 0]
        if not self.project:
            return eot, x
        proj = self.param("text_projection", nn.initializers.normal(self.width ** -0.5),
                          (self.width, self.output_dim))
        return eot @ proj.astype(x.dtype), x
