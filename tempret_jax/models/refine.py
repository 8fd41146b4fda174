"""ContextRefine-CLIP's Cross-Modal Context Refinement (CMCR), paper Sections 2.1-2.3 and 3.1.

CMCR runs on the towers' pooled outputs *before* any projection (the towers are built without
CLIP's projection: `VisionTransformer(project=False)`, `TextTransformer(project=False)`):
F_v (N_v, D_v) video features, F_t (N_t, D_t) text features. For the video direction
(each video refined by the text gallery G_t (G, D_t); D_a the attention dim, h heads):

    Q = F_v W_Q + b_Q,  K = G_t W_K + b_K,  V = G_t W_V + b_V    (N_v | G, D_a)      Eqs (1)-(3)
    A = concat_i softmax(Q_i K_i^T / sqrt(D_a / h)) V_i  W_O + b_O   (N_v, D_v)      Eq (4)
    F'_v  = LN_1(F_v + A)                                                            Eq (5)
    F^r_v = LN_2(F'_v + GatedFFN(F'_v))                                              Eq (6)

and the symmetric text direction (each text refined by the video gallery, its own parameters).
Then (Section 2.3) each modality's own two-layer MLP head maps F^r to the joint space E and the
result is L2-normalised (retrieval.py): e = normalize(fc2(GELU(fc1(F^r)))).

Notation. The paper writes Eq (4) as F_{v<-t} = MHA(Q_t, K_v, V_v) and Eq (5) as
F'_v = LN(F_t + F_{v<-t}), "a residual connection with the original query". Taken literally
its rows would be text rows used as the visual feature, which retrieval cannot use (at test
time a clip has no paired text). We read it as the text describes it: the query side keeps its
identity and the residual is with the query. Our video direction is the paper's Eqs with the
roles named by output: queries from the video being refined (Q_v = W_Q F_v), keys and values
from the text gallery (K_t, V_t), residual with F_v; the text direction is the paper's
Eqs (1)-(5) as printed (Q_t, K_v, V_v, residual with F_t), producing the refined text.
W_O maps D_a back to the query's width, so the residual is defined for any D_v, D_t.

Which gallery. Both directions attend over the *unrefined* pre-projection features of the
other modality:
- training: the other modality's features of the whole (global) batch (step.py);
- inference: the whole test gallery of the other modality (all 9,668 test clips for a text,
  all 3,842 test sentences for a video), fixed before any query is refined (embedding.py).
The paper writes F_v, F_t in R^{B x D}, a batch, and says nothing about inference. Attending
within a test batch of paired clips and narrations would put every clip's ground-truth
narration into its own embedding (a leak the test set does not allow: the ranking must come
from the clip alone plus the gallery) and make an embedding depend on which clips share its
batch. So inference uses the whole gallery: each embedding is a function of its query and the
fixed gallery only. Training cannot use the whole gallery (its features change with every step
and need gradients); the global batch is the largest gallery we can differentiate through. The
two differ in gallery size (B vs G) and so in how spread the attention is; both contain the
query's positives. Attention has no positional term, so a result depends neither on the order
of the gallery nor on which other queries are refined with it: queries can be refined in any
chunks (the evaluator chunks them, O(chunk x G) scores per head). A boolean gallery mask drops
padding rows (e.g. a gallery padded to a multiple of the devices).

Choices where the paper is silent (docs/design.md, Context refinement):
- GatedFFN (the paper cites gated FFNs of transformers): SwiGLU, silu(x W_1) * (x W_2) W_3
  (`ffn='swiglu'`; 'geglu' uses GELU for the gate; 'none' drops Eq (6): the paper's Table 1
  "CR-CLIP" row without GatedFFN), hidden width int(D * mlp_ratio) with D the query's width.
- Dropout (rate 0.1 "across all components"): on the attention weights (after the softmax, as
  PyTorch's nn.MultiheadAttention), on the attention output A before the Eq (5) residual, on the
  GatedFFN's gated hidden units and its output before the Eq (6) residual, and on the MLP head's
  hidden units. Not on the inputs, nor on the head's output (dropping units of the embedding
  just before L2 normalisation would rescale it at random). Training only: `deterministic=True`
  (the default: inference and `init`) is exact, `deterministic=False` needs a 'dropout' rng.
- Biases on every projection (W_Q, W_K, W_V, W_O, the FFN, the heads); flax's default
  initialisers (LeCun normal kernels, zero biases, LayerNorm 1 / 0); the LayerNorms use CLIP's
  epsilon. The MLP head's hidden width is its input's width (D_v or D_t) unless `head_hidden`.
- The attention is computed here as explicit einsums (one (N, G) score matrix per head; float32
  softmax), not by `layers.dot_product_attention`, because dropout acts on its weights.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers

Array = jax.Array
FFN_KINDS = ("swiglu", "geglu", "none")
HEAD_KINDS = ("mlp",)
_GATES = {"swiglu": nn.silu, "geglu": lambda x: nn.gelu(x, approximate=False)}


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class CrossAttention(nn.Module):
    """Eqs (1)-(4). Parameters: q (D_q, D_a), k and v (D_g, D_a), out (D_a, D_q), with biases."""

    dim: int = 512  # D_a
    heads: int = 8
    dropout: float = 0.1  # on the attention weights
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, gallery: Array, gallery_mask: Optional[Array] = None,
                 deterministic: bool = True) -> Array:
        """x (N, D_q) queries, gallery (G, D_g) keys/values, gallery_mask (G,) bool -> (N, D_q)."""
        if self.dim % self.heads:
            raise ValueError(f"refine.dim {self.dim} is not divisible by refine.heads "
                             f"{self.heads}")
        split = lambda y: y.reshape(y.shape[0], self.heads, self.dim // self.heads)  # noqa: E731
        q = split(_dense(self.dim, self.dtype, "q")(x))                             # (N, h, K)
        k = split(_dense(self.dim, self.dtype, "k")(gallery))                       # (G, h, K)
        v = split(_dense(self.dim, self.dtype, "v")(gallery))
        scores = jnp.einsum("nhk,ghk->hng", q, k, preferred_element_type=jnp.float32)
        scores = scores * (self.dim // self.heads) ** -0.5
        if gallery_mask is not None:
            scores = jnp.where(gallery_mask, scores, jnp.finfo(jnp.float32).min)
        probs = nn.Dropout(self.dropout)(jax.nn.softmax(scores, axis=-1),
                                         deterministic=deterministic)
        out = jnp.einsum("hng,ghk->nhk", probs.astype(v.dtype), v).reshape(x.shape[0], self.dim)
        return _dense(x.shape[-1], self.dtype, "out")(out)


class GatedFFN(nn.Module):
    """gate(x W_1) * (x W_2) -> dropout -> W_3: (..., D) -> (..., D). Parameters: w1, w2, w3."""

    hidden: int
    kind: str = "swiglu"  # one of FFN_KINDS but 'none'
    dropout: float = 0.1  # on the gated hidden units
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """x (..., D) -> (..., D)."""
        h = _GATES[self.kind](_dense(self.hidden, self.dtype, "w1")(x)) * _dense(
            self.hidden, self.dtype, "w2")(x)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return _dense(x.shape[-1], self.dtype, "w3")(h)


class RefineBlock(nn.Module):
    """One direction, Eqs (1)-(6). Parameters: cross_attn/{q,k,v,out}; ln_1; [ffn/{w1,w2,w3};
    ln_2] (not with ffn='none')."""

    dim: int = 512
    heads: int = 8
    ffn: str = "swiglu"  # one of FFN_KINDS
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, gallery: Array, gallery_mask: Optional[Array] = None,
                 deterministic: bool = True) -> Array:
        """x (N, D) queries, gallery (G, D_g), gallery_mask (G,) bool or None -> (N, D)."""
        drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=deterministic)  # noqa: E731
        attended = CrossAttention(self.dim, self.heads, self.dropout, self.dtype,
                                  name="cross_attn")(x, gallery, gallery_mask, deterministic)
        x = layers.layer_norm("ln_1", self.dtype)(x + drop(attended))              # Eq (5)
        if self.ffn == "none":
            return x
        ffn = GatedFFN(int(x.shape[-1] * self.mlp_ratio), self.ffn, self.dropout, self.dtype,
                       name="ffn")
        return layers.layer_norm("ln_2", self.dtype)(x + drop(ffn(x, deterministic)))  # (6)


class ContextRefinement(nn.Module):
    """Both directions. Parameters: video/... (videos attend to texts), text/... (the reverse)."""

    dim: int = 512  # D_a
    heads: int = 8
    ffn: str = "swiglu"
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    dtype: Any = jnp.float32

    def setup(self):
        block = lambda name: RefineBlock(self.dim, self.heads, self.ffn,  # noqa: E731
                                         self.mlp_ratio, self.dropout, self.dtype, name=name)
        self.video = block("video")
        self.text = block("text")

    def refine_video(self, video: Array, text_gallery: Array,
                     text_mask: Optional[Array] = None, deterministic: bool = True) -> Array:
        """video (Nv, D_v) attends over text_gallery (Nt, D_t) [text_mask (Nt,)] -> (Nv, D_v)."""
        return self.video(video, text_gallery, text_mask, deterministic)

    def refine_text(self, text: Array, video_gallery: Array,
                    video_mask: Optional[Array] = None, deterministic: bool = True) -> Array:
        """text (Nt, D_t) attends over video_gallery (Nv, D_v) [video_mask (Nv,)] -> (Nt, D_t)."""
        return self.text(text, video_gallery, video_mask, deterministic)

    def __call__(self, video: Array, text: Array, video_mask: Optional[Array] = None,
                 text_mask: Optional[Array] = None,
                 deterministic: bool = True) -> Tuple[Array, Array]:
        """video (Nv, D_v), text (Nt, D_t) -> refined (Nv, D_v), (Nt, D_t); each side sees the
        other's unrefined features as its gallery."""
        return (self.refine_video(video, text, text_mask, deterministic),
                self.refine_text(text, video, video_mask, deterministic))


