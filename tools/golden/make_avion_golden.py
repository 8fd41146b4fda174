"""Generate tiny AVION golden checkpoints and reference embeddings.

What it builds
--------------
Tiny models made with AVION's *own* classes (``avion.models.transformer.
VisionTransformer`` / ``TextTransformer`` and ``avion.models.model_clip.CLIP``),
assembled exactly the way ``model_clip.CLIP_VITB16`` assembles them (projections
inside the towers, none at the CLIP level), at toy sizes:

* vision: VisionTransformer(image_size=32, patch_size=8, width=64, layers=2,
  heads=2, mlp_ratio=4, num_frames=T, output_dim=16); AVION defaults otherwise
  (nn.GELU, nn.LayerNorm eps=1e-6, ln_pre=True so conv1 has no bias).
* text: TextTransformer(context_length=77, vocab_size=1000, width=32, heads=2,
  layers=2, output_dim=16); defaults otherwise (nn.GELU, AVION LayerNorm with
  torch's default eps=1e-5, causal mask).
* CLIP(embed_dim=16, vision, text).

Files written to ``--out``:

* ``avion_pretrain_tiny.pt``   4-frame model, saved like scripts/main_lavila_pretrain.py
* ``avion_finetune_tiny.pt``   16-frame model, saved like scripts/main_lavila_finetune_mir.py
* ``avion_finetune_flash_tiny.pt``  the same 16-frame weights in the
  ``--use-flash-attn --use-fast-conv1`` layout (see ``flash_layout``)
* ``reference.npz``            inputs and unnormalised embeddings
* ``info.json``                provenance, architecture, how each file was saved

Each checkpoint is produced the way the AVION script produces it: the model is
wrapped in a real ``DistributedDataParallel`` (gloo, world size 1, so the keys
carry ``module.``), the script's own AdamW param groups take one real step
through a ``GradScaler`` with the script's loss (ClipLoss / MaxMarginRankingLoss)
and the script's cosine lr schedule, and the dict is written by AVION's own
``avion.utils.distributed.save_on_master``. ``args`` is the namespace that the
script's own ``get_args_parser()`` returns for a minimal command line.

Upstream: https://github.com/zhaoyue-zephyrus/AVION at commit
31b00b6bc5d2c09f56b90643cd546cfe8a31c005 (the commit actually used is read from
the checkout's ``.git`` when there is one, else from ``--avion-commit``, and is
recorded in info.json).

Stubs
-----
``avion/models/transformer.py`` imports ``flash_attn.modules.mha.MHA`` and
``flash_attn.modules.mlp.Mlp`` at module level and ``avion/models/model_clip.py``
imports OpenAI's ``clip``. Neither installs on a CPU-only machine, so this script
writes tiny stub modules into a temporary directory (or ``--stubs DIR``) and puts
it first on ``sys.path``. The stubs only provide those names; they raise if
called. They are never called: every model here is built with
use_flash_attn=False, and ``clip.load`` is only reached through
``CLIP_VITB16(pretrain_zoo=...)``, which this script does not call.

The training scripts import kornia, pandas, decord, ... at module level, so they
are not imported; their ``get_args_parser`` function is extracted from the
script's source with ``ast`` and executed on its own (it only uses argparse).

Rerun
-----
The venv needs torch 2.13.0 *and a torchvision that loads beside it* (timm's
package import pulls in torchvision). With the CPU index::

    python3 -m venv /work/golden/venv-avion
    /work/golden/venv-avion/bin/pip install torch==2.13.0 torchvision==0.28.0 \
        --index-url https://download.pytorch.org/whl/cpu
    /work/golden/venv-avion/bin/pip install timm einops numpy

Where that index is unreachable (as on the machine these files were made on),
a plain ``pip install torch==2.13.0`` finds a local 2.13.0+cpu wheel, but the
torchvision 0.28.0 that timm then pulls from PyPI is a CUDA build whose ops
cannot load beside CPU torch ("operator torchvision::nms does not exist"). Take
PyPI's (CUDA) builds of both instead; they run on CPU (the venv is ~5 GB)::

    python3 -m venv /work/golden/venv-avion
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= /work/golden/venv-avion/bin/pip install \
        torch==2.13.0 torchvision==0.28.0 timm einops numpy

Then::

    mkdir -p /work/golden/AVION
    git -C /work/.mirror/zhaoyue-zephyrus+AVION/repo archive 31b00b6bc5d2c09f56b90643cd546cfe8a31c005 \
        | tar -x -C /work/golden/AVION
    /work/golden/venv-avion/bin/python tools/golden/make_avion_golden.py \
        --avion /work/golden/AVION --out tests/data/golden/avion

Everything is seeded; rerunning gives identical tensors (and, with the same
torch version, identical files).

Full-size layouts (--layouts)
-----------------------------
With ``--layouts`` the script writes, instead of the files above, the key ->
shape tables of the full-size fine-tune checkpoints (``ckpt['state_dict']`` of
scripts/main_lavila_finetune_mir.py: 'module.' keys, as avion_finetune_tiny.pt)::

    layout_b16.json, layout_l14.json              plain naming
    layout_b16_flash.json, layout_l14_flash.json  --use-flash-attn --use-fast-conv1
                                                  naming (flash_layout, as the tiny
                                                  flash file)

Each is ``{"upstream", "model", "note", "state_dict": {key: [shape...]}}``,
keys in state-dict order. The models are assembled with model_clip.CLIP_VITB16 /
CLIP_VITL14's sizes (``FULL_SIZES``; the builders themselves end in clip.load),
16 frames, project_embed_dim 256 (the LaViLa-pretrained releases), on torch's
meta device (no memory; AVION's inits need no workaround there). When the tiny
avion_finetune[_flash]_tiny.pt files are in --out, the same meta route is first
checked against their key/shape tables::

    /work/golden/venv-avion/bin/python tools/golden/make_avion_golden.py \\
        --avion /work/golden/AVION --out tests/data/golden/avion --layouts
"""

