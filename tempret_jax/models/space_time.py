"""EgoVLP's video tower: Frozen-in-Time's space-time transformer (divided attention).

Followed: showlab/EgoVLP model/video_transformer.py (`SpaceTimeTransformer`, `SpaceTimeBlock`,
`VarAttention`) and model/model.py (`FrozenInTime.compute_video`: the tower, then `vid_proj`).

Input: video (B, F, H, W, 3), pixels already normalised, F <= num_frames (EgoVLP accepts fewer
frames than its temporal embedding holds and uses the first F rows). Each frame is cut into
N = (H/p)(W/p) patches by `conv1` (with bias); tokens are frame-major: [cls, f0 n0 .. f0 nN-1,
f1 n0, ...]. The class token takes positional_embedding[0]; patch (f, n) takes
positional_embedding[1 + n] + temporal_embedding[f].

Every block attends twice, each time over a subset of the tokens, then applies its MLP:

    t = x + time_attn(ln_time(x))      cls -> every token; patch (f, n) -> cls + (f', n) for all f'
    s = x + attn(ln_1(t))              cls -> every token; patch (f, n) -> cls + (f, n') for all n'
    x = s + mlp(ln_2(s))

Note the second residual adds to x, not t: Frozen-in-Time's 'frozen-in-time' attention style,
so the temporal attention reaches the stream only through the spatial attention's input. The
clip feature is ln_post of the class token (LayerNorm eps 1e-6), projected by `proj` +
`proj_bias` (EgoVLP's vid_proj Linear(768, 256)).

Initialisation follows EgoVLP's `time_init='zeros'` (configs/ft/epic.json): the temporal
attention's q/k/v are zero and its output projection is all ones, so a fresh tower computes
an image ViT per frame plus a constant; the temporal embedding starts at zero.
"""

import functools
from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers
from tempret_jax.models.layers import StackSettings

Array = jax.Array


