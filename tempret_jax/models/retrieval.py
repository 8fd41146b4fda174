"""The dual-encoder retrieval model: towers + optional temporal transformer / refinement /
cross-encoder, built from an ml_collections config.

    video (B, T, H, W, 3) --visual--> [frame mode: (B, T, E) --temporal or mean--> ] (B, E) features
    ids (B, L)            --text-->   (B, E) features
    features --> L2-normalise

With refinement (ContextRefine-CLIP, refine.py) the towers have no projection: their features
are the pooled (B, D_v) / (B, D_t) outputs, refined over the other modality's gallery, then
mapped to E by video_head / text_head (two-layer GELU MLPs) and L2-normalised.

Config keys (`model_config(preset)` returns them with the preset's sizes):

    embed_dim            E, the joint embedding size (CLIP's projection dim)
    dtype                compute dtype: 'float32' | 'bfloat16' | 'float16' (params stay float32)
    attention_impl       'auto' (the kernel of the devices: einsum on CPU, cudnn on GPU, pallas on
                         TPU; `TrainSetup` takes the mesh's devices) | 'einsum' | 'xla' |
                         'cudnn' | 'pallas' (models/attention.py)
    scan_layers, remat, remat_policy   layer stacks: nn.scan over layers, nn.remat + policy name
    init_temperature     the softmax temperature logit_scale starts at (CLIP's 0.07)
    vision.{tower ('vit': video.py, joint attention | 'space_time': space_time.py, EgoVLP's
            divided attention), image_size, patch_size, width, layers, heads, mlp_ratio, mlp,
            sub_ln, ln_eps, qkv_bias ('qkv' | 'qv'), ln_pre, patch_bias, proj_bias,
            num_frames, frame_mode, pos_embed ('learned' | 'rope' | 'learned+rope'),
            rope_theta, rope_grid, temporal_fix (param_layout.TEMPORAL_FIXES: how a checkpoint's
            temporal embedding is resized to num_frames)}
            The 'space_time' tower reads only the sizes, mlp, ln_eps and num_frames; it always
            has qkv, patch and projection biases and no ln_pre.
    text.{tower ('clip': text.py, CLIP BPE ids | 'distilbert': distilbert.py, WordPiece ids
          from vocab_file), vocab_size, context_length (the pipeline's token rows; CLIP's
          position table), max_positions (DistilBERT's position table), width, layers, heads,
          mlp_ratio, mlp, sub_ln, ln_eps, vocab_file}
    temporal.{enabled, layers, heads, mlp_ratio, pool ('mean' | 'cls')}   needs vision.frame_mode
    refine.{enabled, dim (D_a), heads, dropout, ffn ('swiglu' | 'geglu' | 'none'), mlp_ratio
            (GatedFFN hidden = int(D * mlp_ratio)), head ('mlp'), head_hidden (0: the input
            width)}   defaults: the paper's (512, 8 heads, dropout 0.1; refine.py)
    cross_encoder.{enabled, width, layers, heads, mlp_ratio, video_tokens ('patch' | 'frame')}

`mlp` is 'quick_gelu' (CLIP) | 'gelu' | 'swiglu' (EVA02); `sub_ln` adds EVA02's sub-LayerNorms.
`ARCHITECTURE` lists the keys a checkpoint's weights are tied to (`convert.check_fits`).
"""

import dataclasses
import math
from typing import Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tempret_jax.models import cross_encoder as cross_encoder_lib
from tempret_jax.models import distilbert as distilbert_lib
from tempret_jax.models import layers
from tempret_jax.models import refine as refine_lib
from tempret_jax.models import space_time as space_time_lib
from tempret_jax.models import temporal as temporal_lib
from tempret_jax.models import text as text_lib
from tempret_jax.models import video as video_lib

Array = jax.Array
PRESETS = ("tiny", "vit_b16", "vit_l14", "avion_b16", "avion_l14", "eva02_b16", "eva02_l14",
           "egovlp_b16", "egovlp_tiny")
VISION_TOWERS = ("vit", "space_time")  # video.VisionTransformer | space_time.SpaceTimeTransformer
TEXT_TOWERS = ("clip", "distilbert")  # text.TextTransformer | distilbert.DistilBert
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = {"auto": None, "xla": "xla", "cudnn": "cudnn", "einsum": "einsum",
                   "pallas": "pallas"}
VIDEO_TOKENS = ("patch", "frame")