import argparse
import ast
import copy
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

AVION_REPO = "https://github.com/zhaoyue-zephyrus/AVION"
AVION_COMMIT = "31b00b6bc5d2c09f56b90643cd546cfe8a31c005"
# AVION's requirements.txt pins flash-attn==0.2.8; the flash layout below
# follows that release (Dao-AILab/flash-attention tag v0.2.8).
FLASH_ATTN_VERSION = "0.2.8"
FLASH_ATTN_COMMIT = "33e0860c9c5667fded5af674882e731909096a7f"

# Tiny architecture (shared by every file).
IMAGE_SIZE, PATCH, V_WIDTH, V_LAYERS, V_HEADS, MLP_RATIO = 32, 8, 64, 2, 2, 4
CONTEXT, VOCAB, T_WIDTH, T_HEADS, T_LAYERS = 77, 1000, 32, 2, 2
EMBED = 16
PRETRAIN_FRAMES, FINETUNE_FRAMES = 4, 16
BATCH = 2
SOT, EOT = VOCAB - 2, VOCAB - 1  # CLIP-style: start = vocab-2, end = vocab-1 (largest id)
ITERS_PER_EPOCH = 4  # pretend len(train_loader) for the cosine lr schedule

STUBS = {
    "flash_attn/__init__.py": "",
    "flash_attn/modules/__init__.py": "",
    "flash_attn/modules/mha.py": (
        "class MHA:  # stub: AVION imports the name; only used with use_flash_attn=True\n"
        "    def __init__(self, *a, **k):\n"
        "        raise NotImplementedError('flash_attn stub')\n"),
    "flash_attn/modules/mlp.py": (
        "class Mlp:  # stub: AVION imports the name; only used with use_flash_attn=True\n"
        "    def __init__(self, *a, **k):\n"
        "        raise NotImplementedError('flash_attn stub')\n"),
    "clip.py": (
        "def load(*a, **k):  # stub: only reached via CLIP_VITB16(pretrain_zoo='openai')\n"
        "    raise NotImplementedError('clip stub')\n"),
}


