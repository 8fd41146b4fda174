"""Generate a tiny EVA02-AT video-tower golden checkpoint and reference embeddings.

What it builds
--------------
EVA02-AT (Wang, Wang, Chau, "EVA02-AT: Egocentric Video-Language Understanding
with Spatial-Temporal Rotary Positional Embeddings and Symmetric Optimization")
has no released model source. Its authors' repository xqwang14/SMS-Loss
(commit 8728c513fd981cf01479f4293211702a776133cd) contains, committed by
mistake, the CPython 3.12 bytecode of the EVA02-AT modules:

* ``avion/models/__pycache__/eva.cpython-312.pyc``  (``Eva``, ``EvaBlock``,
  ``EvaAttention``, factory ``eva02_base_patch16_clip_224``)
* ``avion/models/__pycache__/rope.cpython-312.pyc`` (``RotaryEmbeddingCat`` and
  the sin/cos table builders)

This script runs *that bytecode* (the authors' own classes) under Python 3.12:
it copies the two .pyc files into a temporary ``avion/models/`` package as
sourceless modules (``eva.pyc``, ``rope.pyc``) and imports them. Nothing of the
upstream code is stored in this repository; ``--sms`` must point at an exported
SMS-Loss tree.

The tower is ``eva02_base_patch16_clip_224(img_size=32, patch_size=8,
embed_dim=64, depth=2, num_heads=2, num_frames=4, output_dim=16)`` -- i.e. the
base factory's own settings (mlp_ratio 8/3 SwiGLU with sub-LN, q/v bias, no k
bias, attention sub-LN, spatial-temporal RoPE with ref_feat_shape=(16, 16),
fast (Linear) patch embedding, global_pool='token', head Linear(width, out)) at
toy sizes. Head dim is 32.

Stub
----
``eva.pyc`` imports ``flash_attn.flash_attn_func`` at module level, and -- a
finding of the disassembly -- *always calls it*: ``EvaBlock`` builds
``EvaAttention`` without passing ``flash_attn``/``fused_attn``, whose defaults
are True, so ``use_flash_attn=False`` on ``Eva`` has no effect on attention.
flash-attn does not install on a CPU machine, so a stub ``flash_attn`` package
with an exact (non-fused) ``flash_attn_func`` is written into the same
temporary directory: softmax(q k^T * softmax_scale) v with
softmax_scale = head_dim**-0.5 when None, on (B, N, H, D) tensors, no dropout,
non-causal -- what flash-attn computes. The script cross-checks it against the
bytecode's own fallback path (``attn.attn = None`` ->
``F.scaled_dot_product_attention``).

Files written to ``--out``
--------------------------
* ``eva02at_tiny.pt``  ``{'epoch': 1, 'state_dict': {'module.visual.<key>': ...},
  'best_acc1': 0.0}``, written by SMS-Loss's ``avion.utils.distributed.
  save_on_master`` (a plain ``torch.save``), the dict layout of
  scripts/dirtrain.py and scripts/ammplus_finetune.py. The ``module.`` prefix
  is what their DistributedDataParallel wrapper adds; the ``visual.`` prefix is
  AVION's CLIP wrapper attribute, which the scripts reference
  (``module.visual.temporal_embedding``) -- the wrapper that would hold an
  ``Eva`` tower is *not* in the repository (model_clip has no EVA factory), so
  that prefix is inferred, not confirmed. Only persistent tensors are saved; the
  RoPE tables (``rope.pos_embed``, ``rope.temporal_embed``) are non-persistent
  buffers and must be recomputed.
* ``reference.npz``  inputs, output and intermediates (see ``info.json``).
* ``info.json``      provenance, architecture, formulas, how to rerun.

An independent float64 NumPy forward pass written from the formulas (not from
upstream code) is checked against the bytecode's output, and the sensitivity
of the output to each positional component is recorded.

Rerun
-----
::

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/golden/venv-eva02at
    /work/golden/venv-eva02at/bin/pip install torch==2.13.0 torchvision==0.28.0 \\
        timm==1.0.7 einops==0.8.0 numpy     # timm/einops as pinned in SMS-Loss requirements.txt
    mkdir -p /work/golden/SMS
    git -C /work/.mirror/xqwang14+SMS-Loss/repo archive 8728c513fd981cf01479f4293211702a776133cd \\
        | tar -x -C /work/golden/SMS
    /work/golden/venv-eva02at/bin/python tools/golden/make_eva02at_golden.py \\
        --sms /work/golden/SMS --out tests/data/golden/eva02at

Python must be 3.12 (the bytecode's magic number is checked). Everything is
seeded; rerunning gives identical tensors.

Full-size layouts (--layouts)
-----------------------------
With ``--layouts`` the script writes, instead of the files above, the key ->
shape tables of full-size towers in eva02at_tiny.pt's naming
('module.visual.' prefix), built with the bytecode's classes on torch's meta
device (the drop-path schedule's ``.item()`` needs a CPU ``torch.linspace``
during construction; see ``write_layouts``):

* ``layout_b16.json``  ``eva02_base_patch16_clip_224()`` (its defaults: 16
  frames, output_dim 256);
* ``layout_l14.json``  the same factory with EVA02-L/14 sizes (``LAYOUT_L14``:
  img 224, patch 14, width 1024, depth 24, heads 16, mlp_ratio
  2.6666666666666665, 16 frames, output 256; ref_feat_shape (16, 16) is
  hard-coded by the factory) -- the authors' code has no L factory.

Each is ``{"upstream", "model", "note", "state_dict": {key: [shape...]}}``,
keys in state-dict order; the meta route is first checked against
eva02at_tiny.pt when that file is in --out::

    /work/golden/venv-eva02at/bin/python tools/golden/make_eva02at_golden.py \\
        --sms /work/golden/SMS --out tests/data/golden/eva02at --layouts
"""

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict

