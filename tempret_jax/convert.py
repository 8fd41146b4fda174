"""Checkpoint import: PyTorch CLIP / AVION / LaViLa weights -> a params-only orbax checkpoint.

Sources (`load_state_dict` reads them; `torch.load(weights_only=True)` only, safetensors via the
`safetensors` package):
  hf      HF transformers `CLIPModel`: a folder with config.json and model.safetensors or
          pytorch_model.bin, or one of those files;
  openai  OpenAI CLIP / open_clip state dicts (`visual.*`, `transformer.*`, ...);
  avion   AVION and LaViLa training checkpoints: the state dict nested under 'state_dict' (or
          'model'), keys prefixed 'module.' (DDP), the text tower under 'textual.' (AVION) or at
          the top level (LaViLa), projections 'visual.image_projection' / 'image_projection',
          flash-attn names (attn.Wqkv, mlp.fc1/fc2), the linear 'fast conv1' patch embedding,
          and the learned temporal embedding (T, D) or (1, T, D).
Every format is renamed to the OpenAI layout and converted by `models.hf_import` (its docstring
has the name table). LaViLa's TimeSformer video tower (divided space-time attention) has no
counterpart in the joint-attention ViT and is refused.

Output (`save_converted`): a params-only checkpoint as `checkpoint.save_params` writes it (so
`config.init_from.path` can point at it directly) holding {'visual', 'text', 'logit_scale'},
plus `model_config.json` inside it: the `models.retrieval.model_config` whose tower sizes the
parameters have (`read_model_config`). `state.load_params` reads the parameters.

Checks: unknown source keys, missing keys, layers whose shapes disagree with layer 0, and any
parameter whose shape differs from what the model config initialises, each named with shapes.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import zipfile
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tempret_jax import atomic
from tempret_jax import checkpoint as checkpoint_lib
from tempret_jax import config as config_lib
from tempret_jax.models import hf_import
from tempret_jax.models import retrieval

FORMATS = ("hf", "openai", "avion")
CONFIG_FILE = "model_config.json"
# Buffers and metadata that carry no parameters.
_IGNORED = re.compile(r"(^|\.)(position_ids|attn_mask)$|^(input_resolution|context_length|"
                      r"vocab_size)$")
_AVION_RENAMES = (  # (pattern, replacement) applied in order
    (r"^textual\.", ""),
    (r"^visual\.image_projection$", "visual.proj"),
    (r"^image_projection$", "visual.proj"),
    (r"\.attn\.Wqkv\.", ".attn.in_proj_"),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)


class ConversionError(ValueError):
    """The source weights cannot be converted (unknown/missing keys, shape mismatches)."""


# ---------------------------------------------------------------------------------------------
# Reading source files.


def _is_torchscript(path: pathlib.Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())


def _read_file(path: pathlib.Path) -> Mapping[str, Any]:
    """The file's contents; anything unreadable is a ConversionError naming it (one line)."""
    import pickle
    try:
        return _load(path)
    except pickle.UnpicklingError as e:  # the safe loader met a pickled object it does not allow
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"{found[1]} is not allowed" if found else _first_line(e)
        raise ConversionError(f"{path}: holds pickled objects the safe loader refuses "
                              f"({what})") from None
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001  torch's unpickler fails on garbage in many ways
        raise ConversionError(f"{path}: not a readable {path.suffix or 'torch'} checkpoint "
                              f"(truncated or another format? {type(e).__name__}: "
                              f"{_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _load(path: pathlib.Path) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # torch: bfloat16 has no numpy dtype
        return load_file(str(path))
    if _is_torchscript(path):
        raise ConversionError(
            f"{path} is a TorchScript archive (OpenAI's clip.load download); it is not read "
            f"here. Save its weights first: torch.save(torch.jit.load(path).state_dict(), "
            f"'weights.pt')")
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
    """Training checkpoints nest the weights: {'state_dict': ...} / {'model': ...}."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{source}: expected a state dict (a mapping of names to tensors), "
                              f"got {type(obj).__name__}")
    return obj


def load_state_dict(path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint file or an HF model folder.

    Returns (state dict {name: tensor}, HF config.json dict or {} when there is none).
    """
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
    return dict(_unwrap(_read_file(path), str(path))), hf_config


# ---------------------------------------------------------------------------------------------
# Formats and renaming.


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """'hf' | 'openai' | 'avion' from the key names, after any 'module.' prefix."""
    keys = [k.removeprefix("module.") for k in state_dict]
    if any(k.startswith("vision_model.") for k in keys):
        return "hf"
    if any(k.startswith(("textual.", "image_projection", "visual.image_projection"))
           or ".attn.Wqkv." in k or ".timeattn." in k for k in keys):
        return "avion"
    if any(k.startswith("visual.") for k in keys):
        return "openai"
    raise ConversionError(f"cannot tell the checkpoint format from its keys (first: "
                          f"{keys[:5]}); expected HF CLIPModel, OpenAI CLIP or AVION/LaViLa names")


def avion_to_openai(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """AVION / LaViLa names and layouts -> OpenAI CLIP's (see the module docstring)."""
    if any(".timeattn." in k for k in state_dict):
        raise ConversionError(
            "the video tower is a TimeSformer (divided space-time attention: 'timeattn' keys, "
            "LaViLa's SpaceTimeTransformer); only AVION's joint-attention ViT converts")
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _AVION_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    conv = out.get("visual.conv1.weight")
    if conv is not None and conv.ndim == 2:  # fast conv1: Linear over (c, ph, pw) patches
        p = int(round((conv.shape[1] / 3) ** 0.5))
        if 3 * p * p != conv.shape[1]:
            raise ConversionError(f"visual.conv1.weight: a linear patch embedding needs "
                                  f"3 * p * p inputs, got shape {tuple(conv.shape)}")
        out["visual.conv1.weight"] = conv.reshape(conv.shape[0], 3, p, p)
    return out


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
    layer = re.compile(r"^(.*\.(?:resblocks|layers)\.)(\d+)(\..*)$")
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
            "openai": ("visual.class_embedding", "ln_final.weight")}[fmt]
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ConversionError(f"{fmt} state dict: missing key {missing[0]!r}")
    return tuple(int(state_dict[k].shape[0]) for k in keys)


def _layer_count(tower: Mapping[str, Any]) -> int:
    return sum(1 for k in tower["transformer"] if k.startswith("resblocks_"))


def infer_model_config(params: Mapping[str, Any], *, vision_heads: int, text_heads: int,
                       num_frames: int, hidden_act: str = "quick_gelu",
                       base: Optional[ml_collections.ConfigDict] = None
                       ) -> ml_collections.ConfigDict:
    """The model config whose towers have these (unrolled) parameters' sizes.

    `base` (default: the 'vit_b16' preset) supplies everything not recoverable from shapes
    (optional modules, dtype, layer-stack options). num_frames applies when the parameters
    have no temporal embedding (a CLIP image checkpoint).
    """
    c = copy.deepcopy(base) if base is not None else retrieval.model_config("vit_b16")
    visual, text = params["visual"], params["text"]
    patch, _, _, v_width = visual["conv1"]["kernel"].shape
    grid = int(round((visual["positional_embedding"].shape[0] - 1) ** 0.5))
    v_mlp = visual["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape[1]
    t_vocab, t_width = text["token_embedding"]["embedding"].shape
    t_mlp = text["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape[1]
    embed, text_embed = visual["proj"].shape[1], text["text_projection"].shape[1]
    if embed != text_embed:
        raise ConversionError(f"visual/proj gives an embedding of {embed} but "
                              f"text/text_projection {text_embed}")
    c.embed_dim = int(embed)
    c.vision.update(image_size=int(grid * patch), patch_size=int(patch), width=int(v_width),
                    layers=_layer_count(visual), heads=vision_heads, mlp_ratio=v_mlp / v_width,
                    mlp=hidden_act, frame_mode=False)
    if "temporal_embedding" in visual:
        c.vision.num_frames = int(visual["temporal_embedding"].shape[0])
    else:
        c.vision.num_frames = num_frames
    c.text.update(vocab_size=int(t_vocab), context_length=int(text["positional_embedding"].shape[0]),
                  width=int(t_width), layers=_layer_count(text), heads=text_heads,
                  mlp_ratio=t_mlp / t_width, mlp=hidden_act)
    return c


def _check_against_model(params: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    """Names every parameter that is missing, extra, or shaped differently from the model's
    (params unrolled: compared before `_relayout`)."""
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


def _relayout(params: dict, scan_layers: bool) -> dict:
    if not scan_layers:
        return params
    for tower in ("visual", "text"):
        blocks = params[tower]["transformer"]
        stacked = [blocks[f"resblocks_{i}"] for i in range(len(blocks))]
        params[tower]["transformer"] = {"resblocks": jax.tree.map(lambda *xs: np.stack(xs),
                                                                  *stacked)}
    return params


def convert_state_dict(state_dict: Mapping[str, Any], *, fmt: str = "auto",
                       vision_heads: Optional[int] = None, text_heads: Optional[int] = None,
                       num_frames: int = 16, hidden_act: Optional[str] = None,
                       base_config: Optional[ml_collections.ConfigDict] = None,
                       ) -> tuple[dict, ml_collections.ConfigDict]:
    """A torch state dict -> (params {'visual', 'text', 'logit_scale'} as numpy float32, config).

    Args:
      state_dict: names -> tensors (or arrays), any of FORMATS.
      fmt: one of FORMATS or 'auto' (`detect_format`).
      vision_heads, text_heads: head counts (not recoverable from weights); default
        width // 64, CLIP's rule for every released size.
      num_frames: frames of the joint video tower when the checkpoint has no temporal
        embedding (it starts at zeros); an AVION checkpoint's own embedding sets it.
      hidden_act: MLP activation ('quick_gelu' | 'gelu'); default 'quick_gelu' (CLIP), but
        'gelu' for AVION, whose towers use nn.GELU.
      base_config: non-size settings of the returned config (default: 'vit_b16' preset), whose
        `scan_layers` also chooses the parameter layout.

    Raises ConversionError for unknown keys, missing keys, and shape mismatches.
    """
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DDP
    fmt = detect_format(state_dict) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ConversionError(f"format: expected one of {FORMATS} or 'auto', got {fmt!r}")
    if hidden_act is None:
        hidden_act = "gelu" if fmt == "avion" else "quick_gelu"
    if fmt == "avion":
        state_dict, fmt = avion_to_openai(state_dict), "openai"
    state_dict = _Recorder({k: v for k, v in state_dict.items() if not _IGNORED.search(k)})
    _check_layer_shapes(state_dict)
    v_width, t_width = _tower_widths(state_dict, fmt)
    heads = dict(vision_heads=vision_heads or max(v_width // 64, 1),
                 text_heads=text_heads or max(t_width // 64, 1))
    for name, count in heads.items():
        width = v_width if name.startswith("vision") else t_width
        if width % count:
            raise ConversionError(f"{name}={count} does not divide the tower width {width}")
    convert = hf_import.params_from_hf_clip if fmt == "hf" else hf_import.params_from_openai_clip
    try:
        params = convert(state_dict, **heads, num_frames=num_frames)
    except KeyError as e:
        raise ConversionError(e.args[0]) from None
    unknown = sorted(set(state_dict) - state_dict.read)
    if unknown:
        raise ConversionError(f"{len(unknown)} unknown key(s) in the {fmt} state dict (no "
                              f"parameter of the model takes them): {', '.join(unknown)}")
    config = infer_model_config(params, **heads, num_frames=num_frames, hidden_act=hidden_act,
                                base=base_config)
    _check_against_model(params, config)
    return _relayout(params, config.scan_layers), config


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
    """`load_state_dict(path)` then `convert_state_dict`; an HF config.json next to the weights
    supplies head counts and activation unless given in kwargs."""
    state_dict, hf_config = load_state_dict(path)
    if hf_config:
        settings = hf_settings(hf_config)
        kwargs = {**settings, **{k: v for k, v in kwargs.items() if v is not None}}
    return convert_state_dict(state_dict, **kwargs)


# ---------------------------------------------------------------------------------------------
# Saving and loading.


def save_converted(path, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> None:
    """Writes the params-only orbax checkpoint at `path` (a new folder) with its model config."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise ConversionError(f"{path} exists; choose a new output folder")
    checkpoint_lib.save_params(path, params)
    atomic.write_text(path / CONFIG_FILE, config.to_json(indent=2) + "\n")


def read_model_config(path) -> ml_collections.ConfigDict:
    """The model config `save_converted` wrote beside the parameters (validated); the
    parameters themselves load with `state.load_params` like any other checkpoint."""
    path = pathlib.Path(path).absolute()
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise ConversionError(f"{path}: no {CONFIG_FILE}; not a converted checkpoint")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    config_lib.validate_model(config)
    return config