def install_stubs(stub_dir):
    for rel, text in STUBS.items():
        path = os.path.join(stub_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    sys.path.insert(0, stub_dir)


def script_parser(script_path, argv):
    """Run the script's own get_args_parser() (extracted with ast) on argv.

    The parent/child construction mirrors the scripts' ``__main__`` block.
    """
    tree = ast.parse(open(script_path).read(), filename=script_path)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_args_parser"]
    assert len(fn) == 1, script_path
    namespace = {"argparse": argparse}
    exec(compile(ast.Module(body=fn, type_ignores=[]), script_path, "exec"), namespace)
    parser = argparse.ArgumentParser("LAVILA training and evaluation",
                                     parents=[namespace["get_args_parser"]()])
    args = parser.parse_args(argv)
    # What avion.utils.distributed.init_distributed_mode sets under torchrun
    # (RANK/WORLD_SIZE/LOCAL_RANK in the environment); the real runs are DDP,
    # which is why state_dict keys carry 'module.'.
    args.rank, args.world_size, args.gpu = 0, 1, 0
    args.distributed = True
    args.dist_backend = "nccl"
    return args


def build_clip(num_frames, freeze_temperature, use_fast_conv1=False):
    """CLIP_VITB16's assembly at tiny sizes (without loading OpenAI weights)."""
    from avion.models.model_clip import CLIP
    from avion.models.transformer import TextTransformer, VisionTransformer
    from avion.models.utils import enable_grad_checkpointing

    vision = VisionTransformer(
        IMAGE_SIZE, PATCH, V_WIDTH, V_LAYERS, V_HEADS, MLP_RATIO,
        output_dim=EMBED, patch_dropout=0., drop_path_rate=0.,
        num_frames=num_frames, use_fast_conv1=use_fast_conv1, use_flash_attn=False)
    text = TextTransformer(context_length=CONTEXT, vocab_size=VOCAB, width=T_WIDTH,
                           heads=T_HEADS, layers=T_LAYERS, output_dim=EMBED, causal_mask=True)
    enable_grad_checkpointing(vision, False)
    enable_grad_checkpointing(text, False)
    return CLIP(embed_dim=EMBED, vision_model=vision, text_model=text,
                freeze_temperature=freeze_temperature)


def randomise(model):
    """Make every tensor matter to the parity test, keeping the architecture.

    * LayerNorm: weight 1 + 0.1*randn, bias 0.1*randn (AVION inits them to 1/0,
      or, in the vision blocks, trunc_normal(0.02) weights and zero biases).
    * Every other all-zero tensor (temporal_embedding, attention/MLP biases)
      gets 0.1*randn.
    * Vision block matrices: AVION's trunc_normal(std=0.02) makes attention
      logits ~0.03, i.e. uniform softmax, which would hide q/k/v or head-split
      mistakes. Redraw them N(0, 1/fan_in) (the OpenAI-style init that
      VisionTransformer.init_parameters has commented out), so logits are O(1).
    * Vision class/positional embeddings: std 0.02 -> 0.1, so token-order
      (frame-major, row-major patch) errors are well above float32 noise.
    """
    import torch
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
        ln_params = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
        ln_params |= {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
        for name, p in model.named_parameters():
            if id(p) in ln_params:
                continue
            if name.startswith("visual.transformer.") and p.ndim == 2:
                p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)
            elif name in ("visual.class_embedding", "visual.positional_embedding"):
                p.mul_(5.0)
            elif not p.any():
                p.copy_(0.1 * torch.randn_like(p))


def train_one_step(ddp_model, args, criterion, video, ids, relevancy=None):
    """One iteration of the scripts' train() loop (update_freq=1, no grad clip).

    Param groups, AdamW, the cosine lr schedule (lr = numpy float64, as in the
    scripts), GradScaler, and the logit_scale clamp all follow the scripts.
    AMP autocast is CUDA-only and therefore skipped; the scaler is
    torch.amp.GradScaler('cpu'), whose state_dict has the same keys and plain
    python values as the scripts' torch.cuda.amp.GradScaler(enabled=True)
    (torch.cuda.amp.GradScaler disables itself without CUDA and would save {}).
    """
    import torch
    import avion.utils.distributed as dist_utils
    from avion.optim.schedulers import cosine_scheduler

    p_wd, p_non_wd = [], []
    for n, p in ddp_model.named_parameters():
        if not p.requires_grad:
            continue
        if (p.ndim < 2 or 'bias' in n or 'ln' in n or 'bn' in n
                or 'pos_embed' in n or 'positional_embedding' in n):
            p_non_wd.append(p)
        else:
            p_wd.append(p)
    optim_params = [{"params": p_wd, "weight_decay": args.wd},
                    {"params": p_non_wd, "weight_decay": 0}]
    optimizer = torch.optim.AdamW(optim_params, lr=args.lr, betas=args.betas,
                                  eps=args.eps, weight_decay=args.wd)
    scaler = torch.amp.GradScaler("cpu", enabled=not args.disable_amp)
    lr_schedule = None if getattr(args, "fix_lr", False) else cosine_scheduler(
        args.lr, args.lr_end, args.epochs, ITERS_PER_EPOCH // args.update_freq,
        warmup_epochs=args.warmup_epochs, start_warmup_value=args.lr_start)

    ddp_model.train()
    for param_group in optimizer.param_groups:
        if lr_schedule is not None:
            param_group['lr'] = lr_schedule[0]
    optimizer.zero_grad()
    image_features, text_features, logit_scale = ddp_model(video, ids)
    if relevancy is None:
        loss = criterion(image_features, text_features, logit_scale)['loss']
    else:
        loss = criterion(image_features, text_features, weight=relevancy)['loss']
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    ddp_model.zero_grad(set_to_none=True)
    dist_utils.get_model(ddp_model).logit_scale.data.clamp_(0, 4.6052)
    return optimizer, scaler


def best_acc1_like_script(model, video, ids):
    """validate_mir's avg mAP (numpy float64) on the tiny batch, identity relevancy."""
    import torch
    from avion.utils.evaluation_ek100mir import get_mAP
    model.eval()
    with torch.no_grad():
        v, t, _ = model(video, ids)
    sim = (v.numpy() @ t.numpy().T + 1) / 2
    _, _, avg_map = get_mAP(sim, np.eye(len(sim)))
    return max(avg_map, 0.)


def save_like_script(state, path):
    """avion.utils.distributed.save_on_master, then move checkpoint.pt to path."""
    import avion.utils.distributed as dist_utils
    with tempfile.TemporaryDirectory() as d:
        dist_utils.save_on_master(state, False, d)
        shutil.move(os.path.join(d, "checkpoint.pt"), path)


def flash_layout(state_dict, v_layers=V_LAYERS, t_layers=T_LAYERS, context=CONTEXT,
                 vocab=VOCAB):
    """Rename a plain AVION state dict to the --use-flash-attn --use-fast-conv1 layout.

    Uses AVION's own avion.models.utils.remap_keys_from_open_clip_to_vit, which
    (read at the commit above) applies to AVION names as well as open_clip ones:
    * it strips 'module.';
    * with use_flash_attn it renames, for visual.transformer.resblocks.{l}:
      attn.in_proj_weight/bias -> attn.Wqkv.weight/bias,
      attn.out_proj.* -> attn.out_proj.*, mlp.c_fc.* -> mlp.fc1.*,
      mlp.c_proj.* -> mlp.fc2.*; these match flash_attn 0.2.8's MHA
      (Wqkv = Linear(D, 3D), split '... (three h d)', i.e. the same [q; k; v]
      packing as nn.MultiheadAttention.in_proj_weight; out_proj = Linear(D, D))
      and Mlp (fc1, activation, fc2);
    * with use_fast_conv1 it flattens visual.conv1.weight (D, 3, p, p) ->
      (D, 3*p*p), matching the Linear that VisionTransformer(use_fast_conv1=True)
      applies after rearrange('b c t (hh sh) (ww sw) -> b (t hh ww) (c sh sw)');
    * AVION-named text keys ('textual.*') and the other visual keys are not in
      its mapping and pass through unchanged;
    * it drops 'logit_scale' (the open_clip path skips it), so it is put back.
    Key order is preserved (a flash model registers its modules in the same
    order), and 'module.' is re-added as DDP would.
    """
    from avion.models.utils import remap_keys_from_open_clip_to_vit
    stripped = OrderedDict((k.replace('module.', ''), v) for k, v in state_dict.items())
    remapped = remap_keys_from_open_clip_to_vit(
        stripped, visual_transformer_layers=v_layers, textual_transformer_layers=t_layers,
        context_length=context, vocab_size=vocab, use_fast_conv1=True, use_flash_attn=True)
    kept = [k for k in stripped if k != 'logit_scale']
    assert len(kept) == len(remapped), (len(kept), len(remapped))
    pairs = iter(zip(kept, remapped.items()))
    out = OrderedDict()
    for k, v in stripped.items():
        if k == 'logit_scale':
            out['module.logit_scale'] = v
            continue
        src, (dst, w) = next(pairs)
        assert src == k
        out['module.' + dst] = w
    return out


# ---- --layouts: full-size key -> shape tables ------------------------------
# The sizes model_clip.CLIP_VITB16 / CLIP_VITL14 hard-code (read at the commit
# above); those builders end in clip.load / torch.load, so the towers are
# assembled here directly, exactly as the builders do before loading.
FULL_SIZES = {
    'b16': dict(name='CLIP_VITB16', vision=(224, 16, 768, 12, 12, 4),
                text=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)),
    'l14': dict(name='CLIP_VITL14', vision=(224, 14, 1024, 24, 16, 4),
                text=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12)),
}
LAYOUT_FRAMES = 16       # the EK-100 fine-tune clip length
LAYOUT_EMBED = 256       # --project-embed-dim of the LaViLa-pretrained releases


