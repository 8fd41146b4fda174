"""Golden parity files for the EVA02-CLIP port, made with EVA-CLIP's own PyTorch code.

What it builds
--------------
A tiny EVA02-CLIP, random weights, float32, eval mode, built with upstream's own classes
(`eva_clip.model.CLIP` / `CustomCLIP`, exactly what `factory.create_model` builds from an
`EVA02-CLIP-*.json` config), shaped like `model_configs/EVA02-CLIP-B-16.json` but small:

  embed_dim 16
  vision: EVAVisionTransformer, 32x32 image, patch 8 (4x4 grid), width 64, 2 heads of 32,
          2 layers, mlp_ratio 2.6667 (SwiGLU hidden int(64*2.6667) = 170), rope, intp_freq,
          naiveswiglu, subln, pt_hw_seq_len 6 (!= grid 4, so RoPE's t = arange(ft)/ft*pt
          rescaling is exercised, as B/16 has pt 16 vs grid 14)
  text:   TextTransformer, context 77, vocab 1000, width 32, 2 heads, 2 layers (mlp 4x, GELU)
  xattn false and fusedLN false everywhere (xformers' memory-efficient attention and apex's
  FusedLayerNorm compute the same functions as the math path / LayerNorm used here).

Weights: torch.manual_seed(0) at construction; then every constant-initialised tensor (all
LayerNorm weights/biases, q_bias/v_bias, the zero Linear and in_proj biases) gets small random
values, and every vision Linear (head included, which upstream shrinks x0.001) is redrawn with
fan-in scale so that attention is peaked and RoPE visibly moves the output; finally every
parameter (logit_scale too) is rounded to a float16-representable value so the float16 file
below holds exactly the same numbers. RoPE buffers are left as upstream computes them.

Files written to --out (the repository keeps them in tests/data/golden/eva02_clip/):

  eva02_clip_tiny.pt              torch.save(CLIP.state_dict()): a bare state dict, 'visual.*'
                                  for the vision tower, the text tower at top level
                                  ('transformer.*', 'token_embedding.weight', ...), 'logit_scale',
                                  and the persistent RoPE buffers; float32.
  eva02_clip_tiny_custom_fp16.pt  the same weights as CustomCLIP.state_dict() ('text.*' prefix:
                                  the model upstream's README and training scripts build, with
                                  force_custom_clip=True), stored float16 like the released
                                  EVA02_CLIP_*.pt files.
  eva02_clip_train_tiny.pt        a training checkpoint as training/main.py saves it without
                                  DeepSpeed: {'epoch', 'name', 'state_dict' (CustomCLIP keys, no
                                  'module.'), 'optimizer'} after one AdamW step at lr 0 (weights
                                  unchanged, optimizer state filled), using upstream's
                                  create_optimizer and ClipLoss.
  reference.npz                   inputs, embeddings (unnormalised), logit_scale, RoPE tables and
                                  a few intermediates; also the pt_hw_seq_len == grid variant.
  info.json                       architecture facts, layouts, pickle globals, versions, rerun.

Every file is reloaded with upstream's own factory.load_checkpoint into freshly built models
(both CLIP and CustomCLIP) and must reproduce the reference embeddings exactly.

Stub: eva_clip imports torchvision at module level (utils.py, transform.py; timm does too), but
the forward pass never uses it, and PyPI's torchvision does not load with the CPU torch wheel.
So an import hook (no temporary files needed) answers every `torchvision*` import with an empty
stand-in module. apex, xformers, deepspeed are optional upstream (try/except) and not needed.

Upstream: baaivision/EVA, commit 5623d08bb08a8268c7bc18e1d9b8b4bd651fe4d9, folder EVA-CLIP/rei.

Rerun (outside the repository; the venv is throwaway):

  python3 -m venv /work/golden/venv-eva
  /work/golden/venv-eva/bin/pip install torch==2.13.0 timm einops numpy ftfy regex
  /work/golden/venv-eva/bin/pip uninstall -y torchvision   # optional: the stub replaces it
  mkdir -p /work/golden/EVA && git -C /path/to/baaivision/EVA archive \\
      5623d08bb08a8268c7bc18e1d9b8b4bd651fe4d9 EVA-CLIP/rei | tar -x -C /work/golden/EVA
  /work/golden/venv-eva/bin/python tools/golden/make_eva_clip_golden.py \\
      --eva /work/golden/EVA/EVA-CLIP/rei --out tests/data/golden/eva02_clip

The output is deterministic (CPU, fixed seeds); rerunning rewrites identical arrays.

Full-size layouts (--layouts): instead of the files above, write layout_b16.json and
layout_l14.json, the key -> shape tables of CLIP.state_dict() (eva02_clip_tiny.pt's naming,
persistent RoPE buffers included) for model_configs/EVA02-CLIP-B-16.json and
EVA02-CLIP-L-14.json exactly, xattn/fusedLN false (same parameters), built on torch's meta
device (the drop-path schedule's .item() needs a CPU torch.linspace during construction;
see write_layouts). Each is {"upstream", "model", "note", "state_dict": {key: [shape...]}},
keys in state-dict order; the meta route is first checked against eva02_clip_tiny.pt when
that file is in --out:

  /work/golden/venv-eva/bin/python tools/golden/make_eva_clip_golden.py \\
      --eva /work/golden/EVA/EVA-CLIP/rei --out tests/data/golden/eva02_clip --layouts
"""
import argparse
import copy
import importlib.abc
import importlib.machinery
import json
import os
import pickletools
import platform
import sys
import tempfile
import types
import zipfile

