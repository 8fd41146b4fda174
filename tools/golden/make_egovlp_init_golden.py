"""Generate the golden files of EgoVLP's pretraining start: a tiny timm ViT file, a tiny HF
DistilBERT folder, and the state dict EgoVLP's own ``FrozenInTime.__init__`` builds from them.

What it builds
--------------
1. A seeded tiny ``timm.models.vision_transformer.VisionTransformer(img_size=32,
   patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)`` with every parameter
   redrawn by make_egovlp_golden.py's ``randomise`` (timm's own init leaves LayerNorms at
   ones / zeros and biases at zero, which would equal the values a wrong mapping gives), saved
   with ``torch.save(model.state_dict())``: a .pth like the
   ``jx_vit_base_p16_224-80ecf9dd.pth`` EgoVLP loads (timm's names; its classifier ``head.*``).
2. A seeded tiny ``transformers.DistilBertForMaskedLM(DistilBertConfig(vocab_size=64, dim=32,
   n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=77))``, redrawn the same way,
   written with ``save_pretrained`` (config.json + model.safetensors): the layout of the hub's
   distilbert-base-uncased ('distilbert.' names and the MLM head vocab_transform /
   vocab_layer_norm / vocab_projector).
3. ``model.model.FrozenInTime(video_params={'model': 'SpaceTimeTransformer', 'arch_config':
   'base_patch16_224', 'num_frames': 4, 'pretrained': True, 'time_init': 'zeros'},
   text_params={'model': 'distilbert-base-uncased', 'pretrained': True, 'input': 'text'},
   projection_dim=16, projection='minimal')`` (configs/pt/egoclip.json's arch with the tiny
   clip length and projection), run by EgoVLP's own __init__ in a temporary working directory
   whose ``pretrained/jx_vit_base_p16_224-80ecf9dd.pth`` is the file of 1: upstream's own
   ``torch.load`` + ``state_dict_data_parallel_fix`` + ``load_state_dict(strict=False)`` read
   it. Its ``state_dict()`` is saved as expected.npz.

Upstream: https://github.com/showlab/EgoVLP at commit
928406c2d5d42b4d76421f6500e43feb61fc9d68 (model/model.py, model/video_transformer.py).

Monkeypatches while __init__ runs (undone afterwards; recorded in info.json)
-----------------------------------------------------------------------------
* ``model.model.SpaceTimeTransformer`` -> ``functools.partial(SpaceTimeTransformer,
  img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)`` (__init__ hard-codes the
  base size; num_frames / time_init / attention_style still come from video_params).
* ``model.model.AutoModel`` -> an object whose ``from_pretrained(name, **kw)`` records the call
  and returns ``transformers.AutoModel.from_pretrained(<the folder of 2>)`` (upstream downloads
  'distilbert-base-uncased'): transformers' own loading, which strips 'distilbert.' and drops
  the MLM head.
No torch.load patch: the ViT file is plain tensors, which torch's default weights_only
loader reads.

One import shim (``torchvision_without_ops``): the venv's torch is the CPU wheel, and the only
torchvision 0.28.0 at hand is built against torch's CUDA libraries, so its compiled ops do not
load and its ``_meta_registrations`` fails on the missing ``torchvision::nms`` / ``qnms``.
Those two op names are declared (schemas only, never called) before the import; timm (its
layers import torchvision.ops.misc) and base/base_dataset.py (torchvision.transforms) then
import torchvision's pure-Python modules. Nothing here runs a torchvision op.

Files written to ``--out`` (tests/data/golden/egovlp_init)
----------------------------------------------------------
* ``vit_tiny.pth``            the timm state dict of 1
* ``distilbert_tiny/``        config.json + model.safetensors of 2
* ``expected.npz``            FrozenInTime.state_dict() after __init__ (EgoVLP's names)
* ``info.json``               provenance, sizes, patches, which keys came from which file

Rerun
-----
::

    python3.11 -m venv /work/golden/venv-egovlp-init
    /work/golden/venv-egovlp-init/bin/pip install torch==2.13.0 torchvision timm einops \\
        numpy transformers safetensors humanize psutil tqdm pillow \\
        av opencv-python-headless ffmpeg-python decord
    mkdir -p /work/golden/EgoVLP
    git -C /work/.mirror/showlab+EgoVLP/repo archive 928406c2d5d42b4d76421f6500e43feb61fc9d68 \\
        | tar -x -C /work/golden/EgoVLP
    /work/golden/venv-egovlp-init/bin/python tools/golden/make_egovlp_init_golden.py \\
        --egovlp /work/golden/EgoVLP --out tests/data/golden/egovlp_init

(av, cv2, decord, ffmpeg: base/__init__.py imports its data modules with the model base.)
Everything is seeded; a rerun gives identical tensors. The files were made with torch
2.13.0+cpu, timm 1.0.31, transformers 5.25.0, numpy 2.4.6, Python 3.11.
"""

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_egovlp_golden as base  # noqa: E402  (its seeded `randomise`, provenance helpers)

