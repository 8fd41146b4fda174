"""Transformer building blocks shared by every tower (video, text, temporal, refine, cross-encoder).

One attention module, one MLP, one pre-LN residual block and one layer stack (its sizes plus one
`StackSettings`); the towers differ only in how they configure them. The attention kernel of
each backend lives in attention.py (`dot_product_attention`, re-exported here for the towers).
Parameter names follow OpenAI CLIP (`ln_1`, `attn`, `ln_2`, `mlp/c_fc`, `mlp/c_proj`) and EVA02
(`mlp/w1..w3`, `mlp/ffn_ln`, `attn/inner_attn_ln`) so that checkpoint conversion is a renaming
plus reshapes (see `hf_import.py` for the table).

Shapes: B batch, L query length, S key/value length, D model width, H heads, K head dim (D = H*K).
Parameters are always float32 (`param_dtype`); `dtype` is the compute dtype (bfloat16 on
accelerators). A mask is boolean, True where attention is allowed, broadcastable to (B, H, L, S).
A RoPE table is a pair (cos, sin), each (L, K // 2) float32, one angle per rotary pair.
"""

import dataclasses
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import attention as attention_lib
from tempret_jax.models import rope as rope_lib

Array = jax.Array
Dtype = Any
RopeTable = Tuple[Array, Array]

LN_EPS = 1e-5  # CLIP's LayerNorm epsilon (flax defaults to 1e-6); AVION's and EVA02's vision
# towers use 1e-6 (`StackSettings.ln_eps`).
MLP_KINDS = ("quick_gelu", "gelu", "swiglu")
# The remat policy of a scanned stack without `remat`: keep the outputs of matrix products,
# recompute the elementwise rest in the backward pass, as XLA's fusion does for unrolled layers.
# A scan keeps every residual of every layer as a stacked array instead, which doubled the
# temporaries (docs/design.md, Models: scan and remat).
SCAN_POLICY = "dots_saveable"
QKV_BIAS = ("qkv", "qv")  # which input projections have a bias: all (CLIP) or q and v (EVA02)
ATTENTION_IMPLEMENTATIONS = attention_lib.IMPLEMENTATIONS
dot_product_attention = attention_lib.dot_product_attention


def quick_gelu(x: Array) -> Array:
    """CLIP's GELU approximation x * sigmoid(1.702 x); any shape."""
    return x * jax.nn.sigmoid(1.702 * x)


def layer_norm(name: str, dtype: Dtype, eps: float = LN_EPS) -> nn.LayerNorm:
    """A LayerNorm with float32 parameters (default: CLIP's epsilon)."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def remat_policy(name: str):
    """Maps a `jax.checkpoint_policies` attribute name (e.g. 'nothing_saveable') to the policy."""
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None or name.startswith("_"):
        raise ValueError(
            f"remat_policy: expected the name of a jax.checkpoint_policies member "
            f"(e.g. 'nothing_saveable', 'dots_saveable'), got {name!r}")
    # Some members are policy factories (save_only_these_names, ...): they need arguments.
    if name in ("save_only_these_names", "save_any_names_but_these",
                "save_anything_except_these_names", "save_and_offload_only_these_names",
                "save_from_both_policies"):
        raise ValueError(f"remat_policy: {name!r} needs arguments; use a plain policy name")
    return policy


class Attention(nn.Module):
    """Multi-head attention: self-attention, or cross-attention when `context` is given.

    q/k/v kernels are (D_in, H, K) with (H, K) biases (`qkv_bias='qv'`, EVA02: k has none);
    `out` is (H, K, D). With `sub_ln` (EVA02) a LayerNorm over the H*K concatenated heads
    precedes the output projection.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    implementation: Optional[str] = None
    sub_ln: bool = False
    causal: bool = False
    qkv_bias: str = "qkv"  # one of QKV_BIAS
    ln_eps: float = LN_EPS  # of the sub-LayerNorm

    @nn.compact
    def __call__(self, x: Array, context: Optional[Array] = None, *,
                 mask: Optional[Array] = None, rope: Optional[RopeTable] = None) -> Array:
        """x (B, L, D), context (B, S, D_c) or None -> (B, L, D).

        `rope` rotates q and k (self-attention only: both are indexed by the same positions).
        """
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        proj = functools.partial(nn.DenseGeneral, features=(self.num_heads, head_dim),
                                 dtype=self.dtype, param_dtype=jnp.float32)
        kv_input = x if context is None else context
        if self.qkv_bias not in QKV_BIAS:
            raise ValueError(f"qkv_bias: expected one of {QKV_BIAS}, got {self.qkv_bias!r}")
        q = proj(name="q")(x)
        k = proj(name="k", use_bias=self.qkv_bias == "qkv")(kv_input)
        v = proj(name="v")(kv_input)
        if rope is not None:
            if context is not None:
                raise ValueError("rope applies to self-attention only")
            q = rope_lib.apply_rope(q, *rope)
            k = rope_lib.apply_rope(k, *rope)
        out = dot_product_attention(q, k, v, mask=mask, is_causal=self.causal,
                                    implementation=self.implementation)
        if self.sub_ln:
            out = layer_norm("inner_attn_ln", self.dtype, self.ln_eps)(
                out.reshape(out.shape[:-2] + (width,))).reshape(out.shape)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
                               name="out")(out)