ARCHITECTURE = tuple(
    ["embed_dim"]
    + [f"vision.{k}" for k in ("image_size", "patch_size", "width", "layers", "heads",
                               "mlp_ratio", "mlp", "sub_ln", "ln_eps", "qkv_bias", "ln_pre",
                               "patch_bias", "proj_bias", "rope_grid", "tower")]
    + [f"text.{k}" for k in ("vocab_size", "context_length", "width", "layers", "heads",
                             "mlp_ratio", "mlp", "sub_ln", "ln_eps", "tower", "max_positions")])
# Keys a model config saved before they existed lacks; their value then is this default.
ADDED_KEYS = {"init_temperature": 0.07, "vision.tower": "vit", "vision.temporal_fix": "bilinear",
              "text.tower": "clip", "text.vocab_file": "", "text.max_positions": 77}


def model_config(preset: str = "vit_b16") -> ml_collections.ConfigDict:
    """Model config with a preset's architecture; optional modules off (configs/ turn them on).

    'vit_b16' / 'vit_l14': OpenAI CLIP ViT-B/16 / ViT-L/14 (QuickGELU, LayerNorm eps 1e-5).
    'avion_b16' / 'avion_l14': AVION's CLIP_VITB16 / CLIP_VITL14 (avion/models/model_clip.py):
      the CLIP sizes with nn.GELU in both towers, eps 1e-6 in the vision tower and the
      256-d projection of its LaViLa-pretrained releases (`project_embed_dim`); the starting
      point of AVION, TempRet, CR-CLIP and SMS.
    'eva02_b16' / 'eva02_l14': EVA02-CLIP-B-16 / -L-14 (EVA-CLIP's model_configs/*.json and
      eva_vit_model.py): SwiGLU (ratio 2.6667) with sub-LayerNorms, q/v biases, a patch bias,
      no ln_pre, eps 1e-6, a head with bias, 2D RoPE on the pretraining grid of 16 patches
      ('learned+rope'), and a GELU text tower.
    'egovlp_b16': EgoVLP's Frozen-in-Time (`_egovlp`); 'egovlp_tiny' its design at 'tiny' size.
    'tiny': a few-thousand-parameter model for tests.
    """
    if preset not in PRESETS:
        raise ValueError(f"model preset: expected one of {PRESETS}, got {preset!r}")
    family, _, size = preset.rpartition("_") if "_" in preset else ("", "", preset)
    # (embed_dim, image_size, patch, vision width/layers/heads, text width/layers/heads)
    sizes = {"tiny": (16, 32, 8, 32, 2, 4, 32, 2, 4),
             "b16": (512, 224, 16, 768, 12, 12, 512, 12, 8),
             "l14": (768, 224, 14, 1024, 24, 16, 768, 12, 12)}[size]
    embed, image, patch, v_w, v_l, v_h, t_w, t_l, t_h = sizes
    c = ml_collections.ConfigDict()
    c.embed_dim = embed
    c.dtype = "float32"
    c.attention_impl = "auto"
    c.scan_layers = False
    c.remat = False
    c.remat_policy = "nothing_saveable"
    # The softmax temperature a fresh logit_scale starts at (CLIP's 0.07; EVA02-AT pretrains
    # with InfoNCE at a fixed 0.05: 0.05 here and `optim.freeze` on logit_scale).
    c.init_temperature = 0.07
    c.vision = ml_collections.ConfigDict(dict(
        image_size=image, patch_size=patch, width=v_w, layers=v_l, heads=v_h, mlp_ratio=4.0,
        mlp="quick_gelu", sub_ln=False, ln_eps=layers.LN_EPS, qkv_bias="qkv", ln_pre=True,
        patch_bias=False, proj_bias=False, num_frames=4 if preset == "tiny" else 16,
        frame_mode=False, pos_embed="learned", rope_theta=10000.0, rope_grid=0, tower="vit",
        temporal_fix="bilinear"))
    c.text = ml_collections.ConfigDict(dict(
        vocab_size=49408, context_length=77, width=t_w, layers=t_l, heads=t_h, mlp_ratio=4.0,
        mlp="quick_gelu", sub_ln=False, ln_eps=layers.LN_EPS, tower="clip", vocab_file="",
        max_positions=77))
    if family == "avion":
        c.embed_dim = 256
        c.vision.update(mlp="gelu", ln_eps=1e-6)
        c.text.mlp = "gelu"
    elif family == "eva02":
        c.vision.update(mlp="swiglu", mlp_ratio=2.6667, sub_ln=True, ln_eps=1e-6, qkv_bias="qv",
                        ln_pre=False, patch_bias=True, proj_bias=True, pos_embed="learned+rope",
                        rope_grid=16)
        c.text.mlp = "gelu"
    elif family == "egovlp":
        _egovlp(c, tiny=size == "tiny")
    c.temporal = ml_collections.ConfigDict(dict(
        enabled=False, layers=1 if preset == "tiny" else 4, heads=2 if preset == "tiny" else 8,
        mlp_ratio=4.0, pool="mean"))
    c.refine = ml_collections.ConfigDict(dict(
        enabled=False, dim=16 if preset == "tiny" else 512, heads=2 if preset == "tiny" else 8,
        dropout=0.1, ffn="swiglu", mlp_ratio=4.0, head="mlp", head_hidden=0))
    c.cross_encoder = ml_collections.ConfigDict(dict(
        enabled=False, width=t_w, layers=1 if preset == "tiny" else 4, heads=t_h,
        mlp_ratio=4.0, video_tokens="patch"))
    return c