import numpy as np

SMS_REPO = "https://github.com/xqwang14/SMS-Loss"
SMS_COMMIT = "8728c513fd981cf01479f4293211702a776133cd"
PYC = {  # sourceless module name -> file in the SMS-Loss tree
    "eva": "avion/models/__pycache__/eva.cpython-312.pyc",
    "rope": "avion/models/__pycache__/rope.cpython-312.pyc",
}

# Tiny architecture; everything not listed is what eva02_base_patch16_clip_224 sets.
IMAGE_SIZE, PATCH, WIDTH, DEPTH, HEADS, FRAMES, OUT_DIM = 32, 8, 64, 2, 2, 4, 16
BATCH = 2
KEY_PREFIX = "module.visual."

# Exact flash_attn_func stand-in (see module docstring).
FLASH_STUB = '''"""CPU stand-in for flash_attn (written by make_eva02at_golden.py)."""
import torch


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    # flash-attn layout: (batch, seqlen, heads, head_dim) in and out.
    assert dropout_p == 0.0 and not causal and not unused
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax((qh @ kh.transpose(-2, -1)) * scale, dim=-1)
    return (attn @ vh).transpose(1, 2)
'''


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def sms_commit_of(sms):
    try:
        return subprocess.check_output(["git", "-C", sms, "rev-parse", "HEAD"],
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return SMS_COMMIT  # an exported (git archive) tree has no .git


def prepare_imports(sms, work):
    """Temp dir with avion/models/{eva,rope}.pyc (sourceless) and the flash_attn stub."""
    assert sys.version_info[:2] == (3, 12), "the bytecode is CPython 3.12; run under 3.12"
    models = os.path.join(work, "avion", "models")
    os.makedirs(models)
    for name, rel in PYC.items():
        src = os.path.join(sms, rel)
        with open(src, "rb") as f:
            assert f.read(4) == importlib.util.MAGIC_NUMBER, f"{src}: bytecode magic mismatch"
        shutil.copy(src, os.path.join(models, name + ".pyc"))
    os.makedirs(os.path.join(work, "flash_attn"))
    with open(os.path.join(work, "flash_attn", "__init__.py"), "w") as f:
        f.write(FLASH_STUB)
    sys.path.insert(0, work)  # avion/ and avion/models/ are namespace packages


def load_save_on_master(sms):
    """SMS-Loss's avion/utils/distributed.py, loaded from its file path."""
    spec = importlib.util.spec_from_file_location(
        "sms_distributed", os.path.join(sms, "avion", "utils", "distributed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.save_on_master


def build(eva_mod):
    import torch
    torch.manual_seed(0)
    model = eva_mod.eva02_base_patch16_clip_224(
        img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH,
        num_heads=HEADS, num_frames=FRAMES, output_dim=OUT_DIM, use_flash_attn=False)
    return model.float().eval()


def randomise(model):
    """Make every tensor matter to the parity test, keeping the architecture.

    * LayerNorm: weight 1 + 0.1*randn, bias 0.1*randn (init: 1 / 0).
    * Linear weights: N(0, 1/fan_in). The upstream init (trunc_normal 0.02,
      fc2 further divided by sqrt(2*layer), head scaled by 1e-3) gives nearly
      uniform attention and a ~0 head output, which would hide RoPE, q/k/v or
      head-split mistakes.
    * Linear biases (zero-initialised): 0.1*randn.
    * cls_token, pos_embed, temporal_embed: 0.5*randn (init trunc_normal 0.02),
      so token-order and frame-order errors are far above float32 noise.
    """
    import torch
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # deterministic (registration) order
            r = torch.randn(p.shape, generator=g)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.copy_(1 + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.1 * r)
            elif p.ndim == 2 and name not in ("pos_embed", "temporal_embed"):
                p.copy_(r * p.shape[1] ** -0.5)
            else:
                p.copy_(0.5 * r)
    return model


def make_video():
    """(B, T, H, W, 3) float32 ~ N(0, 1), channels-last (tempret-jax layout)."""
    rng = np.random.RandomState(0)
    return rng.standard_normal((BATCH, FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def to_torch_video(v):
    """Channels-last -> Eva.forward's (B, 3, T, H, W)."""
    import torch
    return torch.from_numpy(v).permute(0, 4, 1, 2, 3).contiguous()


def run(model, video):
    """Output and intermediates, via the bytecode's own methods."""
    import torch
    keep = {}
    hooks = [blk.register_forward_hook(lambda m, i, o, n=n: keep.__setitem__(n, o))
             for n, blk in enumerate(model.blocks)]
    with torch.no_grad():
        x = to_torch_video(video).to(next(model.parameters()).dtype)
        out = model(x)
        patches = model.video_patch_embed(x)
        embedded, _ = model._pos_embed(patches)
        feats = model.forward_features(x)
    for h in hooks:
        h.remove()
    return {
        "video_embedding": out.numpy(),
        "patch_tokens": patches.numpy(),
        "embedded_tokens": embedded.numpy(),
        "block_outputs": np.stack([keep[n].numpy() for n in range(len(model.blocks))]),
        "final_features": feats.numpy(),
    }


# ---------------------------------------------------------------------------
# Independent float64 forward from the recovered formulas (tempret-jax's spec).
# ---------------------------------------------------------------------------

def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rope_angles(grid, frames, head_dim, ref=16, theta=10000.0):
    """Per-token, per-pair rotation angles (T*g*g, head_dim/2), cls excluded.

    Spatial: first head_dim/4 pairs rotate by row*f_k, next head_dim/4 by col*f_k,
    f_k = theta**(-k/(head_dim/4)), positions scaled by ref/grid.
    Temporal: pair m rotates by t * theta**(-2m/head_dim) (whole head dim).
    The two are composed by adding angles.
    """
    nb = head_dim // 4
    f_sp = theta ** (-np.arange(nb) / nb)
    pos = np.arange(grid) / grid * ref
    rows, cols = np.meshgrid(pos, pos, indexing="ij")
    sp = np.concatenate([rows.reshape(-1, 1) * f_sp, cols.reshape(-1, 1) * f_sp], -1)  # (g*g, hd/2)
    f_t = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    tp = np.arange(frames)[:, None] * f_t  # (T, hd/2)
    return np.tile(sp, (frames, 1)) + np.repeat(tp, grid * grid, axis=0)


def _rotate(x, ang):
    """Interleaved pairs (x[2m], x[2m+1]) rotated by ang[m]; x (..., N, hd)."""
    c, s = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x1 * c + x0 * s
    return out


def numpy_forward(sd, video):
    p = {k: v.double().numpy() for k, v in sd.items()}
    B, T, H, _, C = video.shape
    g, hd = H // PATCH, WIDTH // HEADS
    # patch embed: per-frame p x p patches, features ordered (c, sh, sw), tokens (t, hh, ww)
    x = video.astype(np.float64).reshape(B, T, g, PATCH, g, PATCH, C)
    x = x.transpose(0, 1, 2, 4, 6, 3, 5).reshape(B, T * g * g, C * PATCH * PATCH)
    x = x @ p["conv1.weight"].T + p["conv1.bias"]
    # learnable spatial (tiled over frames) + temporal (repeated over patches) embeddings
    pos = np.tile(p["pos_embed"][1:], (T, 1)) + np.repeat(p["temporal_embed"], g * g, axis=0)
    cls = p["cls_token"].reshape(1, 1, WIDTH) + p["pos_embed"][0]
    x = np.concatenate([np.broadcast_to(cls, (B, 1, WIDTH)), x + pos], 1)
    ang = rope_angles(g, T, hd)
    N = x.shape[1]
    for i in range(DEPTH):
        q_ = f"blocks.{i}."
        h = _ln(x, p[q_ + "norm1.weight"], p[q_ + "norm1.bias"])
        q = h @ p[q_ + "attn.q_proj.weight"].T + p[q_ + "attn.q_proj.bias"]
        k = h @ p[q_ + "attn.k_proj.weight"].T
        v = h @ p[q_ + "attn.v_proj.weight"].T + p[q_ + "attn.v_proj.bias"]
        q, k, v = (t.reshape(B, N, HEADS, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
        q[:, :, 1:] = _rotate(q[:, :, 1:], ang)  # cls token (index 0) not rotated
        k[:, :, 1:] = _rotate(k[:, :, 1:], ang)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, N, WIDTH)
        o = _ln(o, p[q_ + "attn.norm.weight"], p[q_ + "attn.norm.bias"])
        x = x + o @ p[q_ + "attn.proj.weight"].T + p[q_ + "attn.proj.bias"]
        h = _ln(x, p[q_ + "norm2.weight"], p[q_ + "norm2.bias"])
        gate = h @ p[q_ + "mlp.fc1_g.weight"].T + p[q_ + "mlp.fc1_g.bias"]
        up = h @ p[q_ + "mlp.fc1_x.weight"].T + p[q_ + "mlp.fc1_x.bias"]
        h = gate / (1 + np.exp(-gate)) * up
        h = _ln(h, p[q_ + "mlp.norm.weight"], p[q_ + "mlp.norm.bias"])
        x = x + h @ p[q_ + "mlp.fc2.weight"].T + p[q_ + "mlp.fc2.bias"]
    x = _ln(x, p["norm.weight"], p["norm.bias"])
    return x[:, 0] @ p["head.weight"].T + p["head.bias"]


def rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def sensitivity(model, video, base):
    """Relative output change when one positional component is switched off."""
    import torch
    out = {}
    rope = model.rope
    saved = {n: getattr(rope, n).clone() for n in ("pos_embed", "temporal_embed")}

    def identity_table(t):  # sin=0 | cos=1
        half = t.shape[-1] // 2
        return torch.cat([torch.zeros_like(t[:, :half]), torch.ones_like(t[:, half:])], -1)

    for name in ("pos_embed", "temporal_embed"):
        getattr(rope, name).copy_(identity_table(saved[name]))
        out[f"rope.{name} -> identity"] = rel_diff(run(model, video)["video_embedding"], base)
        getattr(rope, name).copy_(saved[name])
    for name in ("temporal_embed", "pos_embed"):
        param = getattr(model, name)
        kept = param.detach().clone()
        with torch.no_grad():
            param.zero_()
        out[f"{name} (learnable) -> 0"] = rel_diff(run(model, video)["video_embedding"], base)
        with torch.no_grad():
            param.copy_(kept)
    frames_flipped = video[:, ::-1].copy()
    out["frames reversed"] = rel_diff(run(model, frames_flipped)["video_embedding"], base)
    return out


FORMULAS = {
    "input": "video v (B,3,T,H,W) [stored channels-last (B,T,H,W,3)]; g=H/p patches per side, N=T*g*g",
    "patch_embed": "x[b, t*g*g + i*g + j] = W_pe . vec(v[b, :, t, i*p:(i+1)*p, j*p:(j+1)*p]) + b_pe; "
                   "vec order (c, sh, sw); W_pe = conv1.weight (D, 3*p*p) (nn.Linear, use_fast_conv1=True)",
    "pos_embed": "z0 = [cls_token + pos_embed[0]; x_n + pos_embed[1 + s(n)] + temporal_embed[t(n)]], "
                 "s(n) = n mod g*g, t(n) = n div g*g; pos_embed (1+g*g, D), temporal_embed (T, D)",
    "block": "x = x + proj(LN_attn(MHA(LN1(x)))); x = x + fc2(LN_mlp(silu(fc1_g(LN2(x))) * fc1_x(LN2(x)))); "
             "all LN eps 1e-6; no layer scale, no drop path",
    "attention": "q = W_q h + b_q, k = W_k h (no bias), v = W_v h + b_v; heads split as (N, H, hd) from the "
                 "D axis; q,k of tokens 1..N rotated (cls not); softmax(q k^T / sqrt(hd)) v; heads merged",
    "rope_pairs": "interleaved pairs (2m, 2m+1): (x0, x1) -> (x0 cos a - x1 sin a, x1 cos a + x0 sin a)",
    "rope_spatial": "pairs m < hd/4: a = r * f_m; pairs hd/4 <= m < hd/2: a = c * f_(m-hd/4); "
                    "f_k = 10000^(-k/(hd/4)); r, c = row, col * (16 / g)  (ref_feat_shape (16,16))",
    "rope_temporal": "a_t(m) = t * 10000^(-2m/hd), m < hd/2 (whole head dim); t * (T/T): no scaling",
    "rope_composition": "applied as two successive rotations (spatial, then temporal) = angle a_sp + a_t",
    "head": "out = head(LN_final(x_L)[:, 0])  (global_pool='token', fc_norm = Identity); unnormalised",
}


# --layouts: full-size key -> shape tables.
# L/14: the authors' code has no L factory; these are eva02_base_patch16_clip_224's
# arguments with EVA02-L/14 sizes (the factory hard-codes ref_feat_shape=(16, 16)).
LAYOUT_L14 = dict(img_size=224, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                  mlp_ratio=2.6666666666666665, num_frames=16, output_dim=256)


def dump_layout(path, layout):
    """JSON with one state-dict entry per line (small, diffable)."""
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in layout.items()
                     if k != "state_dict"]
    entries = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in layout["state_dict"].items()]
    lines += [' "state_dict": {', ",\n".join(entries), " }", "}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path) as f:
        assert json.load(f) == layout


def write_layouts(eva_mod, out, commit):
    """layout_{b16,l14}.json: the full-size towers' checkpoint names and shapes.

    Built with the bytecode's own factory on torch's meta device (no memory, no
    values), keys prefixed 'module.visual.' as in eva02at_tiny.pt. Eva's inits
    (trunc_normal_, the RoPE tables, fix_init_weight, the head scaling) run on meta
    tensors unchanged except the timm-style drop-path schedule
    ``[x.item() for x in torch.linspace(0, drop_path_rate, depth)]`` (.item() cannot
    read a meta tensor): during construction torch.linspace is made to return a
    (tiny) CPU tensor; it holds no weights and only feeds DropPath rates (all 0).
    """
    import torch
    linspace = torch.linspace

    def cpu_linspace(*args, **kwargs):  # see the docstring: the drop-path rates' .item()
        return linspace(*args, **{**kwargs, "device": "cpu"})
    torch.linspace = cpu_linspace
    try:
        _write_layouts(eva_mod, out, commit)
    finally:
        torch.linspace = linspace


def _write_layouts(eva_mod, out, commit):
    import torch
    tiny_path = os.path.join(out, "eva02at_tiny.pt")
    factory = eva_mod.eva02_base_patch16_clip_224
    with torch.device("meta"):
        if os.path.exists(tiny_path):  # self-check: the meta route gives the tiny file's table
            saved = torch.load(tiny_path, map_location="cpu", weights_only=True)["state_dict"]
            tiny = build(eva_mod)
            assert ([(KEY_PREFIX + k, list(v.shape)) for k, v in tiny.state_dict().items()]
                    == [(k, list(v.shape)) for k, v in saved.items()]), tiny_path
            print("meta-built tiny layout matches", tiny_path)
        towers = {
            "b16": (factory(), "eva02_base_patch16_clip_224() with its defaults (img 224, "
                    "patch 16, width 768, depth 12, heads 12, mlp_ratio 2.6666666666666665, "
                    "num_frames 16, output_dim 256)", None),
            "l14": (factory(**LAYOUT_L14), "eva02_base_patch16_clip_224(" + ", ".join(
                f"{k}={v}" for k, v in LAYOUT_L14.items()) + ")",
                "the authors' code has no L factory: these are eva02_base_patch16_clip_224's "
                "arguments (and its hard-coded settings, ref_feat_shape (16, 16) included) "
                "with EVA02-L/14 sizes"),
        }
        for size, (model, call, extra) in towers.items():
            sd = model.state_dict()
            params = dict(model.named_parameters())
            assert list(sd) == list(params), "unexpected persistent buffers"
            n_params = sum(p.numel() for p in params.values())
            depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
            width = sd["cls_token"].shape[-1]
            note = (f"ckpt['state_dict'] naming of eva02at_tiny.pt ('module.' from DDP, 'visual.' "
                    f"inferred from AVION's CLIP wrapper); built on the meta device with {call}; "
                    f"{n_params} parameters, no buffers (the RoPE tables rope.pos_embed / "
                    f"rope.temporal_embed are non-persistent)")
            if extra:
                note = extra + "; " + note
            layout = {"upstream": f"{SMS_REPO} {commit} (avion/models/__pycache__/"
                                  "eva.cpython-312.pyc, rope.cpython-312.pyc)",
                      "model": (f"EVA02-AT video tower (authors' Eva class from their bytecode), "
                                f"{size.upper()}: width {width} x {depth} blocks, "
                                f"{sd['temporal_embed'].shape[0]} frames, "
                                f"{sd['pos_embed'].shape[0] - 1} patches per frame, "
                                f"head {list(sd['head.weight'].shape)}"),
                      "note": note,
                      "state_dict": {KEY_PREFIX + k: list(v.shape) for k, v in sd.items()}}
            path = os.path.join(out, f"layout_{size}.json")
            dump_layout(path, layout)
            print(f"{os.path.basename(path)}: {len(sd)} keys, {n_params} parameters, "
                  f"{depth} blocks")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sms", required=True, help="exported SMS-Loss tree (contains avion/)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--layouts", action="store_true",
                    help="instead of the tiny golden files, write layout_{b16,l14}.json: the "
                         "full-size state_dict key -> shape tables (meta device)")
    opts = ap.parse_args()

    import einops
    import timm
    import torch
    torch.set_num_threads(1)  # deterministic reductions
    work = tempfile.mkdtemp(prefix="eva02at_")
    try:
        prepare_imports(opts.sms, work)
        import avion.models.eva as eva_mod
        if opts.layouts:
            os.makedirs(opts.out, exist_ok=True)
            write_layouts(eva_mod, opts.out, sms_commit_of(opts.sms))
            return
        save_on_master = load_save_on_master(opts.sms)

        model = randomise(build(eva_mod))
        blk_attn = [blk.attn for blk in model.blocks]
        assert all(a.attn is True for a in blk_attn), "expected the flash_attn path"
        video = make_video()
        ref = run(model, video)

        # cross-check the flash stub against the bytecode's SDPA fallback path
        for a in blk_attn:
            a.attn = None
        sdpa_diff = rel_diff(run(model, video)["video_embedding"], ref["video_embedding"])
        for a in blk_attn:
            a.attn = True
        assert sdpa_diff < 1e-5, sdpa_diff

        sd = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        np_out = numpy_forward(sd, video)
        numpy_diff = rel_diff(ref["video_embedding"], np_out)
        assert numpy_diff < 1e-4, numpy_diff
        model64 = randomise(build(eva_mod)).double()
        emb64 = run(model64, video)["video_embedding"]
        numpy_diff64 = rel_diff(emb64, np_out)
        assert numpy_diff64 < 1e-5, numpy_diff64  # RoPE tables are built in float32 upstream
        ang = rope_angles(IMAGE_SIZE // PATCH, FRAMES, WIDTH // HEADS)
        rope_sp = model.rope.pos_embed.numpy()
        rope_tp = model.rope.temporal_embed.numpy()
        g2 = (IMAGE_SIZE // PATCH) ** 2
        def rep(a):  # pair angle -> both elements of the pair
            return np.repeat(a, 2, axis=-1)
        sp_ang = ang[:g2] - ang[0]  # frame 0: temporal angle 0
        tp_ang = ang[::g2] - ang[0]  # token 0 of each frame: spatial angle 0
        assert np.allclose(rope_sp, np.concatenate([np.sin(rep(sp_ang)), np.cos(rep(sp_ang))], -1), atol=1e-6)
        assert np.allclose(rope_tp, np.concatenate([np.sin(rep(tp_ang)), np.cos(rep(tp_ang))], -1), atol=1e-6)
        sens = sensitivity(model, video, ref["video_embedding"])

        os.makedirs(opts.out, exist_ok=True)
        ckpt_path = os.path.join(opts.out, "eva02at_tiny.pt")
        state = {"epoch": 1,
                 "state_dict": OrderedDict((KEY_PREFIX + k, v) for k, v in sd.items()),
                 "best_acc1": 0.0}
        with tempfile.TemporaryDirectory() as d:
            save_on_master(state, False, d)  # torch.save(state, d/checkpoint.pt)
            shutil.move(os.path.join(d, "checkpoint.pt"), ckpt_path)
        back = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        assert list(back["state_dict"]) == list(state["state_dict"])
        # reload the way ammplus_finetune.py strips keys, into a freshly built tower
        fresh = build(eva_mod)
        fresh.load_state_dict(OrderedDict((k[len(KEY_PREFIX):], v)
                                          for k, v in back["state_dict"].items()), strict=True)
        reload_diff = float(np.abs(run(fresh, video)["video_embedding"] - ref["video_embedding"]).max())
        assert reload_diff == 0.0, reload_diff

        np.savez(os.path.join(opts.out, "reference.npz"),
                 video=video,
                 video_embedding=ref["video_embedding"].astype(np.float32),
                 video_embedding_float64=emb64,
                 patch_tokens=ref["patch_tokens"],
                 embedded_tokens=ref["embedded_tokens"],
                 block_outputs=ref["block_outputs"],
                 final_features=ref["final_features"],
                 rope_spatial_sin_cos=rope_sp,
                 rope_temporal_sin_cos=rope_tp)

        sms_commit = sms_commit_of(opts.sms)
        info = {
            "what": "tiny EVA02-AT video tower (authors' Eva class, run from their committed "
                    "CPython 3.12 bytecode) with randomised weights",
            "upstream": {"repo": SMS_REPO, "commit": sms_commit,
                         "pyc": {n: {"path": rel, "sha256": sha256(os.path.join(opts.sms, rel))}
                                 for n, rel in PYC.items()},
                         "pyc_original_source_path": "/home/wangxiaoqi/SMS/avion/models/{eva,rope}.py",
                         "factory": "avion.models.eva.eva02_base_patch16_clip_224"},
            "paper": "EVA02-AT (Wang, Wang, Chau), Sec. IV-A",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "timm": timm.__version__, "einops": einops.__version__,
                         "numpy": np.__version__},
            "factory_call": {"img_size": IMAGE_SIZE, "patch_size": PATCH, "embed_dim": WIDTH,
                             "depth": DEPTH, "num_heads": HEADS, "num_frames": FRAMES,
                             "output_dim": OUT_DIM, "use_flash_attn": False},
            "architecture": {
                "head_dim": WIDTH // HEADS, "grid": IMAGE_SIZE // PATCH,
                "tokens": 1 + FRAMES * (IMAGE_SIZE // PATCH) ** 2,
                "mlp": "timm SwiGLU, hidden int(64*2.6666666666666665)=170, LayerNorm(170) before fc2",
                "qkv_fused": False, "qkv_bias": "q and v only", "scale_attn_inner": True,
                "ref_feat_shape": [16, 16], "global_pool": "token", "use_fast_conv1": True,
                "norm": "timm LayerNorm eps 1e-6 everywhere", "class_token": True,
                "attention_path": "flash_attn_func (always; see generator docstring), "
                                  "CPU stub = exact softmax attention"},
            "formulas": FORMULAS,
            "checkpoint": {
                "file": "eva02at_tiny.pt",
                "layout": "{'epoch', 'state_dict', 'best_acc1'} as saved by save_on_master in "
                          "scripts/dirtrain.py / ammplus_finetune.py (their 'optimizer', 'scaler', "
                          "'args' entries omitted)",
                "key_prefix": KEY_PREFIX,
                "prefix_confirmed": "'module.' yes (DDP in both scripts, stripped with "
                                    "k.replace('module.', '') on load); 'visual.' inferred from "
                                    "AVION's CLIP wrapper and the scripts' "
                                    "'module.visual.temporal_embedding' -- no EVA wrapper is committed",
                "not_saved": "non-persistent buffers rope.pos_embed (g*g, 2*hd) and "
                             "rope.temporal_embed (T, 2*hd) = [sin | cos] tables",
                "keys": {k: list(v.shape) for k, v in state["state_dict"].items()},
                "sha256": sha256(ckpt_path)},
            "reference_npz": {
                "video": "(2, 4, 32, 32, 3) float32 ~N(0,1), channels-last; torch input is "
                         "video.transpose(0, 4, 1, 2, 3)",
                "video_embedding": "(2, 16) float32, Eva.forward output (unnormalised)",
                "video_embedding_float64": "(2, 16) same weights/input, model in float64",
                "patch_tokens": "(2, 64, 64) Eva.video_patch_embed output",
                "embedded_tokens": "(2, 65, 64) Eva._pos_embed output (cls first)",
                "block_outputs": "(2 layers, 2, 65, 64) output of each EvaBlock",
                "final_features": "(2, 65, 64) Eva.forward_features (after final LayerNorm)",
                "rope_spatial_sin_cos": "(16, 64) rope.pos_embed = [sin | cos] per patch, hd each",
                "rope_temporal_sin_cos": "(4, 64) rope.temporal_embed = [sin | cos] per frame",
                "sha256": sha256(os.path.join(opts.out, "reference.npz"))},
            "checks": {
                "flash_stub_vs_sdpa_fallback_rel": sdpa_diff,
                "numpy_float64_formulas_vs_torch_float32_rel": numpy_diff,
                "numpy_float64_formulas_vs_torch_float64_rel": numpy_diff64,
                "rope_tables_match_formulas": True,
                "checkpoint_reload_strict_max_abs_diff": reload_diff},
            "sensitivity_rel_change": sens,
            "seeds": {"torch.manual_seed (build)": 0, "randomise generator": 1,
                      "video np.random.RandomState": 0},
            "randomisation": randomise.__doc__.strip(),
            "rerun": "/work/golden/venv-eva02at/bin/python tools/golden/make_eva02at_golden.py "
                     "--sms /work/golden/SMS --out tests/data/golden/eva02at  (Python 3.12; see "
                     "the generator's docstring for the venv)",
        }
        with open(os.path.join(opts.out, "info.json"), "w") as f:
            json.dump(info, f, indent=1)
        print(json.dumps(info["checks"], indent=1))
        print(json.dumps(sens, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