class Mlp(nn.Module):
    """Feed-forward layer: (..., D) -> (..., D).

    'quick_gelu' (CLIP) / 'gelu': c_fc -> act -> c_proj. 'swiglu' (EVA02, also the gated FFN
    of the refinement module): silu(w1 x) * (w2 x) -> w3. `sub_ln` (EVA02) adds a LayerNorm
    `ffn_ln` on the hidden activations.
    """

    hidden_dim: int
    kind: str = "quick_gelu"
    sub_ln: bool = False
    dtype: Dtype = jnp.float32
    ln_eps: float = LN_EPS  # of the sub-LayerNorm

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x (..., D) -> (..., D)."""
        if self.kind not in MLP_KINDS:
            raise ValueError(f"mlp kind: expected one of {MLP_KINDS}, got {self.kind!r}")
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        if self.kind == "swiglu":
            h = nn.silu(dense(self.hidden_dim, name="w1")(x)) * dense(self.hidden_dim, name="w2")(x)
            out_name = "w3"
        else:
            h = dense(self.hidden_dim, name="c_fc")(x)
            h = quick_gelu(h) if self.kind == "quick_gelu" else nn.gelu(h, approximate=False)
            out_name = "c_proj"
        if self.sub_ln:
            h = layer_norm("ffn_ln", self.dtype, self.ln_eps)(h)
        return dense(x.shape[-1], name=out_name)(h)


@dataclasses.dataclass(frozen=True)
class StackSettings:
    """What every block of a layer stack shares: the block's design and how the stack computes.

    Towers take one as their `stack` attribute and add only their own sizes (layers, heads).
    """

    mlp_ratio: float = 4.0  # MLP hidden width = int(D * mlp_ratio)
    mlp_kind: str = "quick_gelu"  # one of MLP_KINDS
    sub_ln: bool = False  # EVA02's sub-LayerNorms in attention and MLP
    ln_eps: float = LN_EPS  # every LayerNorm of the blocks
    qkv_bias: str = "qkv"  # one of QKV_BIAS
    dtype: Dtype = jnp.float32  # compute dtype; parameters stay float32
    attention_impl: Optional[str] = None  # one of ATTENTION_IMPLEMENTATIONS
    scan: bool = False  # nn.scan over the layers (one stacked parameter tree; see SCAN_POLICY)
    remat: bool = False  # recompute each block's activations in the backward pass
    remat_policy: str = "nothing_saveable"  # a jax.checkpoint_policies name, see remat_policy


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1 x) [+ cross_attn(ln_cross x, context)] + mlp(ln_2 x).

    Uses the block fields of `settings` (all but scan / remat, which are the stack's). With
    `scanned` the block returns (x, None), the carry/output pair `nn.scan` expects.
    """

    num_heads: int
    settings: StackSettings = StackSettings()
    causal: bool = False
    cross_attention: bool = False
    scanned: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None, rope: Optional[RopeTable] = None,
                 context: Optional[Array] = None, context_mask: Optional[Array] = None):
        """x (B, L, D); mask (B|1, 1|H, L|1, L); context (B, S, D_c); context_mask (B|1, 1, 1|L, S).

        Returns (B, L, D) (or ((B, L, D), None) when `scanned`).
        """
        s = self.settings
        attn = functools.partial(Attention, num_heads=self.num_heads, dtype=s.dtype,
                                 implementation=s.attention_impl, sub_ln=s.sub_ln,
                                 qkv_bias=s.qkv_bias, ln_eps=s.ln_eps)
        x = x + attn(causal=self.causal, name="attn")(
            layer_norm("ln_1", s.dtype, s.ln_eps)(x), mask=mask, rope=rope)
        if self.cross_attention:
            if context is None:
                raise ValueError("a cross-attention block needs `context`")
            x = x + attn(name="cross_attn")(
                layer_norm("ln_cross", s.dtype, s.ln_eps)(x), context, mask=context_mask)
        mlp = Mlp(int(x.shape[-1] * s.mlp_ratio), s.mlp_kind, s.sub_ln, s.dtype, s.ln_eps,
                  name="mlp")
        x = x + mlp(layer_norm("ln_2", s.dtype, s.ln_eps)(x))
        return (x, None) if self.scanned else x