import numpy as np
import torch

UPSTREAM_REPO = "baaivision/EVA"
UPSTREAM_COMMIT = "5623d08bb08a8268c7bc18e1d9b8b4bd651fe4d9"

EMBED_DIM = 16
VISION_CFG = dict(  # keys and values as in model_configs/EVA02-CLIP-B-16.json, sizes shrunk
    image_size=32, patch_size=8, width=64, head_width=32, layers=2, mlp_ratio=2.6667,
    eva_model_name="eva-clip-tiny", drop_path_rate=0.0, xattn=False, fusedLN=False,
    rope=True, pt_hw_seq_len=6, intp_freq=True, naiveswiglu=True, subln=True)
TEXT_CFG = dict(context_length=77, vocab_size=1000, width=32, heads=2, layers=2,
                xattn=False, fusedLN=False)
PT_GRID = 4  # the second vision variant: pt_hw_seq_len == grid (the L/14 case, t = arange)
SOT, EOT = 998, 999  # EOT must be the largest id: the text tower pools at text.argmax(-1)
TEXT_LENGTHS = (5, 12)  # tokens between SOT and EOT, one row each


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import torchvision...` with empty packages whose attributes are inert classes."""

    @staticmethod
    def _placeholder(name):
        class _Meta(type):
            def __getattr__(cls, attr):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return _TorchvisionStub._placeholder(attr)

            def __call__(cls, *args, **kwargs):
                raise RuntimeError(f"torchvision stub: {cls.__name__} is not available")
        return _Meta(name, (), {})

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def __getattr__(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return self._placeholder(attr)
        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module):
        pass


def import_upstream(eva_path):
    sys.meta_path.insert(0, _TorchvisionStub())
    sys.path.insert(0, eva_path)
    # factory.create_model sets this for every config with a 'rope' key; with it the loader
    # drops checkpoint RoPE buffers and the vision tower takes the RoPE/patch-dropout branch.
    os.environ["RoPE"] = "1"
    import eva_clip  # noqa: F401  (prints "Please 'pip install apex/xformers'": harmless)
    from eva_clip import factory, loss, model
    return model, factory, loss


def build(model_mod, cls, seed, vision_cfg=VISION_CFG):
    torch.manual_seed(seed)
    net = getattr(model_mod, cls)(EMBED_DIM, dict(vision_cfg), dict(TEXT_CFG))
    return net.float().eval()


@torch.no_grad()
def exercise_and_round(net):
    """Give constant-initialised tensors random values, redraw the shrunk head, round to fp16."""
    gen = torch.Generator().manual_seed(1)
    for name, p in net.named_parameters():
        if name == "logit_scale":
            continue  # keep upstream's log(1/0.07)
        if p.numel() > 1 and torch.all(p == p.flatten()[0]):  # ones (LN weight) or zeros
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    # Upstream's vision init (trunc_normal std 0.02) leaves attention almost uniform at this
    # width, so RoPE and the blocks would hardly move the output: redraw every vision Linear
    # as N(0, 1/fan_in), q and k x1.5 for peaked attention. The head also needs it: upstream
    # multiplies its init by init_scale=0.001.
    for name, mod in net.visual.named_modules():
        if isinstance(mod, torch.nn.Linear):
            gain = 1.5 if name.endswith(("q_proj", "k_proj")) else 1.0
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen)
                             * gain * mod.in_features ** -0.5)
    net.visual.head.bias.copy_(0.1 * torch.randn(net.visual.head.bias.shape, generator=gen))
    for p in net.parameters():  # so the float16 file carries exactly these numbers
        p.copy_(p.half().float())


def make_inputs():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, VISION_CFG["image_size"], VISION_CFG["image_size"], 3))
    ids = np.zeros((2, TEXT_CFG["context_length"]), np.int32)
    for row, n in enumerate(TEXT_LENGTHS):
        ids[row, :n + 2] = [SOT, *rng.integers(1, SOT, n), EOT]
    return image.astype(np.float32), ids


@torch.no_grad()
def encode(net, image, ids):
    img = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW for EVA
    txt = torch.from_numpy(ids).long()
    return net.encode_image(img).numpy(), net.encode_text(txt).numpy()


@torch.no_grad()
def intermediates(net, image, ids):
    """Activations useful for localising a mismatch in a port (CLIP layout model)."""
    out, hooks = {}, []
    vis = net.visual

    def keep(key, fn=lambda o: o):
        return lambda mod, args, res: out.__setitem__(key, fn(res).numpy().copy())

    hooks.append(vis.blocks[0].register_forward_pre_hook(
        lambda mod, args: out.__setitem__("vision_tokens_in", args[0].numpy().copy())))
    for i, blk in enumerate(vis.blocks):
        hooks.append(blk.register_forward_hook(keep(f"vision_block{i}_out")))
    hooks.append(vis.norm.register_forward_hook(keep("vision_cls_pre_head", lambda o: o[:, 0])))
    for i, blk in enumerate(net.transformer.resblocks):  # text runs sequence-first (L, N, D)
        hooks.append(blk.register_forward_hook(keep(f"text_block{i}_out",
                                                    lambda o: o.permute(1, 0, 2))))
    hooks.append(net.ln_final.register_forward_hook(keep("text_ln_final_out")))
    encode(net, image, ids)
    for h in hooks:
        h.remove()
    return out


def pickle_globals(path):
    """(module, name) pairs the file's data.pkl asks the unpickler for."""
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        data = zf.read(pkl)
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        if isinstance(arg, str):
            strings.append(arg)
    return sorted(".".join(g) for g in found)


def key_table(sd):
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()}


def check_loads(model_mod, factory, path, classes, image, ids, want_img, want_txt):
    """Reload with upstream's own loader into freshly built (differently seeded) models."""
    for cls in classes:
        net = build(model_mod, cls, seed=7)
        res = factory.load_checkpoint(net, path, strict=False)  # as create_model calls it
        bad_missing = [k for k in res.missing_keys if "rope.freqs_" not in k]
        assert not bad_missing and not res.unexpected_keys, (path, cls, res)
        img, txt = encode(net.eval(), image, ids)
        assert np.array_equal(img, want_img) and np.array_equal(txt, want_txt), (path, cls)
    torch.load(path, map_location="cpu", weights_only=True)  # loads without custom classes


def train_checkpoint(loss_mod, net, image, ids):
    """One AdamW step as training/main.py + train.py do it, at lr 0 so weights stay put."""
    from training.optim import create_optimizer
    from training.params import parse_args
    args, _ = parse_args(["--model", "EVA02-CLIP-B-16", "--name", "eva02_clip_tiny",
                          "--precision", "fp32", "--lr", "0", "--force-custom-clip"])
    args.rank = args.local_rank = 0  # main.py takes these from the (absent) launcher
    before = copy.deepcopy(net.state_dict())
    optimizer = create_optimizer(args, net)
    net.train()
    img = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
    txt = torch.from_numpy(ids).long()
    image_features, text_features, logit_scale = net(img, txt)
    total_loss, _ = loss_mod.ClipLoss()(image_features, text_features, logit_scale)
    optimizer.zero_grad()
    total_loss.backward()
    optimizer.step()
    net.eval()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "lr 0 step changed weights"
    return {  # main.py's checkpoint_dict; no 'scaler' (only saved for --precision amp)
        "epoch": 1,
        "name": args.name,
        "state_dict": net.state_dict(),  # model_without_ddp.state_dict(): no 'module.'
        "optimizer": optimizer.state_dict(),
    }


def rope_table(net):
    rope = net.visual.rope
    return rope.freqs_cos.numpy().copy(), rope.freqs_sin.numpy().copy()


# --layouts: full-size key -> shape tables, from upstream's own model configs.
LAYOUT_CONFIGS = {"b16": "EVA02-CLIP-B-16", "l14": "EVA02-CLIP-L-14"}


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


def write_layouts(model_mod, factory, out):
    """layout_{b16,l14}.json: CLIP.state_dict() names and shapes of the released sizes.

    The configs are model_configs/EVA02-CLIP-{B-16,L-14}.json as factory.get_model_config
    returns them, with every xattn / fusedLN set False (xformers attention and apex
    FusedLayerNorm hold the same parameters under the same names as the math path and
    LayerNorm); built as create_model builds them (CLIP(**model_cfg)), on torch's meta
    device: no memory, no values. Upstream's inits (trunc_normal_, the RoPE tables'
    arange/einsum/cos/sin, fix_init_weight's div_) run on meta tensors unchanged; the one
    exception is EVAVisionTransformer's drop-path schedule, ``[x.item() for x in
    torch.linspace(0, drop_path_rate, depth)]`` (.item() cannot read a meta tensor), so
    during construction torch.linspace is made to return a (tiny) CPU tensor; it holds no
    weights and only feeds DropPath rates (all 0 here). Naming is eva02_clip_tiny.pt's (bare CLIP state dict, text tower
    at top level), persistent RoPE buffers included.
    """
    tiny_path = os.path.join(out, "eva02_clip_tiny.pt")
    linspace = torch.linspace

    def cpu_linspace(*args, **kwargs):  # see the docstring: the drop-path rates' .item()
        return linspace(*args, **{**kwargs, "device": "cpu"})
    torch.linspace = cpu_linspace
    try:
        _write_layouts(model_mod, factory, out, tiny_path)
    finally:
        torch.linspace = linspace


def _write_layouts(model_mod, factory, out, tiny_path):
    with torch.device("meta"):
        if os.path.exists(tiny_path):  # self-check: the meta route gives the tiny file's table
            tiny = build(model_mod, "CLIP", seed=0)
            saved = torch.load(tiny_path, map_location="cpu", weights_only=True)
            assert ([(k, list(v.shape)) for k, v in tiny.state_dict().items()]
                    == [(k, list(v.shape)) for k, v in saved.items()]), tiny_path
            print("meta-built tiny layout matches", tiny_path)
        for size, name in LAYOUT_CONFIGS.items():
            cfg = factory.get_model_config(name)
            assert cfg is not None, name
            for tower in ("vision_cfg", "text_cfg"):
                cfg[tower]["xattn"] = False
                cfg[tower]["fusedLN"] = False
            net = model_mod.CLIP(**cfg)
            sd = net.state_dict()
            params = dict(net.named_parameters())
            buffers = [k for k in sd if k not in params]
            assert all(k.endswith(("rope.freqs_cos", "rope.freqs_sin")) for k in buffers), buffers
            n_params = sum(p.numel() for p in params.values())
            v, t = cfg["vision_cfg"], cfg["text_cfg"]
            blocks = {k.split(".")[2] for k in sd if k.startswith("visual.blocks.")}
            assert len(blocks) == v["layers"]
            grid = v["image_size"] // v["patch_size"]
            layout = {
                "upstream": f"https://github.com/{UPSTREAM_REPO} {UPSTREAM_COMMIT} (EVA-CLIP/rei)",
                "model": (f"EVA-CLIP {name} (eva_clip.model.CLIP from model_configs/{name}.json): "
                          f"EVAVisionTransformer {v['image_size']}px patch {v['patch_size']} width "
                          f"{v['width']} x {v['layers']} layers, head width {v['head_width']}, "
                          f"SwiGLU mlp_ratio {v['mlp_ratio']}, RoPE pt_hw_seq_len "
                          f"{v['pt_hw_seq_len']}; TextTransformer width {t['width']} x "
                          f"{t['layers']} layers {t['heads']} heads, vocab {t['vocab_size']}, "
                          f"context {t['context_length']}; embed_dim {cfg['embed_dim']}"),
                "note": (f"torch.save(CLIP.state_dict()) naming, as eva02_clip_tiny.pt; config "
                         f"exactly as {name}.json except xattn/fusedLN false (same parameters); "
                         f"built on the meta device; {n_params} parameters plus {len(buffers)} "
                         f"persistent RoPE buffers ({grid}*{grid}, head_width) "
                         f"(visual.rope.freqs_cos/sin and the same shared tables under every "
                         f"visual.blocks.N.attn.rope), which upstream's loader deletes and "
                         f"recomputes"),
                "state_dict": {k: list(x.shape) for k, x in sd.items()},
            }
            path = os.path.join(out, f"layout_{size}.json")
            dump_layout(path, layout)
            print(f"{os.path.basename(path)}: {len(sd)} keys ({len(buffers)} buffers), "
                  f"{n_params} parameters, {len(blocks)} vision blocks")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eva", required=True, help="path to an export of EVA-CLIP/rei")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--layouts", action="store_true",
                    help="instead of the tiny golden files, write layout_{b16,l14}.json: the "
                         "full-size state dict key -> shape tables (meta device)")
    a = ap.parse_args()
    eva_path, out = os.path.abspath(a.eva), os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)  # one thread: the same reduction order on every machine
    model_mod, factory, loss_mod = import_upstream(eva_path)
    if a.layouts:
        write_layouts(model_mod, factory, out)
        return

    # 1. the model (B-like: pt 6 != grid 4) and its reference outputs
    net = build(model_mod, "CLIP", seed=0)
    exercise_and_round(net)
    image, ids = make_inputs()
    img_emb, txt_emb = encode(net, image, ids)
    acts = intermediates(net, image, ids)
    cos6, sin6 = rope_table(net)

    # 2. the L-like variant: pt_hw_seq_len == grid; the same weights (RoPE buffers aside)
    vcfg4 = dict(VISION_CFG, pt_hw_seq_len=PT_GRID)
    net4 = build(model_mod, "CLIP", seed=0, vision_cfg=vcfg4)
    sd = {k: v for k, v in net.state_dict().items() if "rope.freqs_" not in k}
    res = net4.load_state_dict(sd, strict=False)
    assert all("rope.freqs_" in k for k in res.missing_keys) and not res.unexpected_keys
    img_emb4, txt_emb4 = encode(net4, image, ids)
    assert np.array_equal(txt_emb4, txt_emb)
    cos4, sin4 = rope_table(net4)

    # 3. the files
    paths = {n: os.path.join(out, n) for n in (
        "eva02_clip_tiny.pt", "eva02_clip_tiny_custom_fp16.pt", "eva02_clip_train_tiny.pt")}
    torch.save(net.state_dict(), paths["eva02_clip_tiny.pt"])

    custom = build(model_mod, "CustomCLIP", seed=7)  # other seed: the load must overwrite all
    factory.load_checkpoint(custom, paths["eva02_clip_tiny.pt"], strict=False)
    assert np.array_equal(encode(custom, image, ids)[1], txt_emb)
    torch.save(copy.deepcopy(custom).half().state_dict(), paths["eva02_clip_tiny_custom_fp16.pt"])
    with tempfile.TemporaryDirectory() as tmp:  # the step needs a fresh model to own the grads
        tmp_path = os.path.join(tmp, "w.pt")
        torch.save(custom.state_dict(), tmp_path)
        trainee = build(model_mod, "CustomCLIP", seed=7)
        factory.load_checkpoint(trainee, tmp_path, strict=False)
    torch.save(train_checkpoint(loss_mod, trainee, image, ids),
               paths["eva02_clip_train_tiny.pt"])

    # A CLIP-layout file loads into both classes (the loader renames it for CustomCLIP); a
    # 'text.*' file only into CustomCLIP: load_checkpoint never renames 'text.*' back, so a
    # CLIP model would keep its random text tower (strict=False hides it).
    for name, p in paths.items():
        classes = ("CLIP", "CustomCLIP") if name == "eva02_clip_tiny.pt" else ("CustomCLIP",)
        check_loads(model_mod, factory, p, classes, image, ids, img_emb, txt_emb)

    np.savez(
        os.path.join(out, "reference.npz"),
        image=image, ids=ids,
        image_embedding=img_emb, text_embedding=txt_emb,
        logit_scale=np.float32(net.logit_scale.item()),
        rope_freqs_cos=cos6, rope_freqs_sin=sin6,
        image_embedding_pt4=img_emb4, rope_freqs_cos_pt4=cos4, rope_freqs_sin_pt4=sin4,
        **acts)

    # 4. info.json
    train = torch.load(paths["eva02_clip_train_tiny.pt"], map_location="cpu", weights_only=True)
    files = {}
    for name, p in paths.items():
        obj = torch.load(p, map_location="cpu", weights_only=True)
        files[name] = {
            "top_level": (sorted(obj.keys()) if name == "eva02_clip_train_tiny.pt"
                          else "bare state dict (collections.OrderedDict with _metadata)"),
            "pickle_globals": pickle_globals(p),
            "bytes": os.path.getsize(p),
        }
    files["eva02_clip_tiny.pt"]["keys"] = key_table(net.state_dict())
    files["eva02_clip_tiny_custom_fp16.pt"]["keys"] = key_table(
        torch.load(paths["eva02_clip_tiny_custom_fp16.pt"], weights_only=True))
    files["eva02_clip_train_tiny.pt"]["optimizer_param_groups"] = [
        {k: v for k, v in g.items() if k != "params"} | {"n_params": len(g["params"])}
        for g in train["optimizer"]["param_groups"]]
    info = {
        "upstream": {"repo": UPSTREAM_REPO, "commit": UPSTREAM_COMMIT, "path": "EVA-CLIP/rei"},
        "generator": "tools/golden/make_eva_clip_golden.py",
        "rerun": [  # from the repository root; the venv and the export live outside it
            "python3 -m venv /work/golden/venv-eva",
            "/work/golden/venv-eva/bin/pip install torch==2.13.0 timm einops numpy ftfy regex",
            "mkdir -p /work/golden/EVA && git -C /path/to/baaivision/EVA archive "
            f"{UPSTREAM_COMMIT} EVA-CLIP/rei | tar -x -C /work/golden/EVA",
            "/work/golden/venv-eva/bin/python tools/golden/make_eva_clip_golden.py "
            "--eva /work/golden/EVA/EVA-CLIP/rei --out tests/data/golden/eva02_clip"],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, **_pkg_versions("timm", "einops")},
        "config": {"embed_dim": EMBED_DIM, "vision_cfg": VISION_CFG, "text_cfg": TEXT_CFG,
                   "variant_pt4": {"vision_cfg.pt_hw_seq_len": PT_GRID,
                                   "outputs": "image_embedding_pt4, rope_freqs_*_pt4",
                                   "weights": "those of eva02_clip_tiny.pt; only the RoPE "
                                              "buffers differ (recomputed from the config)"}},
        "weights": ("torch.manual_seed(0) at construction; then constant tensors (LayerNorm "
                    "weights/biases, q_bias, v_bias, zero biases) += 0.1*randn (Generator seed "
                    "1); every vision nn.Linear weight redrawn N(0, 1/fan_in) (q_proj, k_proj "
                    "x1.5), visual.head.bias 0.1*N(0,1); every parameter rounded to a "
                    "float16-representable float32 (logit_scale too: 2.66015625); RoPE buffers "
                    "untouched"),
        "inputs": {"image": "float32 (2, 32, 32, 3) NHWC ~N(0,1), already normalised; EVA gets "
                            "image.transpose(0, 3, 1, 2)",
                   "ids": f"int32 (2, 77): [SOT={SOT}, tokens in [1, {SOT}), EOT={EOT}, 0...], "
                          f"{TEXT_LENGTHS} tokens between SOT and EOT"},
        "outputs": {"image_embedding": "model.encode_image(image), unnormalised (2, 16)",
                    "text_embedding": "model.encode_text(ids), unnormalised (2, 16)",
                    "logit_scale": "the raw parameter: upstream's log(1/0.07) rounded to float16, "
                                   "2.66015625; forward uses exp()",
                    "intermediates": sorted(acts)},
        "architecture": ARCHITECTURE,
        "layouts": LAYOUTS,
        "files": files,
    }
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=False)
        f.write("\n")
    for name in sorted(os.listdir(out)):
        print(f"{os.path.getsize(os.path.join(out, name)):>9}  {name}")


def _pkg_versions(*names):
    from importlib.metadata import version
    return {n: version(n) for n in names}


ARCHITECTURE = {
    "vision (eva_vit_model.EVAVisionTransformer)": {
        "norm": "every vision LayerNorm is LayerNorm(eps=1e-6) (model.py passes "
                "partial(LayerNorm, eps=1e-6); also inner_attn_ln and ffn_ln), affine",
        "patch_embed": "Conv2d(3, width, kernel=stride=patch) WITH bias; tokens flattened "
                       "row-major (index = row*grid + col)",
        "tokens": "cat(cls_token, patches) + pos_embed (1, grid*grid+1, width) on all tokens; "
                  "no ln_pre; pos_drop/patch_dropout are identities at eval",
        "block": "pre-norm: x += attn(norm1(x)); x += mlp(norm2(x)); no layer scale "
                 "(ls_init_value None), no postnorm, drop_path 0",
        "attention": "subln=True: q_proj, k_proj, v_proj Linear(width, width, bias=False) + "
                     "separate q_bias and v_bias params (no k bias); heads split "
                     "(B, N, H, hd) -> (B, H, N, hd); RoPE on q and k of tokens 1: (class token "
                     "unrotated); q *= hd**-0.5; softmax(q k^T) v; heads merged; "
                     "inner_attn_ln LayerNorm(width, eps 1e-6) BEFORE proj; proj Linear with bias",
        "mlp": "SwiGLU (naiveswiglu): w1, w2 Linear(width, hidden) with bias, "
               "hidden = int(width * 2.6667) (tiny 170, B 2048, L 2730); silu(w1 x) * (w2 x); "
               "ffn_ln LayerNorm(hidden, eps 1e-6) (subln); w3 Linear(hidden, width) with bias",
        "head": "x = norm(x) (LayerNorm eps 1e-6, all tokens), take x[:, 0], head Linear(width, "
                "embed_dim) WITH bias (use_mean_pooling False: fc_norm None)",
        "activation": "SiLU inside SwiGLU (the config's quick_gelu does not reach it)",
    },
    "rope (rope.VisionRotaryEmbeddingFast)": {
        "dim": "VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len=pt_hw_seq_len, "
               "ft_seq_len=grid if intp_freq else None)",
        "freqs": "f_j = 1 / 10000 ** (2j / (head_dim//2)), j = 0 .. head_dim//4 - 1 "
                 "(torch.arange(0, d, 2)[:d//2].float() / d with d = head_dim//2)",
        "positions": "t = arange(ft) / ft * pt (ft = grid; pt = pt_hw_seq_len; t = arange when "
                     "pt == ft); angle(t, j) = t * f_j",
        "interleave": "each angle repeated twice, adjacent: [a0, a0, a1, a1, ...] "
                      "(einops repeat '... n -> ... (n r)', r=2), head_dim//2 per axis",
        "layout": "table (grid, grid, head_dim): [..., :head_dim//2] = row angles, "
                  "[..., head_dim//2:] = column angles; freqs_cos/freqs_sin = cos/sin of it "
                  "viewed (grid*grid, head_dim), row-major over (row, col)",
        "apply": "x' = x * cos + rotate_half(x) * sin, rotate_half pairs adjacent elements: "
                 "(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...); over the whole head_dim",
        "tokens": "patch tokens only (q[:, :, 1:], k[:, :, 1:]); the class token is untouched; "
                  "v never rotated",
        "buffers": "persistent freqs_cos / freqs_sin, float32 (grid*grid, head_dim); one module "
                   "shared by visual.rope and every visual.blocks.N.attn.rope, so the state dict "
                   "repeats it under each name; upstream's loader DELETES them from checkpoints "
                   "(os.environ RoPE=1, set by create_model) and keeps the recomputed ones",
    },
    "text (transformer.TextTransformer)": {
        "norm": "LayerNorm default eps 1e-5 (ln_1, ln_2, ln_final); apex FusedLayerNorm "
                "(fusedLN true in the released configs) also defaults to 1e-5",
        "embedding": "token_embedding(ids) + positional_embedding (77, width)",
        "block": "pre-norm: x += attn(ln_1(x), causal mask); x += mlp(ln_2(x)); no layer scale",
        "attention": "nn.MultiheadAttention(width, heads) (or transformer.Attention when xattn, "
                     "same key names and function): fused in_proj_weight (3*width, width) + "
                     "in_proj_bias (3*width) in q, k, v order; out_proj Linear with bias; "
                     "scale head_dim**-0.5; causal additive mask (-inf above the diagonal)",
        "mlp": "c_fc Linear(width, 4*width) -> nn.GELU() (exact erf GELU, NOT QuickGELU: "
               "EVA02 configs have no quick_gelu) -> c_proj Linear(4*width, width)",
        "pool": "ln_final on all tokens, take the row at ids.argmax(-1) (first max: EOT), "
                "@ text_projection (width, embed_dim), no bias",
    },
    "clip": "logit_scale parameter = log(1/0.07); forward normalises both embeddings and "
            "returns logit_scale.exp(); encode_image/encode_text return unnormalised vectors",
}

LAYOUTS = {
    "release_loader": ("factory.load_checkpoint -> load_state_dict(model_key='model|module|"
                       "state_dict'): torch.load; if the object is a dict holding 'model', "
                       "'module' or 'state_dict' that value is used (else the object itself); "
                       "a 'module.' prefix (on the first key) is stripped from all keys; with "
                       "RoPE=1 every *freqs_cos / *freqs_sin key is deleted. Then a CLIP-layout "
                       "dict loaded into CustomCLIP is renamed with model."
                       "convert_to_custom_text_state_dict (text keys and logit_scale get "
                       "'text.', then 'text.logit_scale' is put back as 'logit_scale'); "
                       "visual.pos_embed is bicubically resized if the grid differs; "
                       "load_state_dict(strict=False)."),
    "released_files": ("EVA02_CLIP_B_psz16_s8B.pt / EVA02_CLIP_L_psz14_s4B.pt are float16 "
                       "(README: 300MB for 149M, 856MB for 428M params) bare state dicts with "
                       "'visual.' keys and RoPE buffers (timm's eva checkpoint_filter_fn skips "
                       "their 'rope' keys). Whether their text tower is stored at top level "
                       "(CLIP) or under 'text.' (CustomCLIP, the model upstream's README and "
                       "training scripts build with force_custom_clip) could not be read here: "
                       "both forms are provided and upstream's loader accepts both."),
    "training_checkpoint": ("training/main.py without DeepSpeed: torch.save({'epoch', 'name', "
                            "'state_dict': model_without_ddp.state_dict(), 'optimizer': "
                            "optimizer.state_dict()} [+ 'scaler' for --precision amp]) as "
                            "checkpoints/epoch_N.pt / epoch_latest.pt; the keys carry no "
                            "'module.' (the unwrapped model is saved). With --enable-deepspeed "
                            "(what the README's commands use) DeepSpeed's save_checkpoint "
                            "writes checkpoints/epoch_N/mp_rank_00_model_states.pt holding the "
                            "weights under 'module' (not reproduced here: no DeepSpeed)."),
}


if __name__ == "__main__":
    main()
