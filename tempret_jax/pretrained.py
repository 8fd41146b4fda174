"""Embeddings from a converted checkpoint in a few lines: the project's public scripting API.

    from tempret_jax import pretrained
    m = pretrained.load("converted/avion_b16")   # tools/convert_checkpoint.py output, or a run
    v = m.embed_video(frames)   # frames float32 (B, T, H, W, 3) -> (B, E) unit rows
    t = m.embed_text(m.tokenize(["cut the onion"]))   # ids int (B, L) -> (B, E)
    similarity = v @ t.T

Frames are RGB in [0, 1], normalised as every model here expects: (x - CLIP_MEAN) / CLIP_STD,
channel-wise, with `tempret_jax.data.crops.CLIP_MEAN` / `CLIP_STD` (OpenAI CLIP's constants;
AVION and EVA-CLIP use the same), `normalize_frames` does it; H = W = the model's image_size,
T = its num_frames (or what `load(num_frames=...)` sets: the temporal embedding is inflated
on load). Token ids are what the model's text tower reads (`tokenize`): CLIP BPE sequences
<start> tokens <end> then zeros for CLIP towers; for EgoVLP's DistilBERT, WordPiece rows
[CLS] tokens [SEP] then [PAD] = 0 over the vocabulary file given to `load(vocab_file=...)`,
with an optional attention mask (default: ids != 0, what the tokenizer's mask holds).

`encode_video` / `encode_text` return the projected, unnormalised features (what the authors'
`encode_image` / `encode_text` return); `embed_video` / `embed_text` the L2-normalised
embeddings that retrieval scores with (models with refinement need each other's gallery:
use the evaluators for those).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tempret_jax import convert, run_config, state
from tempret_jax.data.crops import CLIP_MEAN, CLIP_STD
from tempret_jax.data.text_tokens import TextTokenizer
from tempret_jax.models import retrieval


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """RGB frames in [0, 1], (..., 3) -> (frames - CLIP_MEAN) / CLIP_STD float32."""
    frames = np.asarray(frames, np.float32)
    return (frames - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model config, its `RetrievalModel` and parameters (see `load`)."""

    config: ml_collections.ConfigDict
    model: retrieval.RetrievalModel
    params: Any

    @functools.cached_property
    def _apply(self):
        def features(params, method, *inputs):
            return self.model.apply({"params": params}, *inputs, method=method)["features"]
        return jax.jit(features, static_argnums=1)

    def encode_video(self, frames) -> jax.Array:
        """frames float32 (B, T, H, W, 3), normalised -> (B, E) unnormalised features."""
        frames = jnp.asarray(frames, jnp.float32)
        v = self.config.vision
        expected = (v.num_frames, v.image_size, v.image_size, 3)
        if frames.ndim != 5 or frames.shape[1:] != expected:
            raise ValueError(f"frames: expected (B, {', '.join(map(str, expected))}), got "
                             f"{frames.shape}")
        return self._apply(self.params, retrieval.RetrievalModel.encode_video, frames)

    def tokenize(self, texts) -> np.ndarray:
        """texts -> (n, L) int32 ids for this model's text tower (module docstring)."""
        return TextTokenizer.of(self.config.text)([texts] if isinstance(texts, str) else texts)

    def encode_text(self, ids, mask=None) -> jax.Array:
        """ids int (B, L), L <= context_length [mask (B, L) bool: DistilBERT's attention mask]
        -> (B, E) unnormalised features."""
        inputs = [jnp.asarray(ids, jnp.int32)]
        if mask is not None:
            inputs.append(jnp.asarray(mask, bool))
        return self._apply(self.params, retrieval.RetrievalModel.encode_text, *inputs)

    def embed_video(self, frames) -> jax.Array:
        """frames (B, T, H, W, 3) -> (B, E) L2-normalised float32."""
        return retrieval.l2_normalize(self.encode_video(frames))

    def embed_text(self, ids, mask=None) -> jax.Array:
        """ids (B, L) [mask (B, L)] -> (B, E) L2-normalised float32."""
        return retrieval.l2_normalize(self.encode_text(ids, mask))


def load(path, *, num_frames: Optional[int] = None, dtype: str = "float32",
         step: Optional[int] = None, vocab_file: Optional[str] = None) -> Pretrained:
    """A converted checkpoint (tools/convert_checkpoint.py output) or a trained run's workdir
    (its latest checkpoint, or `step`; the EMA copy when the run keeps one) as a Pretrained.

    num_frames: frames of the video tower (default the checkpoint's); dtype: compute dtype
    ('float32' | 'bfloat16'; parameters stay float32); vocab_file: the WordPiece vocabulary
    of a DistilBERT text tower (EgoVLP: distilbert-base-uncased's vocab.txt), for `tokenize`.
    """
    path = pathlib.Path(path)
    key = "params"
    if convert.is_converted(path):
        config = convert.read_model_config(path)
    else:  # a run: the model of the config it saved (config.ConfigError if it saved none)
        run = run_config.load(path)
        config, key = run.model, "ema_params" if run.optim.ema_decay > 0 else "params"
    config.dtype = dtype
    if vocab_file is not None:
        config.text.vocab_file = str(pathlib.Path(vocab_file).absolute())
    if num_frames is not None:
        config.vision.num_frames = num_frames
    model = retrieval.RetrievalModel.from_config(config)
    v = config.vision
    video = jax.ShapeDtypeStruct((1, v.num_frames, v.image_size, v.image_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), video, ids)["params"]
    params, _ = state.load_params(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract),
                                  path, step=step, key=key,
                                  temporal_fix=config.vision.temporal_fix)
    return Pretrained(config, model, jax.device_put(params))