def build_full_clip(size, num_frames=LAYOUT_FRAMES, embed_dim=LAYOUT_EMBED, use_fast_conv1=False):
    """CLIP_VITB16 / CLIP_VITL14's assembly (defaults: causal text, no grad checkpointing).

    freeze_temperature=True as main_lavila_finetune_mir.py builds it (it only
    changes requires_grad, not the state dict).
    """
    from avion.models.model_clip import CLIP
    from avion.models.transformer import TextTransformer, VisionTransformer
    from avion.models.utils import enable_grad_checkpointing
    cfg = FULL_SIZES[size]
    vision = VisionTransformer(*cfg['vision'], output_dim=embed_dim, patch_dropout=0.,
                               drop_path_rate=0., num_frames=num_frames,
                               use_fast_conv1=use_fast_conv1, use_flash_attn=False)
    text = TextTransformer(**cfg['text'], output_dim=embed_dim, causal_mask=True)
    enable_grad_checkpointing(vision, False)
    enable_grad_checkpointing(text, False)
    return CLIP(embed_dim=embed_dim, vision_model=vision, text_model=text, freeze_temperature=True)


def shape_table(state_dict):
    return OrderedDict((k, list(v.shape)) for k, v in state_dict.items())


def dump_layout(path, layout):
    """JSON with one state-dict entry per line (small, diffable)."""
    lines = ['{'] + [f' {json.dumps(k)}: {json.dumps(v)},' for k, v in layout.items()
                     if k != 'state_dict']
    entries = [f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in layout['state_dict'].items()]
    lines += [' "state_dict": {', ',\n'.join(entries), ' }', '}']
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(path) as f:
        assert json.load(f) == layout