class ProjectionHead(nn.Module):
    """Section 2.3's projection: fc1 (D, H) -> GELU -> dropout -> fc2 (H, E), with biases.
    (..., D) -> (..., E), not normalised."""

    out_dim: int  # E
    hidden: int = 0  # H; 0: the input width D
    dropout: float = 0.1  # on the hidden units
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        h = _dense(self.hidden or x.shape[-1], self.dtype, "fc1")(x)
        h = nn.Dropout(self.dropout)(nn.gelu(h, approximate=False), deterministic=deterministic)
        return _dense(self.out_dim, self.dtype, "fc2")(h)


def check_config(c) -> None:
    """Raises ValueError 'refine.KEY: expected ..., got ...' for the first bad (or missing: a
    config saved before the key existed) key of a model config's `refine` block
    (retrieval.model_config; config.validate_model calls it when refinement is enabled)."""
    dim = c.get("dim")
    positive_int = lambda x: isinstance(x, int) and not isinstance(x, bool) and x > 0  # noqa: E731
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    rules = (
        ("dim", positive_int, "a positive int (D_a)"),
        ("heads", lambda x: positive_int(x) and positive_int(dim) and dim % x == 0,
         f"a positive divisor of refine.dim={dim}"),
        ("dropout", lambda x: number(x) and 0 <= x < 1, "a rate in [0, 1)"),
        ("ffn", lambda x: x in FFN_KINDS, f"one of {FFN_KINDS}"),
        ("mlp_ratio", lambda x: number(x) and x > 0, "> 0"),
        ("head", lambda x: x in HEAD_KINDS, f"one of {HEAD_KINDS}"),
        ("head_hidden", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0,
         "an int >= 0 (0: the head's input width)"),
    )
    for key, ok, expected in rules:
        if not ok(c.get(key)):
            raise ValueError(f"refine.{key}: expected {expected}, got {c.get(key)!r}")