def _egovlp(c: ml_collections.ConfigDict, tiny: bool) -> None:
    """EgoVLP's Frozen-in-Time (EgoVLP model/model.py, model/video_transformer.py): a ViT-B/16
    space-time transformer (eps 1e-6, exact GELU, qkv biases, a patch bias, a projection bias),
    DistilBERT (distilbert-base-uncased: vocabulary 30,522, 6 layers of 768 with 12 heads,
    512 positions, eps 1e-12) and a 256-d joint space. 'egovlp_tiny' is the same design at
    the 'tiny' sizes, for tests and the demo."""
    c.embed_dim = 16 if tiny else 256
    c.vision.update(tower="space_time", mlp="gelu", ln_eps=1e-6, ln_pre=False, patch_bias=True,
                    proj_bias=True, temporal_fix="zeros")
    c.text.update(tower="distilbert", mlp="gelu", ln_eps=1e-12, vocab_size=64 if tiny else 30522,
                  max_positions=77 if tiny else 512)
    if not tiny:
        c.text.update(width=768, layers=6, heads=12)


def adopt_architecture(model: ml_collections.ConfigDict,
                       saved: ml_collections.ConfigDict) -> None:
    """Sets ``model``'s `ARCHITECTURE` keys to those of ``saved`` (the model config of the
    weights a run starts from), in place; everything else (frames, optional modules, dtype,
    layer stacking) stays ``model``'s, except a RoPE position embedding, which the weights
    learned with."""
    for key in ARCHITECTURE:
        *blocks, name = key.split(".")
        node, value = model, saved
        for block in blocks:
            node, value = node[block], value[block]
        node[name] = value[name]
    if "rope" in model.vision.pos_embed or "rope" in saved.vision.pos_embed:
        model.vision.pos_embed = saved.vision.pos_embed


def fill_added_keys(c: ml_collections.ConfigDict) -> None:
    """Gives a model config saved before `ADDED_KEYS` existed their defaults (in place)."""
    for dotted, default in ADDED_KEYS.items():
        *blocks, key = dotted.split(".")
        block = c[blocks[0]] if blocks else c
        if key not in block:
            block[key] = default


def text_padding_mask(ids: Array, tower: str) -> Array:
    """True on real tokens: ids (B, L) of `tower`'s tokenizer -> (B, L) bool."""
    if tower == "distilbert":
        return distilbert_lib.padding_mask(ids)
    return text_lib.text_padding_mask(ids)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
    """x (..., E) -> unit rows (..., E) in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _tower_stack(stack: layers.StackSettings,
                 tower: ml_collections.ConfigDict) -> layers.StackSettings:
    """`stack` with a tower config's block design (its `mlp_ratio`, `mlp`, `sub_ln` keys)."""
    return dataclasses.replace(stack, mlp_ratio=tower.mlp_ratio, mlp_kind=tower.mlp,
                               sub_ln=tower.sub_ln, ln_eps=tower.ln_eps,
                               qkv_bias=tower.get("qkv_bias", "qkv"))


