"""AVION/CLIP-style video ViT (joint space-time attention) and its frame-level (TempRet) mode.

Input: video (B, T, H, W, 3), pixels already normalised. Each frame is cut into N = (H/p)(W/p)
patches by `conv1` (kernel 1 x p x p, no bias, as CLIP), giving T*N patch tokens (frame-major,
then row, then column) plus one class token.

Position information ('pos_embed'):
- 'learned': CLIP's learned spatial embedding (N + 1, D) (row 0 is the class token's), tiled over
  frames, plus AVION's learned temporal embedding (T, D), zero-initialised so that a CLIP image
  checkpoint starts as frame-independent, added to every patch of frame t (not the class token);
- 'rope': no learned embeddings; EVA02-AT spatial-temporal RoPE on q/k of patch tokens;
- 'learned+rope': both.

Modes:
- joint (AVION, EVA02-AT): all T*N + 1 tokens attend jointly; one clip embedding per video.
- frame (TempRet): the CLIP image encoder runs on every frame separately (each frame is a clip of
  length 1 with its own class token; no temporal embedding, so a CLIP checkpoint is used as is);
  it returns one embedding per frame for the temporal transformer. RoPE, if on, is spatial only.

The video tower with T = 1 in joint mode is exactly the CLIP image tower.
"""

from typing import Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tempret_jax.models import layers
from tempret_jax.models import rope as rope_lib
from tempret_jax.models.layers import StackSettings

Array = jax.Array
POS_EMBED_KINDS = ("learned", "rope", "learned+rope")