def write_layouts(out, commit):
    """layout_{b16,l14}[_flash].json: the fine-tune checkpoint's state_dict names and shapes.

    Built on torch's meta device (no memory, no values). AVION's inits
    (torch.randn/empty/zeros, nn.init.normal_, timm's trunc_normal_, the causal
    mask's fill_/triu_) all run on meta tensors unchanged, so no workaround is
    needed. The 'module.' prefix is what DDP(model).state_dict() adds (DDP
    cannot wrap a meta model; it prepends 'module.' to model.state_dict() in
    the same order, as the tiny avion_finetune_tiny.pt shows). The flash
    tables go through flash_layout, the same remap as avion_finetune_flash_tiny.pt.
    """
    import torch
    tiny_path = os.path.join(out, 'avion_finetune_tiny.pt')
    with torch.device('meta'):
        # Self-check first: the meta route reproduces the tiny files' key tables.
        if os.path.exists(tiny_path):
            tiny = build_clip(FINETUNE_FRAMES, freeze_temperature=True)
            sd = OrderedDict(('module.' + k, v) for k, v in tiny.state_dict().items())
            saved = torch.load(tiny_path, map_location='cpu', weights_only=False)['state_dict']
            assert shape_table(sd) == shape_table(saved), 'meta tiny layout != ' + tiny_path
            flash_path = os.path.join(out, 'avion_finetune_flash_tiny.pt')
            if os.path.exists(flash_path):
                saved = torch.load(flash_path, map_location='cpu', weights_only=False)['state_dict']
                assert shape_table(flash_layout(sd)) == shape_table(saved), 'meta != ' + flash_path
            print('meta-built tiny layout matches', tiny_path)
        for size, cfg in FULL_SIZES.items():
            model = build_full_clip(size)
            sd = OrderedDict(('module.' + k, v) for k, v in model.state_dict().items())
            n_params = sum(p.numel() for p in model.parameters())
            n_buffers = len(sd) - len(list(model.parameters()))
            assert n_buffers == 0  # the causal attn_mask is non-persistent
            image, patch, width, layers, heads, _ = cfg['vision']
            t = cfg['text']
            model_line = (
                f"AVION {cfg['name']} assembly fine-tuned for EK-100 MIR: VisionTransformer "
                f"{image}px patch {patch} width {width} x {layers} layers {heads} heads, "
                f"{LAYOUT_FRAMES} frames, projection {LAYOUT_EMBED}; TextTransformer width "
                f"{t['width']} x {t['layers']} layers {t['heads']} heads, vocab {t['vocab_size']}, "
                f"context {t['context_length']}, projection {LAYOUT_EMBED}")
            note = (f"ckpt['state_dict'] of scripts/main_lavila_finetune_mir.py (DDP, 'module.' "
                    f"prefix), as avion_finetune_tiny.pt; built on the meta device with the sizes "
                    f"model_clip.{cfg['name']} hard-codes (project_embed_dim {LAYOUT_EMBED} as in "
                    f"the LaViLa-pretrained releases); {n_params} parameters, no buffers")
            tables = {f'layout_{size}.json': (sd, note)}
            flash_sd = flash_layout(sd, v_layers=layers, t_layers=t['layers'],
                                    context=t['context_length'], vocab=t['vocab_size'])
            tables[f'layout_{size}_flash.json'] = (flash_sd, note + (
                "; --use-flash-attn --use-fast-conv1 naming: the plain table renamed by "
                "avion.models.utils.remap_keys_from_open_clip_to_vit (use_flash_attn=True, "
                "use_fast_conv1=True; logit_scale and 'module.' restored), as "
                "avion_finetune_flash_tiny.pt"))
            for name, (table_sd, table_note) in tables.items():
                assert sum(v.numel() for v in table_sd.values()) == n_params
                layout = {'upstream': f'{AVION_REPO} {commit}',
                          'model': model_line + (' (flash-attn + fast-conv1 naming)'
                                                 if 'flash' in name else ''),
                          'note': table_note, 'state_dict': shape_table(table_sd)}
                dump_layout(os.path.join(out, name), layout)
                vis = {k.split('.')[4] for k in table_sd if k.startswith('module.visual.transformer.resblocks.')}
                txt = {k.split('.')[4] for k in table_sd if k.startswith('module.textual.transformer.resblocks.')}
                print(f'{name}: {len(table_sd)} keys, {n_params} parameters, '
                      f'{len(vis)} vision / {len(txt)} text blocks')