class RetrievalModel(nn.Module):
    """Build with `RetrievalModel.from_config(model_config(...))`.

    Top-level parameters: visual, text, logit_scale; [temporal]; [refine, video_head,
    text_head]; [cross_encoder]. Methods (call with `model.apply(variables, ..., method=...)`):
    encode_video, encode_text, embed_video, embed_text, score_pairs; `__call__` does all at once
    on a batch of pairs (training; also what `init` traces).
    """

    config: ml_collections.FrozenConfigDict

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "RetrievalModel":
        return cls(ml_collections.FrozenConfigDict(config))

    def setup(self):
        c = self.config
        shared = dict(dtype=jnp.dtype(c.dtype), attention_impl=ATTENTION_IMPLS[c.attention_impl])
        stack = layers.StackSettings(scan=c.scan_layers, remat=c.remat,
                                     remat_policy=c.remat_policy, **shared)
        v, t = c.vision, c.text
        # Refinement runs before the projection (its heads project): towers without theirs.
        project = not c.refine.enabled
        if v.tower == "space_time":
            self.visual = space_time_lib.SpaceTimeTransformer(
                image_size=v.image_size, patch_size=v.patch_size, width=v.width,
                layers=v.layers, heads=v.heads, output_dim=c.embed_dim, num_frames=v.num_frames,
                project=project, stack=_tower_stack(stack, v))
        else:
            self.visual = video_lib.VisionTransformer(
                image_size=v.image_size, patch_size=v.patch_size, width=v.width,
                layers=v.layers, heads=v.heads, output_dim=c.embed_dim,
                num_frames=v.num_frames, pos_embed=v.pos_embed, rope_theta=v.rope_theta,
                frame_mode=v.frame_mode, ln_pre=v.ln_pre, patch_bias=v.patch_bias,
                proj_bias=v.proj_bias, rope_grid=v.rope_grid, project=project,
                stack=_tower_stack(stack, v))
        if t.tower == "distilbert":
            self.text = distilbert_lib.DistilBert(
                vocab_size=t.vocab_size, max_positions=t.max_positions, width=t.width,
                layers=t.layers, heads=t.heads, output_dim=c.embed_dim, project=project,
                stack=_tower_stack(stack, t))
        else:
            self.text = text_lib.TextTransformer(
                vocab_size=t.vocab_size, context_length=t.context_length, width=t.width,
                layers=t.layers, heads=t.heads, output_dim=c.embed_dim, project=project,
                stack=_tower_stack(stack, t))
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(math.log(1 / c.init_temperature)), ())
        if c.temporal.enabled:
            # Never scanned nor rematerialised: its layers stay `resblocks_{i}` in every config.
            self.temporal = temporal_lib.TemporalTransformer(
                num_frames=v.num_frames, layers=c.temporal.layers, heads=c.temporal.heads,
                pool=c.temporal.pool,
                stack=layers.StackSettings(mlp_ratio=c.temporal.mlp_ratio, **shared))
        if c.refine.enabled:
            r = c.refine
            self.refine = refine_lib.ContextRefinement(
                dim=r.dim, heads=r.heads, ffn=r.ffn, mlp_ratio=r.mlp_ratio, dropout=r.dropout,
                dtype=shared["dtype"])
            head = lambda: refine_lib.ProjectionHead(  # noqa: E731
                c.embed_dim, r.head_hidden, r.dropout, shared["dtype"])
            self.video_head = head()
            self.text_head = head()
        if c.cross_encoder.enabled:
            x = c.cross_encoder
            self.cross_encoder = cross_encoder_lib.CrossEncoder(
                width=x.width, layers=x.layers, heads=x.heads, num_frames=v.num_frames,
                stack=dataclasses.replace(stack, mlp_ratio=x.mlp_ratio))

    def encode_video(self, video: Array, with_reversed: bool = False) -> Dict[str, Array]:
        """video (B, T, H, W, 3) -> {'features': (B, E) unnormalised clip features ((B, D_v)
        pooled, unprojected, with refinement),
        'tokens': (B, M, D_v) cross-encoder tokens: (B, T*N, D_v) patch or (B, T, D_v) frame}.

        ``with_reversed`` adds 'reversed_features' (shaped like 'features'): the features of every
        clip with its frames in reverse order (time-reversed negatives,
        `global_loss.make_global_loss`). In frame mode the per-frame embeddings are reused,
        reversed; in joint mode the tower runs on the reversed clips too (in the same batch).
        """
        batch = video.shape[0]
        joint_reversed = with_reversed and not self.config.vision.frame_mode
        out = self.visual(jnp.concatenate([video, video[:, ::-1]]) if joint_reversed else video)
        features = out["embedding"]
        result = {}
        if self.config.vision.frame_mode:
            pool = self.temporal if self.config.temporal.enabled else lambda f: f.mean(axis=1)
            if with_reversed:
                result["reversed_features"] = pool(features[:, ::-1])
            features = pool(features)
        elif joint_reversed:
            features, result["reversed_features"] = features[:batch], features[batch:]
        tokens = out[f"{self.config.cross_encoder.video_tokens}_tokens"][:batch]
        return {"features": features, "tokens": tokens, **result}

    def encode_text(self, ids: Array, mask: Optional[Array] = None) -> Dict[str, Array]:
        """ids (B, L) [mask (B, L) bool: a DistilBERT tower's attention mask, default ids != 0]
        -> {'features': (B, E) unnormalised ((B, D_t) unprojected with refinement),
        'tokens': (B, L, D_t), 'mask': (B, L) bool real-token mask}."""
        if self.config.text.tower == "distilbert":
            mask = text_padding_mask(ids, "distilbert") if mask is None else mask
            features, tokens = self.text(ids, mask)
            return {"features": features, "tokens": tokens, "mask": mask}
        if mask is not None:
            raise ValueError("encode_text: a mask is read by the 'distilbert' text tower only; "
                             "CLIP's ids mark their own end")
        features, tokens = self.text(ids)
        return {"features": features, "tokens": tokens, "mask": text_padding_mask(ids, "clip")}

    def _embed(self, modality: str, features: Array, gallery: Optional[Array],
               gallery_mask: Optional[Array], deterministic: bool) -> Array:
        """embed_video / embed_text: features (B, D) of `modality` ('video' | 'text') -> unit
        embeddings (B, E) float32, refined over the other modality's gallery (G, D_g) and
        projected by its head (D = E without refinement: the features are the embeddings)."""
        if self.config.refine.enabled:
            if gallery is None:
                other = {"video": "text", "text": "video"}[modality]
                raise ValueError(f"refine.enabled: {other}_gallery is required (the other "
                                 f"modality's features to attend over; see refine.py)")
            refine, head = ((self.refine.refine_video, self.video_head) if modality == "video"
                            else (self.refine.refine_text, self.text_head))
            features = head(refine(features, gallery, gallery_mask, deterministic),
                            deterministic)
        return l2_normalize(features)

    def embed_video(self, features: Array, text_gallery: Optional[Array] = None,
                    text_mask: Optional[Array] = None, deterministic: bool = True) -> Array:
        """features (B, D_v) -> unit embeddings (B, E) float32; with refinement, attends over
        text_gallery (G, D_t) unrefined text features [text_mask (G,) bool].
        ``deterministic=False`` (training) applies dropout and needs a 'dropout' rng."""
        return self._embed("video", features, text_gallery, text_mask, deterministic)

    def embed_text(self, features: Array, video_gallery: Optional[Array] = None,
                   video_mask: Optional[Array] = None, deterministic: bool = True) -> Array:
        """features (B, D_t) -> unit embeddings (B, E) float32; with refinement, attends over
        video_gallery (G, D_v) unrefined video features [video_mask (G,) bool]; dropout as in
        `embed_video`."""
        return self._embed("text", features, video_gallery, video_mask, deterministic)

    def score_pairs(self, text_tokens: Array, text_mask: Array, video_tokens: Array) -> Array:
        """Cross-encoder ITM logits from cached tokens, leading dims broadcast (see
        CrossEncoder.score): (*A, L, D_t), (*A, L), (*C, M, D_v) -> (*broadcast(A, C))."""
        if not self.config.cross_encoder.enabled:
            raise ValueError("score_pairs: model config cross_encoder.enabled is False")
        return self.cross_encoder.score(text_tokens, text_mask, video_tokens)

    def __call__(self, video: Array, ids: Array, deterministic: bool = True) -> Dict[str, Array]:
        """A batch of B (video, text) pairs; refinement galleries are the batch itself
        (``deterministic=False``: refinement dropout, with a 'dropout' rng).

        video (B, T, H, W, 3), ids (B, L) -> {'video': (B, E), 'text': (B, E) unit embeddings,
        'logit_scale': () exp'd, 'video_tokens', 'text_tokens', 'text_mask' (for ITM negatives),
        ['itm_logits': (B,) of the matched pairs when the cross-encoder is enabled]}.
        """
        v, t = self.encode_video(video), self.encode_text(ids)
        out = {"video": self.embed_video(v["features"], t["features"], None, deterministic),
               "text": self.embed_text(t["features"], v["features"], None, deterministic),
               "logit_scale": jnp.exp(self.logit_scale),
               "video_tokens": v["tokens"], "text_tokens": t["tokens"], "text_mask": t["mask"]}
        if self.config.cross_encoder.enabled:
            out["itm_logits"] = self.score_pairs(t["tokens"], t["mask"], v["tokens"])
        return out