VIT_FILE, BERT_DIR = "vit_tiny.pth", "distilbert_tiny"
FRAMES, PROJ = 4, 16
VIT_CLASSES = 10  # a classifier in the file, as timm's files have one, that EgoVLP drops
SEEDS = {"vit": 1, "distilbert": 2}


def torchvision_without_ops():
    """Declares the two ops torchvision registers fakes for at import (module docstring)."""
    import torch
    for op in ("nms", "qnms"):
        torch.library.define(f"torchvision::{op}",
                             "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def tiny_vit():
    import timm.models.vision_transformer as tvit
    import torch
    torch.manual_seed(SEEDS["vit"])
    vit = tvit.VisionTransformer(img_size=base.IMG, patch_size=base.PATCH, embed_dim=base.V_DIM,
                                 depth=base.V_DEPTH, num_heads=base.V_HEADS,
                                 num_classes=VIT_CLASSES)
    base.randomise(vit, SEEDS["vit"])
    return vit


def tiny_distilbert():
    import torch
    import transformers
    torch.manual_seed(SEEDS["distilbert"])
    config = transformers.DistilBertConfig(**base.TINY_TEXT)
    model = transformers.DistilBertForMaskedLM(config)
    base.randomise(model, SEEDS["distilbert"])
    return model


@contextlib.contextmanager
def patched_init(bert_dir, calls):
    """The two patches of the module docstring, undone on exit."""
    import model.model as mm
    import transformers
    from model.video_transformer import SpaceTimeTransformer
    saved = (mm.SpaceTimeTransformer, mm.AutoModel)

    class LocalAutoModel:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            calls.append({"name": name, "args": [str(a) for a in args],
                          "kwargs": {k: str(v) for k, v in kwargs.items()}})
            return transformers.AutoModel.from_pretrained(bert_dir)

    mm.SpaceTimeTransformer = functools.partial(SpaceTimeTransformer, **base.TINY_VIDEO)
    mm.AutoModel = LocalAutoModel
    try:
        yield
    finally:
        mm.SpaceTimeTransformer, mm.AutoModel = saved


def build_frozen(vit_path, bert_dir, calls):
    """FrozenInTime's own __init__ in a directory holding pretrained/<the ViT file>."""
    import model.model as mm
    cwd, bert_dir = os.getcwd(), os.path.abspath(bert_dir)
    with tempfile.TemporaryDirectory() as run:
        os.makedirs(os.path.join(run, os.path.dirname(base.VIT_INIT_PATH)))
        shutil.copy(vit_path, os.path.join(run, base.VIT_INIT_PATH))
        os.chdir(run)
        try:
            with patched_init(bert_dir, calls):
                return mm.FrozenInTime(base.video_params(FRAMES), dict(base.TEXT_PARAMS),
                                       projection_dim=PROJ, projection="minimal")
        finally:
            os.chdir(cwd)


def saved_keys(bert_dir):
    from safetensors import safe_open
    with safe_open(os.path.join(bert_dir, "model.safetensors"), "pt") as f:
        return sorted(f.keys())


def origins(state_dict, vit_sd, bert_sd):
    """Each FrozenInTime key -> where __init__ took its value (checked by value here)."""
    import torch
    out = {}
    bert = {k.removeprefix("distilbert."): v for k, v in bert_sd.items()}
    for key, value in state_dict.items():
        tower, _, name = key.partition(".")
        source = {"video_model": vit_sd, "text_model": bert}.get(tower, {})
        if name in source:
            assert torch.equal(source[name], value), key
            out[key] = f"{VIT_FILE if tower == 'video_model' else BERT_DIR}: {name}"
        elif tower in ("vid_proj", "txt_proj"):
            out[key] = "random: nn.Linear default init"
        else:
            out[key] = "SpaceTimeTransformer init (time_init 'zeros')"
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--egovlp", required=True, help="an EgoVLP tree at the commit above")
    parser.add_argument("--out", required=True)
    parser.add_argument("--egovlp-commit", default=base.EGOVLP_COMMIT)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.egovlp))
    torchvision_without_ops()
    import timm
    import torch
    import transformers

    os.makedirs(args.out, exist_ok=True)
    vit_path, bert_dir = os.path.join(args.out, VIT_FILE), os.path.join(args.out, BERT_DIR)
    vit_sd = tiny_vit().state_dict()
    torch.save(vit_sd, vit_path)
    bert = tiny_distilbert()
    bert.save_pretrained(bert_dir)
    bert_sd = bert.state_dict()

    calls = []
    frozen = build_frozen(vit_path, bert_dir, calls)
    sd = frozen.state_dict()
    np.savez_compressed(os.path.join(args.out, "expected.npz"),
             **{k: v.detach().numpy() for k, v in sd.items()})
    info = {
        "upstream": {"repo": base.EGOVLP_REPO,
                     "commit": base.upstream_commit(args.egovlp, args.egovlp_commit),
                     "followed": ["model/model.py FrozenInTime.__init__",
                                  "model/video_transformer.py"]},
        "environment": {"torch": torch.__version__, "timm": timm.__version__,
                        "transformers": transformers.__version__, "numpy": np.__version__,
                        "python": platform.python_version()},
        "vit": {"class": "timm.models.vision_transformer.VisionTransformer",
                **base.TINY_VIDEO, "num_classes": VIT_CLASSES, "seed": SEEDS["vit"],
                "file": VIT_FILE, "sha256": base.sha256(vit_path)},
        "distilbert": {"class": "transformers.DistilBertForMaskedLM",
                       "config": base.TINY_TEXT, "seed": SEEDS["distilbert"], "folder": BERT_DIR,
                       "saved_keys": saved_keys(bert_dir)},
        "frozen_in_time": {"video_params": base.video_params(FRAMES),
                           "text_params": base.TEXT_PARAMS, "projection_dim": PROJ,
                           "projection": "minimal", "load_checkpoint": None},
        "patches": {"model.model.SpaceTimeTransformer":
                    f"functools.partial(SpaceTimeTransformer, **{base.TINY_VIDEO})",
                    "model.model.AutoModel.from_pretrained":
                    f"transformers.AutoModel.from_pretrained({BERT_DIR!r})",
                    "auto_model_calls": calls,
                    "working_directory": f"a temporary one holding {base.VIT_INIT_PATH} "
                                         f"= {VIT_FILE}"},
        "origins": origins(sd, vit_sd, bert_sd),
        "random": "vid_proj.0.*, txt_proj.1.*: compare shapes only",
    }
    with open(os.path.join(args.out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    counts = {}
    for origin in info["origins"].values():
        counts[origin.split(":")[0]] = counts.get(origin.split(":")[0], 0) + 1
    print(f"wrote {args.out}: {len(sd)} tensors by origin {counts}")


if __name__ == "__main__":
    main()