class VisionTransformer(nn.Module):
    """Video ViT. Sizes: ViT-B/16 (768, 12 layers, 12 heads, out 512), ViT-L/14 (1024, 24, 16, 768).

    Parameters (D width, E output_dim, p patch_size, N = (image_size / p)^2):
      conv1/kernel (p, p, 3, D) [conv1/bias (D,): patch_bias]; class_embedding (D,);
      positional_embedding (N + 1, D); temporal_embedding (num_frames, D) [joint mode,
      learned]; ln_pre [ln_pre]; transformer/...; ln_post; proj (D, E) [proj_bias (E,)]
      [project]. `stack` configures the transformer; its dtype and ln_eps are every layer's.
      Without `project` (ContextRefine-CLIP, whose refinement runs before its own projection
      heads) there is no proj: the embedding is ln_post of the class token, width D.

    CLIP / AVION: ln_pre, no patch or projection bias. EVA02 (EVA-CLIP's EVAVisionTransformer):
    no ln_pre, a patch-embedding bias, its final `norm` is ln_post and its `head` Linear is
    proj + proj_bias; its RoPE positions are rescaled to the pretraining grid (`rope_grid`).
    """

    image_size: int = 224  # frame side in pixels that the learned position embedding fits
    patch_size: int = 16  # p, pixels
    width: int = 768  # D
    layers: int = 12
    heads: int = 12
    output_dim: int = 512  # E
    num_frames: int = 16  # T of the learned temporal embedding (joint mode)
    pos_embed: str = "learned"  # one of POS_EMBED_KINDS
    rope_theta: float = 10000.0  # RoPE base of the angle frequencies
    frame_mode: bool = False  # TempRet: every frame encoded on its own
    ln_pre: bool = True  # a LayerNorm before the transformer (CLIP, AVION; not EVA02)
    patch_bias: bool = False  # conv1 has a bias (EVA02)
    proj_bias: bool = False  # the output projection has a bias (EVA02's head)
    rope_grid: int = 0  # RoPE positions span this many patches per side (EVA-CLIP's
    # pt_hw_seq_len: 16 for EVA02-CLIP-B/16 on a 14 x 14 grid); 0: the input grid, unscaled
    project: bool = True  # False: no proj, the embedding is the pooled (B, D) output
    stack: StackSettings = StackSettings()

    @nn.compact
    def __call__(self, video: Array) -> Dict[str, Array]:
        """video (B, T, H, W, 3) -> dict with

        - 'embedding': (B, E) clip embedding (joint mode) or (B, T, E) per-frame embeddings
          (frame mode): ln_post(class token) @ proj, not normalised (E = D without `project`);
        - 'patch_tokens': (B, T*N, D) ln_post of the patch tokens (for the cross-encoder);
        - 'frame_tokens': (B, T, D) one token per frame: its ln_post class token (frame mode) or
          the mean of its patch tokens (joint mode).
        """
        if self.pos_embed not in POS_EMBED_KINDS:
            raise ValueError(
                f"pos_embed: expected one of {POS_EMBED_KINDS}, got {self.pos_embed!r}")
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video: expected (B, T, H, W, 3), got shape {video.shape}")
        batch, num_frames, height, width = video.shape[:4]
        dtype = self.stack.dtype
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"video frames {height}x{width} are not divisible by patch size {p}")
        grid_h, grid_w = height // p, width // p
        num_patches = grid_h * grid_w
        if self.frame_mode:  # every frame is a clip of length 1
            video = video.reshape((batch * num_frames, 1) + video.shape[2:])
        clips, clip_len = video.shape[:2]

        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                    dtype=dtype, param_dtype=jnp.float32, name="conv1")(
                        video.reshape((clips * clip_len, height, width, 3)))
        x = x.reshape(clips, clip_len * num_patches, self.width)

        scale = self.width ** -0.5
        cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
        cls = jnp.broadcast_to(cls, (clips, 1, self.width)).astype(x.dtype)
        if "learned" in self.pos_embed:
            grid = self.image_size // p
            if (grid_h, grid_w) != (grid, grid):
                raise ValueError(
                    f"video frames {height}x{width} do not match image_size {self.image_size} "
                    f"of the learned position embedding; resample it with "
                    f"resample_spatial_position_embedding")
            pos = self.param("positional_embedding", nn.initializers.normal(scale),
                             (num_patches + 1, self.width))
            cls = cls + pos[0].astype(x.dtype)
            patch_pos = jnp.tile(pos[1:], (clip_len, 1))                        # (T*N, D)
            if not self.frame_mode:
                if clip_len != self.num_frames:
                    raise ValueError(
                        f"video has {clip_len} frames but the temporal embedding has "
                        f"{self.num_frames}; load the parameters into a model of "
                        f"num_frames={clip_len} (state.load_params inflates it)")
                temporal = self.param("temporal_embedding", nn.initializers.zeros,
                                      (self.num_frames, self.width))
                patch_pos = patch_pos + jnp.repeat(temporal, num_patches, axis=0)
            x = x + patch_pos.astype(x.dtype)
        x = jnp.concatenate([cls, x], axis=1)                                  # (B', 1+T'N, D)
        eps = self.stack.ln_eps
        if self.ln_pre:
            x = layers.layer_norm("ln_pre", dtype, eps)(x)

        rope = None
        if "rope" in self.pos_embed:
            rope = rope_lib.rope_table(rope_lib.spatial_temporal_angles(
                clip_len, grid_h, grid_w, self.width // self.heads, self.rope_theta,
                pretrain_grid=self.rope_grid or None))
        x = layers.Transformer(self.layers, self.heads, self.stack, name="transformer")(
            x, rope=rope)
        x = layers.layer_norm("ln_post", dtype, eps)(x)

        embedding = self._project(x[:, 0], scale) if self.project else x[:, 0]
        patch_tokens = x[:, 1:].reshape(batch, num_frames * num_patches, self.width)
        if self.frame_mode:
            embedding = embedding.reshape(batch, num_frames, embedding.shape[-1])
            frame_tokens = x[:, 0].reshape(batch, num_frames, self.width)
        else:
            frame_tokens = patch_tokens.reshape(
                batch, num_frames, num_patches, self.width).mean(axis=2)
        return {"embedding": embedding, "patch_tokens": patch_tokens,
                "frame_tokens": frame_tokens}

    def _project(self, pooled: Array, scale: float) -> Array:
        """pooled (B', D) -> (B', E): pooled @ proj [+ proj_bias]."""
        proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim))
        embedding = pooled @ proj.astype(pooled.dtype)
        if self.proj_bias:
            embedding = embedding + self.param("proj_bias", nn.initializers.zeros,
                                               (self.output_dim,)).astype(pooled.dtype)
        return embedding


def resample_spatial_position_embedding(embedding: Array, grid: Sequence[int],
                                        method: str = "cubic") -> Array:
    """Resizes CLIP's learned spatial embedding to a new patch grid (new resolution).

    embedding (1 + G0*G0, D) with the class token's row first -> (1 + gh*gw, D); the class row
    is kept, the G0 x G0 grid is resized with `jax.image.resize` ('cubic' or 'linear', no
    antialiasing). jax's cubic kernel is Keys' a = -0.5 (torch's bicubic uses a = -0.75).
    """
    if method not in ("cubic", "linear"):
        raise ValueError(f"method: expected 'cubic' or 'linear', got {method!r}")
    embedding = jnp.asarray(embedding)
    old = int(round(np.sqrt(embedding.shape[0] - 1)))
    if old * old != embedding.shape[0] - 1:
        raise ValueError(f"position embedding with {embedding.shape[0]} rows is not "
                         f"1 + a square grid")
    gh, gw = grid
    patches = embedding[1:].reshape(old, old, -1)
    patches = jax.image.resize(patches, (gh, gw, patches.shape[-1]), method, antialias=False)
    return jnp.concatenate([embedding[:1], patches.reshape(gh * gw, -1)]).astype(embedding.dtype)