class Transformer(nn.Module):
    """A stack of `num_layers` ResidualAttentionBlocks (no final LayerNorm: towers add their own).

    Unrolled, layer i lives at `resblocks_{i}`; with `settings.scan` all layers live at
    `resblocks` with a leading layer axis on every parameter (compiles once per stack instead of
    once per layer). `settings.remat` recomputes each block's activations in the backward pass
    under `settings.remat_policy`.
    """

    num_layers: int
    num_heads: int
    settings: StackSettings = StackSettings()
    causal: bool = False
    cross_attention: bool = False

    @nn.compact
    def __call__(self, x: Array, *, mask: Optional[Array] = None,
                 rope: Optional[RopeTable] = None, context: Optional[Array] = None,
                 context_mask: Optional[Array] = None) -> Array:
        """x (B, L, D) -> (B, L, D); arguments as in ResidualAttentionBlock."""
        s = self.settings
        if s.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_impl: expected one of {ATTENTION_IMPLEMENTATIONS}, "
                             f"got {s.attention_impl!r}")
        block_kwargs = dict(num_heads=self.num_heads, causal=self.causal,
                            cross_attention=self.cross_attention)
        return run_stack(ResidualAttentionBlock, self.num_layers, s, x,
                         (mask, rope, context, context_mask), **block_kwargs)


def run_stack(block_cls: type, num_layers: int, settings: StackSettings, x: Array,
              args: tuple, **block_kwargs) -> Array:
    """`num_layers` blocks of `block_cls` applied to x, unrolled (`resblocks_{i}`) or under
    nn.scan (`resblocks`, a leading layer axis), with nn.remat per `settings` (scanned without
    remat: under SCAN_POLICY).

    Call inside a compact method (the blocks become its children). A block takes
    (settings=..., scanned=..., **block_kwargs), is called as block(x, *args) and returns x,
    or (x, None) when `scanned`; `args` are broadcast to every layer.
    """
    s = settings
    if s.remat:
        # Under scan, CSE across iterations is impossible anyway; prevent_cse only costs.
        block_cls = nn.remat(block_cls, policy=remat_policy(s.remat_policy),
                             prevent_cse=not s.scan)
    elif s.scan:
        block_cls = nn.remat(block_cls, policy=remat_policy(SCAN_POLICY), prevent_cse=False)
    if s.scan:
        stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,) * len(args), length=num_layers)
        x, _ = stack(**block_kwargs, settings=s, scanned=True, name="resblocks")(x, *args)
        return x
    for i in range(num_layers):
        x = block_cls(**block_kwargs, settings=s, name=f"resblocks_{i}")(x, *args)
    return x