def unflash(flash_sd):
    """Inverse renaming, for a model built with use_fast_conv1=True, use_flash_attn=False."""
    names = {'attn.Wqkv.weight': 'attn.in_proj_weight', 'attn.Wqkv.bias': 'attn.in_proj_bias',
             'mlp.fc1.': 'mlp.c_fc.', 'mlp.fc2.': 'mlp.c_proj.'}
    out = OrderedDict()
    for k, v in flash_sd.items():
        k = k.replace('module.', '')
        for a, b in names.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def make_inputs():
    rng = np.random.RandomState(0)
    video16 = rng.standard_normal((BATCH, FINETUNE_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    video4 = rng.standard_normal((BATCH, PRETRAIN_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    ids = np.zeros((BATCH, CONTEXT), np.int32)
    for row, n_tokens in enumerate((5, 18)):  # different lengths per row
        ids[row, 0] = SOT
        ids[row, 1:1 + n_tokens] = rng.randint(1, SOT, size=n_tokens)
        ids[row, 1 + n_tokens] = EOT
    return video16, video4, ids


def to_avion_video(v):
    """Channels-last (B, T, H, W, 3) -> AVION's (B, 3, T, H, W)."""
    import torch
    return torch.from_numpy(v).permute(0, 4, 1, 2, 3).contiguous()


def embed(model, video, ids):
    import torch
    model.eval()
    with torch.no_grad():
        out = [model.encode_image(video).numpy()]
        if ids is not None:
            out.append(model.encode_text(ids).numpy())
    return out


def load_stripped(path):
    """What main_lavila_finetune_mir.py does to the --pretrain-model checkpoint."""
    import torch
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    state_dict = OrderedDict()
    for k, v in ckpt['state_dict'].items():
        state_dict[k.replace('module.', '')] = v
    return ckpt, state_dict


def pickle_globals(path):
    """Every class/function a checkpoint's data.pkl references.

    torch.save writes pickle protocol 2, where each reference is one GLOBAL
    opcode ('module name'); STACK_GLOBAL (protocol >= 4) would be a surprise.
    """
    import pickletools
    with zipfile.ZipFile(path) as z:
        data = z.read([n for n in z.namelist() if n.endswith('/data.pkl')][0])
    found = set()
    for op, arg, _ in pickletools.genops(data):
        assert op.name != 'STACK_GLOBAL', 'unexpected pickle protocol'
        if op.name == 'GLOBAL':
            found.add(arg.replace(' ', '.'))
    return sorted(found)


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def upstream_commit(avion_dir, fallback):
    """HEAD of avion_dir if it is itself a git checkout (not inside another repo)."""
    try:
        top = subprocess.check_output(['git', '-C', avion_dir, 'rev-parse', '--show-toplevel'],
                                      stderr=subprocess.DEVNULL, text=True).strip()
        if os.path.realpath(top) != os.path.realpath(avion_dir):
            return fallback
        return subprocess.check_output(['git', '-C', avion_dir, 'rev-parse', 'HEAD'],
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except Exception:
        return fallback


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--avion', required=True, help='AVION work tree (contains avion/ and scripts/)')
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--avion-commit', default=AVION_COMMIT,
                    help='commit of the work tree, recorded when it has no .git')
    ap.add_argument('--stubs', default=None, help='where to write the flash_attn/clip stubs '
                    '(default: a temporary directory)')
    ap.add_argument('--layouts', action='store_true',
                    help='instead of the tiny golden files, write layout_{b16,l14}[_flash].json: '
                    'the full-size fine-tune state_dict key -> shape tables (meta device)')
    opts = ap.parse_args()

    stub_dir = opts.stubs or tempfile.mkdtemp(prefix='avion_stubs_')
    install_stubs(stub_dir)
    sys.path.insert(0, os.path.abspath(opts.avion))

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import avion
    from avion.losses.losses import ClipLoss, MaxMarginRankingLoss
    from avion.models.utils import inflate_positional_embeds
    assert os.path.abspath(list(avion.__path__)[0]).startswith(os.path.abspath(opts.avion)), avion.__path__
    if opts.layouts:
        os.makedirs(opts.out, exist_ok=True)
        write_layouts(opts.out, upstream_commit(opts.avion, opts.avion_commit))
        return

    torch.set_num_threads(1)  # bit-stable CPU reductions
    os.makedirs(opts.out, exist_ok=True)
    scripts = os.path.join(opts.avion, 'scripts')
    pg_dir = tempfile.mkdtemp(prefix='avion_pg_')
    # A one-process gloo group: DDP supplies the 'module.' prefix for real, and
    # MaxMarginRankingLoss always calls gather_features (needs a process group).
    dist.init_process_group('gloo', init_method='file://' + os.path.join(pg_dir, 'pg'),
                            rank=0, world_size=1)

    video16_np, video4_np, ids_np = make_inputs()
    video16, video4 = to_avion_video(video16_np), to_avion_video(video4_np)
    ids = torch.from_numpy(ids_np).long()
    paths = {k: os.path.join(opts.out, f) for k, f in [
        ('pretrain', 'avion_pretrain_tiny.pt'), ('finetune', 'avion_finetune_tiny.pt'),
        ('flash', 'avion_finetune_flash_tiny.pt')]}

    # ---- 1. pretrain checkpoint (main_lavila_pretrain.py) ------------------
    pre_argv = ['--model', 'CLIP_VITB16', '--project-embed-dim', str(EMBED),
                '--clip-length', str(PRETRAIN_FRAMES), '--context-length', str(CONTEXT),
                '--vocab-size', str(VOCAB), '--output-dir', 'experiments/tiny_pretrain']
    pre_args = script_parser(os.path.join(scripts, 'main_lavila_pretrain.py'), pre_argv)
    torch.manual_seed(0)
    # pretrain builds with freeze_temperature=args.freeze_temperature (False by default)
    model = build_clip(pre_args.clip_length, pre_args.freeze_temperature)
    randomise(model)
    ddp = DDP(model)
    criterion = ClipLoss(local_loss=pre_args.local_loss, gather_with_grad=pre_args.gather_with_grad,
                         cache_labels=True, rank=pre_args.rank, world_size=pre_args.world_size)
    optimizer, scaler = train_one_step(ddp, pre_args, criterion, video4, ids)
    best_acc1 = best_acc1_like_script(model, video4, ids)
    save_like_script({
        'epoch': 1,  # saved at the end of the first epoch (eval_freq=1)
        'state_dict': ddp.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scaler': scaler.state_dict(),
        'best_acc1': best_acc1,
        'args': pre_args,
    }, paths['pretrain'])

    # ---- 2. finetune checkpoint (main_lavila_finetune_mir.py) --------------
    ft_argv = ['--clip-length', str(FINETUNE_FRAMES), '--eval-freq', '1',
               '--pretrain-model', 'experiments/tiny_pretrain/checkpoint_best.pt',
               '--output-dir', 'experiments/tiny_finetune']
    ft_args = script_parser(os.path.join(scripts, 'main_lavila_finetune_mir.py'), ft_argv)
    torch.manual_seed(1)
    # The script builds with freeze_temperature=True and loads the pretrain
    # weights; here the 16-frame weights are an independent random draw so that
    # finetune_* and inflated_video test different numbers (inflation itself is
    # covered by inflated_video below).
    model16 = build_clip(ft_args.clip_length, freeze_temperature=True)
    model16.logit_scale.requires_grad = False
    randomise(model16)
    ddp16 = DDP(model16)
    criterion = MaxMarginRankingLoss(margin=0.2, fix_norm=True, local_loss=ft_args.local_loss,
                                     gather_with_grad=ft_args.gather_with_grad,
                                     rank=ft_args.rank, world_size=ft_args.world_size)
    relevancy = torch.eye(BATCH)
    optimizer16, scaler16 = train_one_step(ddp16, ft_args, criterion, video16, ids, relevancy)
    best16 = best_acc1_like_script(model16, video16, ids)
    ft_state = {
        'epoch': 1,
        'state_dict': ddp16.state_dict(),
        'optimizer': optimizer16.state_dict(),
        'scaler': scaler16.state_dict(),
        'best_acc1': best16,
        'args': ft_args,
    }
    save_like_script(ft_state, paths['finetune'])

    # ---- 3. the same weights in the flash-attn + fast-conv1 layout ---------
    fl_args = script_parser(os.path.join(scripts, 'main_lavila_finetune_mir.py'),
                            ft_argv + ['--use-flash-attn', '--use-fast-conv1'])
    fl_state = copy.deepcopy(ft_state)
    fl_state['state_dict'] = flash_layout(ft_state['state_dict'])
    fl_state['args'] = fl_args
    # AdamW state is indexed by parameter position, identical in the flash
    # model; only conv1's moments change shape with the weight.
    # (state keys number the parameters group by group, as state_dict() packs them)
    flat = [p for group in optimizer16.param_groups for p in group['params']]
    conv_idx = [i for i, p in enumerate(flat) if p is model16.visual.conv1.weight]
    assert len(conv_idx) == 1
    conv_idx = conv_idx[0]
    for key in ('exp_avg', 'exp_avg_sq'):
        fl_state['optimizer']['state'][conv_idx][key] = fl_state['optimizer']['state'][conv_idx][key].flatten(1)
    save_like_script(fl_state, paths['flash'])
    dist.destroy_process_group()

    # ---- 4. reference embeddings, computed from the saved files ------------
    _, sd = load_stripped(paths['pretrain'])
    m = build_clip(PRETRAIN_FRAMES, False)
    m.load_state_dict(sd, strict=True)
    pretrain_video, pretrain_text = embed(m, video4, ids)

    _, sd = load_stripped(paths['finetune'])
    m = build_clip(FINETUNE_FRAMES, True)
    m.load_state_dict(sd, strict=True)
    finetune_video, finetune_text = embed(m, video16, ids)

    # Flash layout check: mapped back onto AVION's own fast-conv1 model
    # (Linear conv1 after the rearrange) it must give the plain embeddings.
    fl_ckpt = torch.load(paths['flash'], map_location='cpu', weights_only=False)
    m = build_clip(FINETUNE_FRAMES, True, use_fast_conv1=True)
    m.load_state_dict(unflash(fl_ckpt['state_dict']), strict=True)
    flash_video, flash_text = embed(m, video16, ids)
    np.testing.assert_allclose(flash_video, finetune_video, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(flash_text, finetune_text)
    conv = fl_ckpt['state_dict']['module.visual.conv1.weight']
    assert conv.shape == (V_WIDTH, 3 * PATCH * PATCH)
    assert torch.equal(conv.view(V_WIDTH, 3, PATCH, PATCH), sd['visual.conv1.weight'])

    # Inflation exactly as main_lavila_finetune_mir.py loads --pretrain-model.
    _, sd = load_stripped(paths['pretrain'])
    m = build_clip(FINETUNE_FRAMES, True)
    m.logit_scale.requires_grad = False
    sd = inflate_positional_embeds(m.state_dict(), sd, num_frames=FINETUNE_FRAMES,
                                   load_temporal_fix='bilinear')
    m.load_state_dict(sd, strict=True)
    (inflated_video,) = embed(m, video16, None)

    np.savez(os.path.join(opts.out, 'reference.npz'),
             video16=video16_np, video4=video4_np, ids=ids_np,
             pretrain_video=pretrain_video, pretrain_text=pretrain_text,
             finetune_video=finetune_video, finetune_text=finetune_text,
             inflated_video=inflated_video)

    # ---- 5. info.json -------------------------------------------------------
    import timm
    files = {}
    for key, path in paths.items():
        files[os.path.basename(path)] = {
            'bytes': os.path.getsize(path), 'sha256': sha256(path),
            'top_level_keys': list(torch.load(path, map_location='cpu', weights_only=False).keys()),
            'pickle_globals': pickle_globals(path)}
    ref = os.path.join(opts.out, 'reference.npz')
    files['reference.npz'] = {'bytes': os.path.getsize(ref), 'sha256': sha256(ref)}
    vision = {'class': 'avion.models.transformer.VisionTransformer', 'image_size': IMAGE_SIZE,
              'patch_size': PATCH, 'width': V_WIDTH, 'layers': V_LAYERS, 'heads': V_HEADS,
              'mlp_ratio': MLP_RATIO, 'mlp_width': V_WIDTH * MLP_RATIO, 'output_dim': EMBED,
              'num_frames': {'pretrain': PRETRAIN_FRAMES, 'finetune': FINETUNE_FRAMES},
              'act_layer': 'torch.nn.GELU (exact erf)', 'norm_layer': 'torch.nn.LayerNorm',
              'layernorm_eps': 1e-6, 'ln_pre': True, 'conv1_bias': False,
              'global_average_pool': False, 'pooling': 'CLS token (x[:, 0]), then ln_post',
              'projection': 'visual.image_projection (width, output_dim), x @ P, after ln_post',
              'token_order': 'CLS, then frame-major (t, hh, ww); one CLS for the whole clip',
              'position': 'CLS + pos[0]; patch (t, s) + pos[1 + s] + temporal[t]'}
    text = {'class': 'avion.models.transformer.TextTransformer', 'context_length': CONTEXT,
            'vocab_size': VOCAB, 'width': T_WIDTH, 'heads': T_HEADS, 'layers': T_LAYERS,
            'mlp_width': T_WIDTH * 4, 'output_dim': EMBED, 'act_layer': 'torch.nn.GELU (exact erf)',
            'norm_layer': 'avion.models.transformer.LayerNorm', 'layernorm_eps': 1e-5,
            'causal_mask': True,
            'pooling': 'ln_final on all tokens, then the token at ids.argmax(-1)',
            'projection': 'textual.text_projection (width, output_dim), after pooling'}
    info = {
        'upstream': {'repo': AVION_REPO, 'commit': upstream_commit(opts.avion, opts.avion_commit),
                     'flash_attn_layout_reference': {
                         'repo': 'https://github.com/Dao-AILab/flash-attention',
                         'version': FLASH_ATTN_VERSION, 'commit': FLASH_ATTN_COMMIT}},
        'environment': {'torch': torch.__version__, 'numpy': np.__version__,
                        'timm': timm.__version__, 'python': platform.python_version()},
        'architecture': {'clip': {'class': 'avion.models.model_clip.CLIP', 'embed_dim': EMBED,
                                  'top_level_projections': None,
                                  'logit_scale_init': 'log(1/0.07)',
                                  'assembled_like': 'avion.models.model_clip.CLIP_VITB16'},
                         'vision': vision, 'text': text},
        'weights': 'torch.manual_seed(0) (pretrain) / (1) (finetune), float32, then '
                   'randomise() (LayerNorm, zero tensors, vision matrices, embeddings; see script), '
                   'then one optimizer step; embeddings are computed from the saved files in eval mode',
        'inputs': {'video16': f'({BATCH}, {FINETUNE_FRAMES}, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) float32 '
                              'channels-last ~N(0,1); AVION gets permute(0, 4, 1, 2, 3)',
                   'video4': f'({BATCH}, {PRETRAIN_FRAMES}, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) float32',
                   'ids': f'({BATCH}, {CONTEXT}) int32: [{SOT}, tokens..., {EOT}, 0...], '
                          'lengths 7 and 20'},
        'outputs': {'pretrain_video': 'pretrain model encode_image(video4)',
                    'pretrain_text': 'pretrain model encode_text(ids)',
                    'finetune_video': 'finetune model encode_image(video16)',
                    'finetune_text': 'finetune model encode_text(ids)',
                    'inflated_video': 'pretrain checkpoint, module. stripped, inflate_positional_embeds('
                                      'num_frames=16, load_temporal_fix="bilinear"), strict load into '
                                      'a 16-frame model, encode_image(video16)',
                    'normalised': False},
        'saved_as': {
            'avion_pretrain_tiny.pt': 'scripts/main_lavila_pretrain.py: DDP(model).state_dict(), '
                                      'AdamW(2 param groups).state_dict() after one step, '
                                      'GradScaler.state_dict(), best_acc1 (numpy float64 from get_mAP), '
                                      'args (argparse.Namespace) from get_args_parser() on '
                                      + ' '.join(pre_argv) + '; written by avion.utils.distributed.save_on_master',
            'avion_finetune_tiny.pt': 'scripts/main_lavila_finetune_mir.py: as above (freeze_temperature=True, '
                                      'so logit_scale is not in the optimizer), args on ' + ' '.join(ft_argv),
            'avion_finetune_flash_tiny.pt': 'avion_finetune_tiny.pt with state_dict renamed by '
                                            'avion.models.utils.remap_keys_from_open_clip_to_vit(use_flash_attn=True, '
                                            'use_fast_conv1=True) (+ logit_scale and module. restored), conv1 '
                                            'optimizer moments flattened, args with --use-flash-attn --use-fast-conv1',
        },
        'files': files,
        'upstream_quirks': [
            'GELU is exact (erf) nn.GELU in both towers: the scripts pass use_quick_gelu=True but '
            'CLIP_VITB16/VITL14 swallow it in **kwargs (OpenAI CLIP itself uses QuickGELU)',
            'LayerNorm eps: 1e-6 in the vision tower (ln_pre, ln_1/ln_2, ln_post), 1e-5 in the text tower',
            'CLIP_VITB16 hard-codes vocab_size=49408; args.vocab_size is recorded but ignored for it',
            'main_lavila_finetune_mir.py args carry no project_embed_dim/context_length/vocab_size/'
            'pretrain_zoo (taken from the pretrain checkpoint\'s args); infer sizes from tensor shapes',
            'temporal inflation (inflate_positional_embeds, bilinear) = 1-D linear interpolation with '
            'align_corners=False and edge clamping: src = clip((t + 0.5) * T_old / T_new - 0.5, 0, T_old - 1)',
            'remap_keys_from_open_clip_to_vit drops logit_scale',
            'optimizer lr and best_acc1 are numpy float64: torch.load(weights_only=True) needs '
            'add_safe_globals([argparse.Namespace, numpy._core.multiarray.scalar, numpy.dtype, '
            'numpy.dtypes.Float64DType])',
        ],
        'regenerate': ('see the docstring of tools/golden/make_avion_golden.py for the venv; then '
                       'mkdir -p /work/golden/AVION && git -C /work/.mirror/zhaoyue-zephyrus+AVION/repo archive '
                       + AVION_COMMIT + ' | tar -x -C /work/golden/AVION && /work/golden/venv-avion/bin/python '
                       'tools/golden/make_avion_golden.py --avion /work/golden/AVION --out tests/data/golden/avion'),
    }
    with open(os.path.join(opts.out, 'info.json'), 'w') as f:
        json.dump(info, f, indent=1)
        f.write('\n')
    for name, meta in files.items():
        print(f"{name}: {meta['bytes']} bytes")


if __name__ == '__main__':
    main()
