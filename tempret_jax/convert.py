"""Checkpoint import: published PyTorch weights -> a params-only orbax checkpoint that knows its
model.

Sources (read by `torch_files.read`: tensors, plain containers and argparse.Namespace only):
  hf        HF transformers `CLIPModel`: a folder with config.json and model.safetensors or
            pytorch_model.bin, or one of those files;
  openai    OpenAI CLIP / open_clip state dicts (`visual.*`, `transformer.*`, ...);
  avion     AVION training checkpoints as its scripts save them (main_lavila_pretrain.py,
            main_lavila_finetune_mir.py; also SMS-Loss's, which is AVION's code): {'epoch',
            'state_dict' ('module.' keys), 'optimizer', 'scaler', 'best_acc1', 'args'}; the
            text tower under 'textual.', projections 'visual.image_projection' (LaViLa:
            top-level 'image_projection'), flash-attn names (attn.Wqkv, mlp.fc1/fc2), the
            linear 'fast conv1' patch embedding, the learned temporal embedding;
  eva_clip  EVA-CLIP's EVA02-CLIP state dicts (EVA02_CLIP_{B_psz16,L_psz14}_s*.pt; also nested
            under 'state_dict' / 'module' as its training code saves them; CustomCLIP's 'text.');
  eva02at   EVA02-AT video towers as the authors' code (SMS-Loss, avion/models/eva.py, released
            only as bytecode) names them: timm's Eva (q_proj/k_proj/v_proj with q and v biases,
            attn.norm, SwiGLU fc1_g/fc1_x/norm/fc2, a Linear `conv1` with bias over
            (c, ph, pw) patches, `temporal_embed`) under 'visual.', in AVION's training
            checkpoint ('module.', 'textual.' text tower);
  egovlp    EgoVLP's Frozen-in-Time (showlab/EgoVLP base/base_trainer.py checkpoints:
            EgoVLP_PT_BEST.pth, its EK-100 fine-tunes): {'state_dict' ('module.' keys), 'config'
            (its pickled ConfigParser, read as an inert placeholder and checked: FrozenInTime,
            SpaceTimeTransformer base_patch16_224, distilbert-base-uncased), 'optimizer', ...};
            the space-time video tower and DistilBERT (models/egovlp_import.py has the table);
            `convert_egovlp_init` builds the Frozen-in-Time its pretraining starts from out of
            a timm ViT and an HF DistilBERT (models/egovlp_init.py).
The format is detected from the keys (`formats.detect_format`). The architecture comes from the file:
sizes from the shapes, the block design from the names (SwiGLU, sub-LN, ln_pre, biases),
LayerNorm epsilon and activation from the family's code (`formats.FAMILY_SETTINGS`: AVION's vision
tower uses eps 1e-6 and nn.GELU, EVA02's eps 1e-6 and a GELU text tower; CLIP eps 1e-5 and
QuickGELU), and a saved `args` (AVION: model name, causal text) is checked. A flag is needed only
where the file cannot say: open_clip LAION weights use GELU (`hidden_act='gelu'`).
LaViLa's TimeSformer video tower (divided space-time attention) is refused.

Output (`save_converted`): a params-only checkpoint as `checkpoint.save_params` writes it
(unrolled layers; `state.load_params` stacks them for scanned models and inflates the temporal
embedding to the model's frames) holding {'visual', 'text', 'logit_scale'}, plus
`model_config.json` inside it: the model config of the weights (`read_model_config`).
`check_fits` is the rule every run applies to a converted `init_from.path` / `--checkpoint`:
the config's architecture (`retrieval.ARCHITECTURE`) must equal the checkpoint's.

Checks: unknown source keys, missing keys, layers whose shapes disagree with layer 0, and any
parameter whose shape differs from what the model config initialises, each named with shapes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from tempret_jax import atomic
from tempret_jax import checkpoint as checkpoint_lib
from tempret_jax import config as config_lib
from tempret_jax import formats
from tempret_jax import torch_files
from tempret_jax.models import egovlp_import
from tempret_jax.models import egovlp_init
from tempret_jax.models import hf_import
from tempret_jax.models import retrieval

CONFIG_FILE = "model_config.json"
ConversionError = formats.ConversionError
FORMATS = formats.FORMATS


# ---------------------------------------------------------------------------------------------
# Reading source files.


@dataclasses.dataclass(frozen=True)
class Source:
    """A checkpoint as read: state_dict {name: tensor}, hf_config (config.json beside HF
    weights, else {}), args (the training script's saved `args` as a dict, else {})."""

    state_dict: dict[str, Any]
    hf_config: dict[str, Any]
    args: dict[str, Any]


def _unwrap(obj: Any, source: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Training checkpoints nest the weights: {'state_dict': ...} / {'model': ...}; returns
    (the weights, the saved args)."""
    args = {}
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            args = (args or torch_files.plain_args(obj.get("args"))
                    or _saved_config(obj.get("config")))
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{source}: expected a state dict (a mapping of names to tensors), "
                              f"got {type(obj).__name__}")
    tensors = [k for k, v in obj.items() if not hasattr(v, "shape")]
    if tensors:
        raise ConversionError(f"{source}: expected a state dict of tensors; {tensors[0]!r} is "
                              f"a {type(obj[tensors[0]]).__name__}")
    return obj, args


def _saved_config(config: Any) -> dict[str, Any]:
    """EgoVLP's pickled ConfigParser (a placeholder, torch_files) -> {'config': its dict}."""
    state = getattr(config, "state", None)
    if (isinstance(config, torch_files.Placeholder) and config.name.endswith(".ConfigParser")
            and isinstance(state, Mapping) and isinstance(state.get("_config"), Mapping)):
        return {"config": state["_config"]}
    return {}


def load_checkpoint(path) -> Source:
    """Reads a checkpoint file or an HF model folder (module docstring)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ConversionError(f"checkpoint {path} does not exist")
    hf_config = {}
    if path.is_dir():
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not files:
            raise ConversionError(f"{path}: expected model.safetensors or pytorch_model.bin in it")
        if (path / "config.json").exists():
            hf_config = json.loads((path / "config.json").read_text())
        path = files[0]
    elif (path.parent / "config.json").exists():
        hf_config = json.loads((path.parent / "config.json").read_text())
    try:
        contents = torch_files.read(path)
    except torch_files.UnreadableCheckpoint as e:
        raise ConversionError(str(e)) from None
    state_dict, args = _unwrap(contents, str(path))
    return Source(dict(state_dict), hf_config, args)


def load_state_dict(path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, HF config.json dict or {}) of a checkpoint (`load_checkpoint`)."""
    source = load_checkpoint(path)
    return source.state_dict, source.hf_config


class _Recorder(dict):
    """A dict that remembers which keys were read, to report the unknown ones."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def _check_layer_shapes(state_dict: Mapping[str, Any]) -> None:
    """Every layer's tensors must have layer 0's shapes (names the first that does not)."""
    layer = re.compile(r"^(.*\.(?:resblocks|layers|layer|blocks)\.)(\d+)(\..*)$")
    bad = []
    for key, value in state_dict.items():
        m = layer.match(key)
        if m and m.group(2) != "0":
            first = f"{m.group(1)}0{m.group(3)}"
            if first in state_dict and tuple(state_dict[first].shape) != tuple(value.shape):
                bad.append(f"{key}: {tuple(value.shape)}, but {first}: "
                           f"{tuple(state_dict[first].shape)}")
    if bad:
        raise ConversionError("layer shapes differ from layer 0: " + "; ".join(bad))


# ---------------------------------------------------------------------------------------------
# Conversion.


def _tower_widths(state_dict: Mapping[str, Any], fmt: str) -> tuple[int, int]:
    keys = {"hf": ("vision_model.embeddings.class_embedding", "text_model.final_layer_norm.weight"),
            "openai": ("visual.class_embedding", "ln_final.weight"),
            "eva_clip": ("visual.patch_embed.proj.weight", "ln_final.weight"),
            "egovlp": ("video_model.patch_embed.proj.bias",
                       "text_model.embeddings.LayerNorm.weight")}[fmt]
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ConversionError(f"{fmt} state dict: missing key {missing[0]!r}")
    return tuple(int(state_dict[k].shape[0]) for k in keys)


def _layer_count(tower: Mapping[str, Any]) -> int:
    return sum(1 for k in tower["transformer"] if k.startswith("resblocks_"))


def _mlp_ratio(hidden: int, width: int) -> float:
    """A ratio r with int(width * r) == hidden (the Mlp's rule), as round as possible: EVA02's
    2048 / 768 gives 2.6667 (its config's value), not 2.666...6 whose product truncates to
    2047."""
    for ratio in (hidden / width, round(hidden / width, 4), (hidden + 0.5) / width):
        if int(width * ratio) == hidden:
            return ratio
    raise ConversionError(f"no MLP ratio gives {hidden} hidden units at width {width}")


def infer_model_config(params: Mapping[str, Any], *, vision_heads: int, text_heads: int,
                       num_frames: int, family: str = "clip", hidden_act: Optional[str] = None,
                       base: Optional[ml_collections.ConfigDict] = None
                       ) -> ml_collections.ConfigDict:
    """The model config of these (unrolled) parameters.

    Sizes and the block design come from the tree (SwiGLU / sub-LN / ln_pre / biases are
    parameters); epsilon and activation from `FAMILY_SETTINGS[family]` (`hidden_act`
    overrides the activation of GELU-family towers). `base` (default: the 'vit_b16' preset)
    supplies everything else (optional modules, dtype, layer-stack options). num_frames
    applies when the parameters have no temporal embedding (an image checkpoint).
    """
    c = copy.deepcopy(base) if base is not None else retrieval.model_config("vit_b16")
    vision_family, text_family = copy.deepcopy(formats.FAMILY_SETTINGS[family])
    if hidden_act is not None:
        for settings in (vision_family, text_family):
            if settings["mlp"] != "swiglu":
                settings["mlp"] = hidden_act
    visual, text = params["visual"], params["text"]
    patch, _, _, v_width = visual["conv1"]["kernel"].shape
    grid = int(round((visual["positional_embedding"].shape[0] - 1) ** 0.5))
    v_mlp = visual["transformer"]["resblocks_0"]["mlp"]
    v_hidden = (v_mlp["w1"] if "w1" in v_mlp else v_mlp["c_fc"])["kernel"].shape[1]
    t_vocab, t_width = text["token_embedding"]["embedding"].shape
    t_hidden = text["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape[1]
    embed, text_embed = visual["proj"].shape[1], text["text_projection"].shape[1]
    if embed != text_embed:
        raise ConversionError(f"visual/proj gives an embedding of {embed} but "
                              f"text/text_projection {text_embed}")
    c.embed_dim = int(embed)
    c.vision.update(
        image_size=int(grid * patch), patch_size=int(patch), width=int(v_width),
        layers=_layer_count(visual), heads=vision_heads, mlp_ratio=_mlp_ratio(v_hidden, v_width),
        sub_ln="ffn_ln" in v_mlp, ln_pre="ln_pre" in visual, qkv_bias="qkv",
        patch_bias="bias" in visual["conv1"], proj_bias="proj_bias" in visual,
        frame_mode=False, pos_embed="learned", rope_grid=0)
    c.vision.update(vision_family)
    if "rope" in c.vision.pos_embed:
        c.vision.rope_grid = formats.EVA_RoPE_GRID
    c.vision.num_frames = int(visual["temporal_embedding"].shape[0]
                              if "temporal_embedding" in visual else num_frames)
    c.text.update(vocab_size=int(t_vocab), context_length=int(text["positional_embedding"].shape[0]),
                  width=int(t_width), layers=_layer_count(text), heads=text_heads,
                  mlp_ratio=_mlp_ratio(t_hidden, t_width), sub_ln=False, **text_family)
    return c


def _check_against_model(params: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    """Names every parameter that is missing, extra, or shaped differently from the model's."""
    config = copy.deepcopy(config)
    config.scan_layers = False
    model = retrieval.RetrievalModel.from_config(config)
    v = config.vision
    video = jax.ShapeDtypeStruct((1, v.num_frames, v.image_size, v.image_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
    expected = checkpoint_lib.flatten(
        jax.eval_shape(model.init, jax.random.key(0), video, ids)["params"])
    got = checkpoint_lib.flatten(params)
    lines = [f"missing {k}: model {tuple(s.shape)}" for k, s in expected.items() if k not in got]
    lines += [f"unexpected {k}: checkpoint {tuple(a.shape)}" for k, a in got.items()
              if k not in expected]
    lines += [f"{k}: checkpoint {tuple(a.shape)}, model {tuple(expected[k].shape)}"
              for k, a in got.items() if k in expected and tuple(a.shape) != expected[k].shape]
    if lines:
        raise ConversionError("converted parameters do not fit the model config:\n  "
                              + "\n  ".join(lines))


def convert_state_dict(state_dict: Mapping[str, Any], *, fmt: str = "auto",
                       vision_heads: Optional[int] = None, text_heads: Optional[int] = None,
                       num_frames: int = 16, hidden_act: Optional[str] = None,
                       args: Optional[Mapping[str, Any]] = None,
                       base_config: Optional[ml_collections.ConfigDict] = None,
                       ) -> tuple[dict, ml_collections.ConfigDict]:
    """A torch state dict -> (params {'visual', 'text', 'logit_scale'} as numpy float32 with
    unrolled layers, the model config of those weights).

    Args:
      state_dict: names -> tensors (or arrays), any of FORMATS.
      fmt: one of FORMATS or 'auto' (`formats.detect_format`).
      vision_heads, text_heads: head counts (not recoverable from weights); default: the
        saved AVION args' model, else width // 64, the rule of every released CLIP / EVA02.
      num_frames: frames of the joint video tower when the checkpoint has no temporal
        embedding (it starts at zeros); a checkpoint's own embedding sets it.
      hidden_act: the MLP activation where the file cannot say ('quick_gelu' | 'gelu'; open_clip
        LAION weights: 'gelu'); default: the family's (module docstring).
      args: the training script's saved args (`Source.args`): AVION's checked
        (`formats.head_counts`), EgoVLP's saved config (`egovlp_import.check_config`).
      base_config: non-architecture settings of the returned config (default: 'vit_b16').

    Raises ConversionError for unknown keys, missing keys, and shape mismatches.
    """
    state_dict, fmt, family, rope_grid = formats.canonical(state_dict, fmt)
    state_dict = _Recorder({k: v for k, v in state_dict.items()
                            if not formats.IGNORED.search(k)})
    _check_layer_shapes(state_dict)
    if fmt == "egovlp":
        problems = egovlp_import.check_config((args or {}).get("config", {}))
        if problems:
            raise ConversionError("not EgoVLP's Frozen-in-Time: " + "; ".join(problems))
    heads = formats.head_counts(_tower_widths(state_dict, fmt), vision_heads, text_heads,
                                args or {})
    if fmt == "egovlp":  # its temporal embedding is always in the file
        convert = egovlp_import.params_from_egovlp
    else:
        convert = functools.partial({"hf": hf_import.params_from_hf_clip,
                                     "openai": hf_import.params_from_openai_clip,
                                     "eva_clip": hf_import.params_from_eva_clip}[fmt],
                                    num_frames=num_frames)
    try:
        params = convert(state_dict, **heads)
    except KeyError as e:
        raise ConversionError(e.args[0]) from None
    unknown = sorted(set(state_dict) - state_dict.read)
    if unknown:
        raise ConversionError(f"{len(unknown)} unknown key(s) in the {fmt} state dict (no "
                              f"parameter of the model takes them): {', '.join(unknown)}")
    if fmt == "egovlp":
        config = egovlp_import.infer_model_config(params, **heads, base=base_config)
    else:
        config = infer_model_config(params, **heads, num_frames=num_frames, family=family,
                                    hidden_act=hidden_act, base=base_config)
    if rope_grid is not None:
        config.vision.rope_grid = rope_grid
    _check_against_model(params, config)
    return params, config


def hf_settings(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """Head counts and activation from an HF CLIPModel config.json (CLIPConfig's defaults for
    absent entries)."""
    vision, text = hf_config.get("vision_config", {}), hf_config.get("text_config", {})
    acts = {vision.get("hidden_act", "quick_gelu"), text.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ConversionError(f"config.json: hidden_act {sorted(acts)}: expected one of "
                              f"'quick_gelu' / 'gelu' shared by both towers")
    return dict(vision_heads=int(vision.get("num_attention_heads", 12)),
                text_heads=int(text.get("num_attention_heads", 8)), hidden_act=acts.pop())


def convert_checkpoint(path, **kwargs) -> tuple[dict, ml_collections.ConfigDict]:
    """`load_checkpoint(path)` then `convert_state_dict`; an HF config.json next to the weights
    supplies head counts and activation, a training checkpoint its saved args, unless given in
    kwargs."""
    source = load_checkpoint(path)
    if source.hf_config:
        settings = hf_settings(source.hf_config)
        kwargs = {**settings, **{k: v for k, v in kwargs.items() if v is not None}}
    kwargs.setdefault("args", source.args)
    try:
        return convert_state_dict(source.state_dict, **kwargs)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None


def convert_egovlp_init(vit, distilbert, *, vision_heads: Optional[int] = None,
                        text_heads: Optional[int] = None, **init
                        ) -> tuple[dict, ml_collections.ConfigDict]:
    """EgoVLP's pretraining start (`egovlp_init.frozen_in_time`; `init`: its num_frames,
    projection_dim, seed) from a timm ViT file and an HF DistilBERT folder or file -> (params,
    model config) as `convert_checkpoint` gives for an EgoVLP file. Text heads: given, else
    config.json's n_heads."""
    text = load_checkpoint(distilbert)
    if text.hf_config.get("activation", "gelu") != "gelu":
        raise ConversionError(f"{distilbert}: config.json activation "
                              f"{text.hf_config['activation']!r}: expected 'gelu'")
    try:
        sd = egovlp_init.frozen_in_time(load_checkpoint(vit).state_dict, text.state_dict, **init)
        return convert_state_dict(sd, fmt="egovlp", vision_heads=vision_heads,
                                  text_heads=text_heads or text.hf_config.get("n_heads"))
    except (KeyError, ValueError) as e:
        raise ConversionError(f"{vit} + {distilbert}: {e.args[0]}") from None


# ---------------------------------------------------------------------------------------------
# Saving, loading and fitting a run's config.


def save_converted(path, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    """Writes the params-only orbax checkpoint at `path` (a new folder) with its model config."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise ConversionError(f"{path} exists; choose a new output folder")
    checkpoint_lib.save_params(path, params)
    atomic.write_text(path / CONFIG_FILE, config.to_json(indent=2) + "\n")


def is_converted(path) -> bool:
    """Whether `path` is a converted checkpoint (it holds a model config)."""
    return bool(path) and (pathlib.Path(path) / CONFIG_FILE).is_file()


def read_model_config(path) -> ml_collections.ConfigDict:
    """The model config `save_converted` wrote beside the parameters (validated); the
    parameters themselves load with `state.load_params` like any other checkpoint."""
    path = pathlib.Path(path).absolute()
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise ConversionError(f"{path}: no {CONFIG_FILE}; not a converted checkpoint")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    retrieval.fill_added_keys(config)
    config_lib.validate_model(config)
    return config


def _same(key: str, a: Any, b: Any, config: ml_collections.ConfigDict) -> bool:
    if key.endswith("mlp_ratio"):  # the hidden width is what the weights fix
        width = config[key.split(".")[0]].width
        return int(width * a) == int(width * b)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def check_fits(model: ml_collections.ConfigDict, path) -> None:
    """Raises config.ConfigError naming the first `retrieval.ARCHITECTURE` key whose value in
    `model` (a run's config.model) differs from the converted checkpoint's at `path`."""
    saved = read_model_config(path)
    for key in retrieval.ARCHITECTURE:
        ours, theirs = _get(model, key), _get(saved, key)
        if not _same(key, ours, theirs, model):
            raise config_lib.ConfigError(
                f"config: model.{key}={ours!r} contradicts the checkpoint {path} "
                f"({CONFIG_FILE}: {theirs!r}); use its value or another checkpoint")


def adopt_architecture(model: ml_collections.ConfigDict, path) -> None:
    """Sets `model`'s `retrieval.ARCHITECTURE` keys to the converted checkpoint's at `path`
    (`init_from.architecture='checkpoint'`; `retrieval.adopt_architecture`)."""
    retrieval.adopt_architecture(model, read_model_config(path))


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config
