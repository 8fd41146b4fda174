"""ContextRefine-CLIP's cross-modal context refinement of pooled embeddings.

Each video embedding attends over a gallery of text embeddings and each text embedding over a
gallery of video embeddings (one block per direction, post-LN as in the paper):

    x <- LN_1(x + CrossAttn(x, gallery))        x <- LN_2(x + GatedFFN(x))

GatedFFN is the SwiGLU feed-forward of `layers.Mlp` (silu(w1 x) * (w2 x) -> w3). The refined
embeddings then go through the projection heads (see retrieval.py).

Which gallery. Both directions attend over the *unrefined* embeddings of the other modality:
- training: the other modality's embeddings of the whole (global) batch;
- inference: the whole test gallery of the other modality (all 9,668 test clips for a text, all
  3,842 test sentences for a video), fixed before any query is refined.
Attention has no positional term, so a query's result does not depend on the order of the
gallery, nor on which other queries are refined with it: queries can be refined in any chunks
and any order (the evaluator chunks them to bound memory, O(chunk x gallery) per head). A
boolean gallery mask drops padding rows (e.g. a gallery padded to a multiple of the devices).
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers

Array = jax.Array


class RefineBlock(nn.Module):
    """One direction. Parameters: cross_attn/{q,k,v,out}; ln_1; ffn/{w1,w2,w3}; ln_2."""

    heads: int = 8
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x: Array, gallery: Array, gallery_mask: Optional[Array] = None) -> Array:
        """x (N, D) queries, gallery (G, D_g), gallery_mask (G,) bool or None -> (N, D)."""
        mask = None if gallery_mask is None else gallery_mask[None, None, None, :]
        attended = layers.Attention(self.heads, self.dtype, self.attention_impl,
                                    name="cross_attn")(x[None], gallery[None], mask=mask)[0]
        x = layers.layer_norm("ln_1", self.dtype)(x + attended)
        ffn = layers.Mlp(int(x.shape[-1] * self.mlp_ratio), "swiglu", dtype=self.dtype,
                         name="ffn")
        return layers.layer_norm("ln_2", self.dtype)(x + ffn(x))


class ContextRefinement(nn.Module):
    """Both directions. Parameters: video/... (videos attend to texts), text/... (the reverse)."""

    heads: int = 8
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    attention_impl: Optional[str] = None

    def setup(self):
        block = lambda name: RefineBlock(self.heads, self.mlp_ratio, self.dtype,
                                         self.attention_impl, name=name)
        self.video = block("video")
        self.text = block("text")

    def refine_video(self, video: Array, text_gallery: Array,
                     text_mask: Optional[Array] = None) -> Array:
        """video (Nv, D) attends over text_gallery (Nt, D) [text_mask (Nt,)] -> (Nv, D)."""
        return self.video(video, text_gallery, text_mask)

    def refine_text(self, text: Array, video_gallery: Array,
                    video_mask: Optional[Array] = None) -> Array:
        """text (Nt, D) attends over video_gallery (Nv, D) [video_mask (Nv,)] -> (Nt, D)."""
        return self.text(text, video_gallery, video_mask)

    def __call__(self, video: Array, text: Array, video_mask: Optional[Array] = None,
                 text_mask: Optional[Array] = None) -> Tuple[Array, Array]:
        """video (Nv, D), text (Nt, D) -> refined (Nv, D), (Nt, D); each side sees the other's
        unrefined embeddings as its gallery."""
        return (self.refine_video(video, text, text_mask),
                self.refine_text(text, video, video_mask))