class DividedAttention(nn.Module):
    """Attention of Frozen-in-Time's `VarAttention` over (1 + F*N) frame-major tokens.

    The class token attends to every token. Patch tokens are grouped, along `axis`: 'time'
    groups the F tokens of one spatial position, 'space' the N tokens of one frame; each patch
    attends to the class token and its own group. q/k/v kernels (D, H, K) with biases, `out`
    (H, K, D) with bias (EgoVLP's fused qkv Linear, split, and proj).
    """

    num_heads: int
    frames: int  # F of the input
    axis: str  # 'time' | 'space'
    zero_init: bool = False  # EgoVLP's time_init='zeros': q/k/v 0, output projection 1
    dtype: layers.Dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x (B, 1 + F*N, D) -> (B, 1 + F*N, D)."""
        batch, length, width = x.shape
        heads, frames = self.num_heads, self.frames
        head_dim, patches = width // heads, (length - 1) // frames
        zeros, ones = nn.initializers.zeros, nn.initializers.ones
        proj = functools.partial(nn.DenseGeneral, features=(heads, head_dim), dtype=self.dtype,
                                 param_dtype=jnp.float32,
                                 **(dict(kernel_init=zeros) if self.zero_init else {}))
        q, k, v = (proj(name=name)(x) for name in ("q", "k", "v"))      # (B, L, H, K)
        attend = functools.partial(layers.dot_product_attention,
                                   implementation=self.implementation)
        cls_out = attend(q[:, :1], k, v)                                 # (B, 1, H, K)

        def group(t):  # (B, F*N, H, K) -> (B*G, S, H, K): G groups of S tokens
            t = t.reshape(batch, frames, patches, heads, head_dim)
            if self.axis == "time":
                t = t.transpose(0, 2, 1, 3, 4)
            return t.reshape((-1,) + t.shape[2:])

        groups = patches if self.axis == "time" else frames
        q_g, k_g, v_g = (group(t[:, 1:]) for t in (q, k, v))
        k_g, v_g = (jnp.concatenate([jnp.repeat(t[:, :1], groups, axis=0), g], axis=1)
                    for t, g in ((k, k_g), (v, v_g)))
        out = attend(q_g, k_g, v_g)                                      # (B*G, S, H, K)
        out = out.reshape((batch, groups) + out.shape[1:])
        if self.axis == "time":
            out = out.transpose(0, 2, 1, 3, 4)
        out = jnp.concatenate([cls_out, out.reshape(batch, frames * patches, heads, head_dim)],
                              axis=1)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
                               name="out",
                               **(dict(kernel_init=ones) if self.zero_init else {}))(out)


class SpaceTimeBlock(nn.Module):
    """One Frozen-in-Time block (module docstring); returns (x, None) when `scanned`."""

    num_heads: int
    frames: int
    settings: StackSettings = StackSettings()
    scanned: bool = False

    @nn.compact
    def __call__(self, x: Array):
        """x (B, 1 + F*N, D) -> (B, 1 + F*N, D)."""
        s = self.settings
        attn = functools.partial(DividedAttention, self.num_heads, self.frames, dtype=s.dtype,
                                 implementation=s.attention_impl)
        norm = functools.partial(layers.layer_norm, dtype=s.dtype, eps=s.ln_eps)
        time_out = attn("time", zero_init=True, name="time_attn")(norm("ln_time")(x))
        x = x + attn("space", name="attn")(norm("ln_1")(x + time_out))
        x = x + layers.Mlp(int(x.shape[-1] * s.mlp_ratio), s.mlp_kind, False, s.dtype,
                           name="mlp")(norm("ln_2")(x))
        return (x, None) if self.scanned else x


class SpaceTimeTransformer(nn.Module):
    """EgoVLP's video tower. EgoVLP (ViT-B/16 base_patch16_224): width 768, 12 layers, 12
    heads, out 256; its pretraining uses 4 frames, its EK-100 fine-tuning 16.

    Parameters (D width, E output_dim, p patch_size, N = (image_size / p)^2):
      conv1/{kernel (p, p, 3, D), bias}; class_embedding (D,); positional_embedding (N + 1, D);
      temporal_embedding (num_frames, D); resblocks_{i}/{ln_time, time_attn, ln_1,
      attn, ln_2, mlp}; ln_post; proj (D, E) + proj_bias (E,) [project]. Names follow the
      joint tower (video.py) so loading, inflation and sharding rules treat both alike.
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    output_dim: int = 256
    num_frames: int = 16  # rows of the temporal embedding: the most frames a clip may have
    project: bool = True  # False: no proj, the embedding is the pooled (B, D) output
    stack: StackSettings = StackSettings()

    @nn.compact
    def __call__(self, video: Array) -> Dict[str, Array]:
        """video (B, F, H, W, 3) -> {'embedding': (B, E) (not normalised; (B, D) without
        `project`), 'patch_tokens': (B, F*N, D), 'frame_tokens': (B, F, D) the mean of each
        frame's patch tokens}, tokens after ln_post (for the cross-encoder)."""
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video: expected (B, F, H, W, 3), got shape {video.shape}")
        batch, frames, height, width = video.shape[:4]
        p, dtype = self.patch_size, self.stack.dtype
        grid = self.image_size // p
        if (height, width) != (self.image_size,) * 2:
            raise ValueError(f"video frames {height}x{width}: expected {self.image_size}x"
                             f"{self.image_size}, the size of the learned position embedding")
        if frames > self.num_frames:
            raise ValueError(f"video has {frames} frames but the temporal embedding has "
                             f"{self.num_frames}; load the parameters into a model of "
                             f"num_frames={frames} (state.load_params inflates it)")
        patches = grid * grid
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                    param_dtype=jnp.float32, name="conv1")(
                        video.reshape((batch * frames, height, width, 3)))
        x = x.reshape(batch, frames * patches, self.width)
        init = nn.initializers.truncated_normal(0.02)  # EgoVLP: trunc_normal_(std=.02)
        cls = self.param("class_embedding", init, (self.width,))
        pos = self.param("positional_embedding", init, (patches + 1, self.width))
        temporal = self.param("temporal_embedding", nn.initializers.zeros,
                              (self.num_frames, self.width))
        patch_pos = jnp.tile(pos[1:], (frames, 1)) + jnp.repeat(temporal[:frames], patches, 0)
        cls = jnp.broadcast_to(cls + pos[0], (batch, 1, self.width)).astype(x.dtype)
        x = jnp.concatenate([cls, x + patch_pos.astype(x.dtype)], axis=1)

        x = layers.run_stack(SpaceTimeBlock, self.layers, self.stack, x, (),
                             num_heads=self.heads, frames=frames)
        x = layers.layer_norm("ln_post", dtype, self.stack.ln_eps)(x)
        embedding = x[:, 0]
        if self.project:
            proj = self.param("proj", nn.initializers.normal(self.width ** -0.5),
                              (self.width, self.output_dim))
            bias = self.param("proj_bias", nn.initializers.zeros, (self.output_dim,))
            embedding = embedding @ proj.astype(x.dtype) + bias.astype(x.dtype)
        patch_tokens = x[:, 1:]
        frame_tokens = patch_tokens.reshape(batch, frames, patches, self.width).mean(axis=2)
        return {"embedding": embedding, "patch_tokens": patch_tokens,
                "frame_tokens": frame_tokens}
