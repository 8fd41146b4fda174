"""EgoVLP's text tower: DistilBERT (distilbert-base-uncased) and Frozen-in-Time's projection.

Followed: transformers' `DistilBertModel` (modeling_distilbert.py: `Embeddings`,
`TransformerBlock`) and showlab/EgoVLP model/model.py (`FrozenInTime.compute_text`:
`text_model(input_ids, attention_mask).last_hidden_state[:, 0]`, then `txt_proj`, a ReLU
followed by Linear(768, 256)).

Input: WordPiece ids (B, L) as `data/wordpiece.py` makes them, `[CLS] ... [SEP]` then [PAD]
(id 0); L <= max_positions (512). The attention mask is `ids != PAD_ID`, what the tokenizer's
attention_mask holds. DistilBERT is post-LN:

    x = LayerNorm(word_embedding[ids] + position_embedding[0..L-1])        eps 1e-12
    per layer: x = ln_1(x + attn(x, keys masked)); x = ln_2(x + mlp(x))      GELU (exact)

The pooled feature is the [CLS] position of the last layer; the embedding is
proj(relu(pooled)) with `text_projection` + `proj_bias`. Padded queries compute values that
nothing reads: every real token attends only to real tokens, so a row's outputs do not depend
on how far it is padded.
"""

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers
from tempret_jax.models.layers import StackSettings

Array = jax.Array
PAD_ID = 0  # BERT's [PAD]


def padding_mask(ids: Array) -> Array:
    """True on real tokens: ids (B, L) -> (B, L) bool (the tokenizer's attention_mask)."""
    return ids != PAD_ID


class PostLNBlock(nn.Module):
    """DistilBERT's TransformerBlock: ln_1(x + attn(x)), then ln_2(x + mlp(x)); returns
    (x, None) when `scanned`. Parameters attn/{q, k, v, out} with biases, mlp/{c_fc, c_proj}."""

    num_heads: int
    settings: StackSettings = StackSettings()
    scanned: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array):
        """x (B, L, D), mask (B, 1, 1, L) bool on keys -> (B, L, D)."""
        s = self.settings
        norm = functools.partial(layers.layer_norm, dtype=s.dtype, eps=s.ln_eps)
        attn = layers.Attention(self.num_heads, s.dtype, s.attention_impl, name="attn")
        x = norm("ln_1")(x + attn(x, mask=mask))
        mlp = layers.Mlp(int(x.shape[-1] * s.mlp_ratio), s.mlp_kind, False, s.dtype, name="mlp")
        x = norm("ln_2")(x + mlp(x))
        return (x, None) if self.scanned else x


class DistilBert(nn.Module):
    """DistilBERT text tower. distilbert-base-uncased: vocab 30522, width 768, 6 layers, 12
    heads, hidden 3072 (mlp_ratio 4), 512 positions; EgoVLP projects to 256.

    Parameters (D width, E output_dim): token_embedding/embedding (vocab_size, D);
    positional_embedding (max_positions, D); ln_embed; resblocks_{i}/{attn, ln_1,
    mlp, ln_2}; text_projection (D, E) + proj_bias (E,) [project: without it the pooled
    output is the [CLS] feature, width D]. `stack` configures the layers (ln_eps 1e-12, GELU).
    """

    vocab_size: int = 30522
    max_positions: int = 512
    width: int = 768
    layers: int = 6
    heads: int = 12
    output_dim: int = 256
    project: bool = True
    stack: StackSettings = StackSettings()

    @nn.compact
    def __call__(self, ids: Array, mask: Optional[Array] = None) -> Tuple[Array, Array]:
        """ids (B, L) int [mask (B, L) bool, default `padding_mask(ids)`] ->
        (pooled (B, E) = proj(relu(x[:, 0])) not normalised ((B, D) x[:, 0] without
        `project`), tokens (B, L, D) the last layer's outputs)."""
        if ids.ndim != 2 or ids.shape[1] > self.max_positions:
            raise ValueError(f"text ids: expected (B, L) with L <= {self.max_positions}, "
                             f"got shape {ids.shape}")
        dtype = self.stack.dtype
        mask = padding_mask(ids) if mask is None else mask
        init = nn.initializers.normal(0.02)  # DistilBertPreTrainedModel._init_weights
        x = nn.Embed(self.vocab_size, self.width, embedding_init=init, dtype=dtype,
                     param_dtype=jnp.float32, name="token_embedding")(ids)
        pos = self.param("positional_embedding", init, (self.max_positions, self.width))
        x = layers.layer_norm("ln_embed", dtype, self.stack.ln_eps)(
            x + pos[: ids.shape[1]].astype(x.dtype))
        x = layers.run_stack(PostLNBlock, self.layers, self.stack, x,
                             (mask[:, None, None, :],), num_heads=self.heads)
        pooled = x[:, 0]
        if not self.project:
            return pooled, x
        proj = self.param("text_projection", nn.initializers.normal(self.width ** -0.5),
                          (self.width, self.output_dim))
        bias = self.param("proj_bias", nn.initializers.zeros, (self.output_dim,))
        return jax.nn.relu(pooled) @ proj.astype(x.dtype) + bias.astype(x.dtype), x
