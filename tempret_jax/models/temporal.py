"""TempRet's temporal transformer: per-frame CLIP embeddings -> one clip embedding.

    out = mean_t(f_t) + out_proj(pool(ln_post(Transformer(f + temporal_embedding))))

`out_proj` (the last layer of the residual branch) is zero-initialised, so at initialisation the
module is exactly frame averaging (CLIP4Clip's mean-pooling baseline) and training starts from
it; the learned temporal embedding makes the residual branch order-aware.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from tempret_jax.models import layers
from tempret_jax.models.layers import StackSettings

Array = jax.Array
POOLS = ("cls", "mean")


class TemporalTransformer(nn.Module):
    """Parameters (D = feature dim): temporal_embedding (num_frames, D); class_embedding (D,)
    ['cls' pool]; transformer/...; ln_post; out_proj (D, D) + (D,) zero-initialised. `stack`
    configures the transformer; its dtype is every layer's."""

    num_frames: int
    layers: int = 2
    heads: int = 8
    pool: str = "mean"
    stack: StackSettings = StackSettings()

    @nn.compact
    def __call__(self, frames: Array) -> Array:
        """frames (B, T, D) per-frame embeddings, T == num_frames -> (B, D) clip embedding."""
        if self.pool not in POOLS:
            raise ValueError(f"temporal pool: expected one of {POOLS}, got {self.pool!r}")
        batch, num_frames, dim = frames.shape
        if num_frames != self.num_frames:
            raise ValueError(f"temporal transformer built for {self.num_frames} frames, got "
                             f"{num_frames}")
        pos = self.param("temporal_embedding", nn.initializers.normal(0.02), (num_frames, dim))
        dtype = self.stack.dtype
        x = (frames + pos).astype(dtype)
        if self.pool == "cls":
            cls = self.param("class_embedding", nn.initializers.normal(0.02), (dim,))
            x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, dim)).astype(x.dtype), x], 1)
        x = layers.Transformer(self.layers, self.heads, self.stack, name="transformer")(x)
        x = layers.layer_norm("ln_post", dtype)(x)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        residual = nn.Dense(dim, kernel_init=nn.initializers.zeros, dtype=dtype,
                            param_dtype=jnp.float32, name="out_proj")(pooled)
        return frames.mean(axis=1) + residual.astype(frames.dtype)
