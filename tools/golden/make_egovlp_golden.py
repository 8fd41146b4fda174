"""Generate a tiny EgoVLP golden checkpoint, reference embeddings and the full-size layout.

What it builds
--------------
A tiny ``model.model.FrozenInTime`` made by EgoVLP's *own* ``FrozenInTime.__init__``
(showlab/EgoVLP, model/model.py) from EgoVLP's own classes, and run through its
own ``compute_video`` / ``compute_text``:

* video tower: ``model.video_transformer.SpaceTimeTransformer(img_size=32,
  patch_size=8, embed_dim=32, depth=2, num_heads=4, num_frames=4,
  time_init='zeros', attention_style='frozen-in-time')``; upstream defaults
  otherwise (qkv_bias=True, mlp_ratio 4, LayerNorm eps 1e-6, nn.GELU exact,
  no dropout / drop-path). FrozenInTime sets ``head``, ``pre_logits`` (and
  ``fc``) to nn.Identity, so the tower returns ``norm(x)[:, 0]`` (32-d).
* text tower: ``transformers.DistilBertModel(DistilBertConfig(vocab_size=64,
  dim=32, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=77,
  activation='gelu', dropout=0.0, attention_dropout=0.0))`` with the eager
  attention kernel (the only one transformers 4.2.1, EgoVLP's pin, has).
* projections, built by FrozenInTime (projection='minimal', projection_dim=16):
  ``txt_proj = Sequential(ReLU, Linear(32, 16))``, ``vid_proj = Sequential(Linear(32, 16))``.

Every parameter is then redrawn (``randomise``), the model takes one real
training step of run/train_epic.py + trainer/trainer_epic.py (see below) and
is saved by the trainer's own ``_save_checkpoint``. All reference outputs are
computed from the *saved file*, loaded the way run/test_epic.py loads a
checkpoint (``state_dict_data_parallel_fix`` + ``load_state_dict(strict=True)``).

Upstream: https://github.com/showlab/EgoVLP at commit
928406c2d5d42b4d76421f6500e43feb61fc9d68 (read from ``--egovlp``'s .git when it
is a checkout, else ``--egovlp-commit``; recorded in info.json).

Monkeypatches (all undone afterwards; each is recorded in info.json)
--------------------------------------------------------------------
FrozenInTime.__init__ hard-codes the base sizes and two downloads. So that its
own code still assembles the model, three names are patched while it runs:

1. ``model.model.SpaceTimeTransformer`` -> ``functools.partial(
   SpaceTimeTransformer, img_size=32, patch_size=8, embed_dim=32, depth=2,
   num_heads=4)``. __init__ calls it with num_frames / time_init /
   attention_style from video_params, as upstream.
2. ``model.model.AutoModel`` -> an object whose ``from_pretrained(name, **kw)``
   returns the tiny ``DistilBertModel`` above (upstream asks for
   'distilbert-base-uncased' from the hub; the call's arguments are recorded).
3. ``torch.load`` -> for ``pretrained/jx_vit_base_p16_224-80ecf9dd.pth`` (the
   timm ImageNet ViT-B/16 init that __init__ loads unconditionally) it returns
   the state_dict of a seeded tiny ``timm.models.vision_transformer.
   VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
   num_heads=4)``, which __init__ then pushes through
   ``state_dict_data_parallel_fix`` and ``load_state_dict(strict=False)`` as it
   does the real file (these values are overwritten by ``randomise`` anyway;
   the keys it covers are recorded). Any other path (the ``load_checkpoint``
   branch, used for the 8-frame inflation below) goes to the real torch.load
   with ``map_location='cpu', weights_only=False``: upstream asks for
   ``map_location='cuda:{LOCAL_RANK}'`` and, on torch >= 2.6, would get
   torch's default weights_only=True, which refuses EgoVLP's own checkpoints
   (the 'config' entry, see below). ``LOCAL_RANK=0`` is put in the environment
   as torch.distributed.launch would.

For the full-size layout the same three patches are used with the upstream
sizes (no partial), ``DistilBertModel(DistilBertConfig())`` and a timm
``vit_base_patch16_224`` state dict, on CPU (not the meta device:
SpaceTimeTransformer.__init__ calls ``.item()`` on a ``torch.linspace``, which
meta tensors refuse); only names and shapes are written.

Two more, for determinism / old APIs:

4. ``parse_config.datetime`` -> a datetime whose ``now()`` is fixed at
   2022-10-01 12:00, so ConfigParser's timestamped save dirs
   (``results/EpicKitchens_MIR_4f/models/1001_12``), which are pickled into the
   checkpoint, do not change from run to run.
5. The optimizer: run/train_epic.py builds it as
   ``config.initialize('optimizer', transformers, trainable_params)``, i.e.
   ``transformers.AdamW`` (lr 3e-5 from configs/ft/epic.json), which current
   transformers no longer has. The ``AdamW`` class of transformers 4.2.1
   (EgoVLP's environment.yml pin) is therefore read from that release's wheel
   (``--transformers-wheel``; ``optimization.py``, extracted with ``ast``) and
   handed to the same ``config.initialize`` as a stand-in ``transformers``
   module. Its state_dict is what EgoVLP checkpoints hold: per-parameter
   ``{'step': int, 'exp_avg', 'exp_avg_sq'}`` and param group keys
   lr / betas / eps / weight_decay / correct_bias.

No stub modules are needed: the packages EgoVLP imports at module level
(base/ pulls in av, cv2, decord, ffmpeg; utils/ humanize, psutil; trainer/
pandas, sklearn, scipy, ipdb) are installed in the venv (see Rerun).

The training step and the checkpoint
-------------------------------------
* ``config``: a real ``parse_config.ConfigParser``, made by running the
  ``if __name__ == '__main__':`` block of run/train_epic.py (extracted with
  ``ast``, up to ``config = ConfigParser(args, options)``) on the README's
  command line ``run/train_epic.py --local_rank=0 --config configs/ft/epic.json``
  with torch.distributed.launch's environment (MASTER_ADDR=127.0.0.1,
  MASTER_PORT=8081, WORLD_SIZE=1, RANK=0, LOCAL_RANK=0), in a temporary working
  directory that links EgoVLP's configs/ and logger/ (ConfigParser creates its
  results/ dirs and log files there). It is configs/ft/epic.json unchanged, so
  it describes the full-size 16-frame EK-100 run, not the tiny model: read sizes
  from tensor shapes, never from the config.
* One iteration of ``Multi_Trainer_dist_MIR._train_epoch``: the model wrapped
  in a real ``DistributedDataParallel(find_unused_parameters=True)`` (gloo,
  world size 1, so the keys carry ``module.``), forward on
  ``{'video', 'text': {'input_ids', 'attention_mask'}}``, the trainer's own
  ``AllGather_multi``, ``sim_matrix``, the config's ``MaxMarginRankingLoss
  (margin 0.2)``, backward, AdamW step; then the trainer's
  ``_adjust_learning_rate`` for epoch 1 (lr -> learning_rate1 = 2e-4), as at
  the end of the epoch.
* ``Multi_BaseTrainer_dist._save_checkpoint(epoch=1, save_best=True)`` writes
  ``{'arch', 'epoch', 'state_dict', 'optimizer', 'monitor_best', 'config'}``
  with plain torch.save. ``arch`` is ``type(self.model).__name__`` =
  'DistributedDataParallel'. ``monitor_best`` = 0.0: trainer_epic's
  ``_valid_epoch`` never adds to ``total_val_loss``, so 'val_loss_0' is always
  0.0 and every epoch counts as best for 'min val_loss_0'.

Files written to ``--out``
--------------------------
* ``egovlp_tiny.pth``   the checkpoint above
* ``reference.npz``     inputs and outputs (listed in info.json['reference'])
* ``layout_b16.json``   key -> shape table of the full-size EgoVLP checkpoint
* ``info.json``         provenance, architecture, patches, checks, how to rerun

An independent float64 NumPy forward pass (``np_video_tower``,
``np_distilbert``), written from the formulas and not from upstream code, is
checked against the torch outputs (float32, and a float64 copy of the model),
and every parameter tensor is checked to move the outputs when perturbed
(the temporal attention included; DistilBERT's k_lin.bias is the only
exception, cancelled by softmax by construction).

Rerun
-----
::

    python3 -m venv /work/golden/venv-egovlp
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= /work/golden/venv-egovlp/bin/pip install \\
        torch==2.13.0 torchvision==0.28.0 timm einops numpy transformers==5.25.0 \\
        humanize psutil av opencv-python-headless decord ffmpeg-python \\
        pandas scipy scikit-learn ipdb
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= /work/golden/venv-egovlp/bin/pip download \\
        transformers==4.2.1 --no-deps -d /work/golden
    mkdir -p /work/golden/EgoVLP
    git -C /work/.mirror/showlab+EgoVLP/repo archive 928406c2d5d42b4d76421f6500e43feb61fc9d68 \\
        | tar -x -C /work/golden/EgoVLP
    /work/golden/venv-egovlp/bin/python tools/golden/make_egovlp_golden.py \\
        --egovlp /work/golden/EgoVLP --out tests/data/golden/egovlp \\
        --transformers-wheel /work/golden/transformers-4.2.1-py3-none-any.whl

(plain PyPI, as for make_avion_golden.py: PyPI's CUDA builds of torch and
torchvision load together and run on CPU; the venv is several GB.) The files
were made with transformers 5.25.0, timm 1.0.31, numpy 2.4.6, Python 3.11.7.
Everything is seeded; rerunning gives identical tensors (and, with the same
torch version, identical files).
"""

import argparse
import ast
import contextlib
import copy
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import pickletools
import platform
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from collections import OrderedDict

import numpy as np

EGOVLP_REPO = "https://github.com/showlab/EgoVLP"
EGOVLP_COMMIT = "928406c2d5d42b4d76421f6500e43feb61fc9d68"
TRANSFORMERS_PIN = "4.2.1"  # EgoVLP environment.yml
VIT_INIT_PATH = "pretrained/jx_vit_base_p16_224-80ecf9dd.pth"

# Tiny architecture.
IMG, PATCH, V_DIM, V_DEPTH, V_HEADS, FRAMES = 32, 8, 32, 2, 4, 4
TINY_VIDEO = {'img_size': IMG, 'patch_size': PATCH, 'embed_dim': V_DIM, 'depth': V_DEPTH,
              'num_heads': V_HEADS}
TINY_TEXT = {'vocab_size': 64, 'dim': 32, 'n_layers': 2, 'n_heads': 4, 'hidden_dim': 128,
             'max_position_embeddings': 77, 'activation': 'gelu', 'dropout': 0.0,
             'attention_dropout': 0.0}
PROJ = 16
V_EPS, T_EPS = 1e-6, 1e-12
BATCH, TEXT_LEN = 2, 12
TEXT_LENGTHS = (12, 8, 5)  # tokens incl. [CLS] and [SEP]; the first row is unpadded
CLS_ID, SEP_ID, PAD_ID = 1, 2, 0
INFLATED_FRAMES = 8

# Full-size layout: configs/pt/egoclip.json and configs/ft/epic.json both build
# FrozenInTime with video_params num_frames=16 (pretraining feeds 4 frames into
# the 16-frame model), and EgoVLP_PT_BEST's temporal_embed is 16 frames
# (showlab/EgoVLP issues #4, #25).
LAYOUT_FRAMES = 16
LAYOUT_PROJ = 256

FROZEN_NOW = _dt.datetime(2022, 10, 1, 12, 0, 0)
LAUNCH_ENV = {'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '8081', 'WORLD_SIZE': '1',
              'RANK': '0', 'LOCAL_RANK': '0'}
LAUNCH_ARGV = ['run/train_epic.py', '--local_rank=0', '--config', 'configs/ft/epic.json']


def video_params(num_frames):
    """configs/ft/epic.json's video_params with the tiny clip length."""
    return {'model': 'SpaceTimeTransformer', 'arch_config': 'base_patch16_224',
            'num_frames': num_frames, 'pretrained': True, 'time_init': 'zeros'}


TEXT_PARAMS = {'model': 'distilbert-base-uncased', 'pretrained': True, 'input': 'text'}


# ---- monkeypatches around FrozenInTime.__init__ ----------------------------
class PatchLog:
    def __init__(self):
        self.auto_model_calls = []
        self.torch_load_calls = []
        self.vit_init_keys = None


@contextlib.contextmanager
def egovlp_patches(log, tiny=True):
    """Patches 1-3 of the module docstring, undone on exit."""
    import model.model as mm
    import timm.models.vision_transformer as tvit
    import torch
    import transformers
    from model.video_transformer import SpaceTimeTransformer

    real_load = torch.load
    saved = (mm.SpaceTimeTransformer, mm.AutoModel, torch.load, os.environ.get('LOCAL_RANK'))

    class TinyAutoModel:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            log.auto_model_calls.append({'name': name, 'args': list(args),
                                         'kwargs': {k: str(v) for k, v in kwargs.items()}})
            if tiny:
                cfg = transformers.DistilBertConfig(**TINY_TEXT, attn_implementation='eager')
            else:
                cfg = transformers.DistilBertConfig(attn_implementation='eager')
            return transformers.DistilBertModel(cfg)

    def patched_load(f, *args, **kwargs):
        shown = os.path.basename(str(f)) if os.path.isabs(str(f)) else str(f)
        log.torch_load_calls.append({'path': shown, 'args': [str(a) for a in args],
                                     'kwargs': {k: str(v) for k, v in kwargs.items()}})
        if str(f) == VIT_INIT_PATH:
            if tiny:
                vit = tvit.VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=V_DIM,
                                             depth=V_DEPTH, num_heads=V_HEADS)
            else:
                vit = tvit.vit_base_patch16_224(pretrained=False)
            sd = vit.state_dict()
            log.vit_init_keys = list(sd)
            return sd
        return real_load(f, map_location='cpu', weights_only=False)

    mm.SpaceTimeTransformer = (functools.partial(SpaceTimeTransformer, **TINY_VIDEO)
                               if tiny else SpaceTimeTransformer)
    mm.AutoModel = TinyAutoModel
    torch.load = patched_load
    os.environ['LOCAL_RANK'] = '0'
    try:
        yield
    finally:
        mm.SpaceTimeTransformer, mm.AutoModel, torch.load, local_rank = saved
        if local_rank is None:
            os.environ.pop('LOCAL_RANK', None)
        else:
            os.environ['LOCAL_RANK'] = local_rank


def build_frozen(num_frames, log, tiny=True, load_checkpoint=None, load_temporal_fix='zeros',
                 projection_dim=PROJ):
    """FrozenInTime's own __init__ under the patches."""
    import model.model as mm
    with egovlp_patches(log, tiny=tiny):
        return mm.FrozenInTime(video_params(num_frames), dict(TEXT_PARAMS),
                               projection_dim=projection_dim, load_checkpoint=load_checkpoint,
                               projection='minimal', load_temporal_fix=load_temporal_fix)


def randomise(model, seed):
    """Redraw every parameter so that each one matters.

    * LayerNorm (video norm1/2/3 and final norm, DistilBERT embeddings /
      sa_layer_norm / output_layer_norm): weight 1 + 0.1 N(0,1), bias 0.1 N(0,1).
    * cls_token, pos_embed, temporal_embed, word / position embeddings: 0.5 N(0,1).
    * Every other weight (Linear, patch Conv2d, incl. the zero-initialised
      timeattn.qkv and the ones-filled timeattn.proj): N(0, 1/fan_in), so
      activations and attention logits are O(1) (not uniform softmax).
    * Every other bias: 0.1 N(0,1).
    """
    import torch
    gen = torch.Generator().manual_seed(seed)
    ln = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            ln |= {id(mod.weight), id(mod.bias)}
    scheme = OrderedDict()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if id(p) in ln:
                if name.endswith('weight'):
                    p.copy_(1 + 0.1 * noise)
                    scheme[name] = '1 + 0.1 N(0,1)'
                else:
                    p.copy_(0.1 * noise)
                    scheme[name] = '0.1 N(0,1)'
            elif name.split('.')[-1] in ('cls_token', 'pos_embed', 'temporal_embed') or \
                    'embeddings.' in name:
                p.copy_(0.5 * noise)
                scheme[name] = '0.5 N(0,1)'
            elif name.endswith('bias'):
                p.copy_(0.1 * noise)
                scheme[name] = '0.1 N(0,1)'
            else:
                fan_in = p[0].numel()
                p.copy_(noise * fan_in ** -0.5)
                scheme[name] = f'N(0, 1/{fan_in})'
    return scheme


# ---- ConfigParser exactly as run/train_epic.py makes it ---------------------
def make_config(egovlp, rundir):
    import parse_config
    script = os.path.join(egovlp, 'run', 'train_epic.py')
    with open(script) as f:
        tree = ast.parse(f.read(), filename=script)
    main = [n for n in tree.body if isinstance(n, ast.If) and isinstance(n.test, ast.Compare)
            and getattr(n.test.left, 'id', None) == '__name__']
    assert len(main) == 1
    body = []
    for stmt in main[0].body:
        body.append(stmt)
        if (isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], 'id', None) == 'config'):
            break
    assert getattr(body[-1].targets[0], 'id', None) == 'config', 'ConfigParser call not found'
    import argparse as _argparse
    import collections as _collections

    class FrozenDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return FROZEN_NOW

    ns = {'os': os, 'argparse': _argparse, 'collections': _collections,
          'ConfigParser': parse_config.ConfigParser}
    saved_env = {k: os.environ.get(k) for k in LAUNCH_ENV}
    saved_argv, saved_dt = sys.argv, parse_config.datetime
    os.environ.update(LAUNCH_ENV)
    sys.argv = list(LAUNCH_ARGV)
    parse_config.datetime = FrozenDatetime
    try:
        exec(compile(ast.Module(body=body, type_ignores=[]), script, 'exec'), ns)  # noqa: S102 (upstream's own code)
    finally:
        sys.argv = saved_argv
        parse_config.datetime = saved_dt
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ns['config']


def transformers_adamw(wheel):
    """transformers 4.2.1's AdamW class, read from its wheel (optimization.py)."""
    import typing

    import torch
    with zipfile.ZipFile(wheel) as z:
        src = z.read('transformers/optimization.py').decode()
        meta = [n for n in z.namelist() if n.endswith('.dist-info/METADATA')]
        version = [l for l in z.read(meta[0]).decode().splitlines() if l.startswith('Version:')]
    assert version == ['Version: ' + TRANSFORMERS_PIN], version
    tree = ast.parse(src)
    cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'AdamW']
    assert len(cls) == 1
    ns = {'math': math, 'torch': torch, 'Optimizer': torch.optim.Optimizer,
          'Callable': typing.Callable, 'Iterable': typing.Iterable, 'Optional': typing.Optional,
          'Tuple': typing.Tuple,  # noqa: UP006 (the names its annotations use)
          'Union': typing.Union, '__name__': 'transformers.optimization'}
    exec(compile(ast.Module(body=cls, type_ignores=[]), 'transformers/optimization.py', 'exec'), ns)  # noqa: S102
    return ns['AdamW']


def train_one_step(model, config, adamw_cls, video, text):
    """One iteration of Multi_Trainer_dist_MIR._train_epoch, then its epoch-end lr update."""
    import model.loss as module_loss
    import torch
    from model.model import sim_matrix
    from torch.nn.parallel import DistributedDataParallel as DDP
    from trainer import Multi_Trainer_dist_MIR
    from trainer.trainer_epic import AllGather_multi

    args = config.args
    loss_fn = config.initialize(name='loss', module=module_loss)
    trainable_params = filter(lambda p: p.requires_grad, model.parameters())
    optimizer = config.initialize('optimizer', types.SimpleNamespace(AdamW=adamw_cls),
                                  trainable_params)
    ddp = DDP(model, find_unused_parameters=True)
    ddp.train()
    data = {'video': video, 'text': dict(text)}
    optimizer.zero_grad()
    with torch.set_grad_enabled(True):
        text_embeds, video_embeds = ddp(data)
        video_embeds = AllGather_multi.apply(video_embeds, args.world_size, args)
        text_embeds = AllGather_multi.apply(text_embeds, args.world_size, args)
        output = sim_matrix(text_embeds, video_embeds)
        loss = loss_fn(output)
    loss.backward()
    n_grads = sum(p.grad is not None for p in model.parameters())
    optimizer.step()
    optimizer.zero_grad()
    Multi_Trainer_dist_MIR._adjust_learning_rate(None, optimizer, 1, args)
    return ddp, optimizer, float(loss.detach()), type(loss_fn).__name__, n_grads


def save_checkpoint(ddp, optimizer, config, out_path):
    """base/base_trainer.py Multi_BaseTrainer_dist._save_checkpoint, then move checkpoint-epoch1.pth."""
    from base.base_trainer import Multi_BaseTrainer_dist
    trainer = types.SimpleNamespace(
        model=ddp, optimizer=optimizer, config=config, checkpoint_dir=config.save_dir,
        mnt_best=0 / 1,  # trainer_epic: val_loss_0 = total_val_loss (never added to, 0) / len
        logger=config.get_logger('trainer', config['trainer']['verbosity']))
    Multi_BaseTrainer_dist._save_checkpoint(trainer, 1, save_best=True)
    shutil.move(str(config.save_dir / 'checkpoint-epoch1.pth'), out_path)


def load_like_test_epic(path, log):
    """run/test_epic.py: torch.load, state_dict_data_parallel_fix, strict load."""
    import torch
    from utils.util import state_dict_data_parallel_fix
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    model = build_frozen(FRAMES, log)
    sd = state_dict_data_parallel_fix(ckpt['state_dict'], model.state_dict())
    model.load_state_dict(sd, strict=True)
    model.eval()
    return ckpt, model


# ---- NumPy float64 reference, written from the formulas ---------------------
def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_softmax_masked(z, allowed):
    z = np.where(allowed, z, -np.inf)
    z = z - z.max(-1, keepdims=True)
    e = np.where(allowed, np.exp(z), 0.0)
    return e / e.sum(-1, keepdims=True)


def np_linear(x, sd, prefix):
    return x @ sd[prefix + '.weight'].T + sd[prefix + '.bias']


def np_var_attention(x, sd, prefix, heads, frames, n, mode):
    """Divided attention: the cls query sees every token; the query of patch
    (f, s) sees [cls] + (f', s) for all f' (mode 'time') or [cls] + (f, s') for
    all s' (mode 'space'). q is scaled by head_dim**-0.5."""
    B, N, D = x.shape
    d = D // heads
    qkv = np_linear(x, sd, prefix + '.qkv')
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, N, heads, d).transpose(0, 2, 1, 3)
               for i in range(3))
    q = q * d ** -0.5
    frame = np.array([-1] + [i // n for i in range(frames * n)])
    spot = np.array([-1] + [i % n for i in range(frames * n)])
    same = (spot[:, None] == spot[None, :]) if mode == 'time' else (frame[:, None] == frame[None, :])
    allowed = same | (np.arange(N)[None, :] == 0) | (np.arange(N)[:, None] == 0)
    w = np_softmax_masked(q @ k.transpose(0, 1, 3, 2), allowed)
    out = (w @ v).transpose(0, 2, 1, 3).reshape(B, N, D)
    return np_linear(out, sd, prefix + '.proj')


def np_video_tower(sd, video, heads=V_HEADS, patch=PATCH, eps=V_EPS):
    """sd: 'video_model.*' and 'vid_proj.*' float64 arrays; video (B, F, C, H, W).
    Returns (features = norm(x)[:, 0], embeddings = vid_proj(features))."""
    B, F, C, H, W = video.shape
    gh, gw = H // patch, W // patch
    n = gh * gw
    conv_w = sd['video_model.patch_embed.proj.weight']
    D = conv_w.shape[0]
    x = video.reshape(B, F, C, gh, patch, gw, patch).transpose(0, 1, 3, 5, 2, 4, 6)
    x = x.reshape(B, F * n, C * patch * patch) @ conv_w.reshape(D, -1).T
    x = x + sd['video_model.patch_embed.proj.bias']
    pos = sd['video_model.pos_embed'][0]
    temporal = sd['video_model.temporal_embed'][0]
    patch_pos = np.concatenate([pos[1:] + temporal[f] for f in range(F)])
    cls = np.broadcast_to(sd['video_model.cls_token'][0] + pos[0], (B, 1, D))
    x = np.concatenate([cls, x + patch_pos], axis=1)
    depth = len({k.split('.')[2] for k in sd if k.startswith('video_model.blocks.')})
    for i in range(depth):
        p = f'video_model.blocks.{i}'

        def ln(y, name, p=p):
            return np_layernorm(y, sd[f'{p}.{name}.weight'], sd[f'{p}.{name}.bias'], eps)

        time_residual = x + np_var_attention(ln(x, 'norm3'), sd, p + '.timeattn', heads, F, n, 'time')
        space_out = np_var_attention(ln(time_residual, 'norm1'), sd, p + '.attn', heads, F, n, 'space')
        space_residual = x + space_out
        h = np_gelu(np_linear(ln(space_residual, 'norm2'), sd, p + '.mlp.fc1'))
        x = space_residual + np_linear(h, sd, p + '.mlp.fc2')
    feats = np_layernorm(x, sd['video_model.norm.weight'], sd['video_model.norm.bias'], eps)[:, 0]
    return feats, np_linear(feats, sd, 'vid_proj.0')


def np_distilbert(sd, ids, mask, heads=TINY_TEXT['n_heads'], eps=T_EPS):
    """Returns (last_hidden_state, txt_proj(last_hidden_state[:, 0]))."""
    B, L = ids.shape
    t = 'text_model.'
    x = sd[t + 'embeddings.word_embeddings.weight'][ids] + \
        sd[t + 'embeddings.position_embeddings.weight'][:L]
    x = np_layernorm(x, sd[t + 'embeddings.LayerNorm.weight'], sd[t + 'embeddings.LayerNorm.bias'], eps)
    D = x.shape[-1]
    d = D // heads
    allowed = np.broadcast_to((mask != 0)[:, None, None, :], (B, heads, L, L))
    n_layers = len({k.split('.')[3] for k in sd if k.startswith(t + 'transformer.layer.')})
    for i in range(n_layers):
        p = f'{t}transformer.layer.{i}.'
        q, k, v = (np_linear(x, sd, p + 'attention.' + nm).reshape(B, L, heads, d).transpose(0, 2, 1, 3)
                   for nm in ('q_lin', 'k_lin', 'v_lin'))
        w = np_softmax_masked((q / math.sqrt(d)) @ k.transpose(0, 1, 3, 2), allowed)
        ctx = (w @ v).transpose(0, 2, 1, 3).reshape(B, L, D)
        h = np_layernorm(x + np_linear(ctx, sd, p + 'attention.out_lin'),
                         sd[p + 'sa_layer_norm.weight'], sd[p + 'sa_layer_norm.bias'], eps)
        f = np_linear(np_gelu(np_linear(h, sd, p + 'ffn.lin1')), sd, p + 'ffn.lin2')
        x = np_layernorm(h + f, sd[p + 'output_layer_norm.weight'], sd[p + 'output_layer_norm.bias'], eps)
    return x, np_linear(np.maximum(x[:, 0], 0.0), sd, 'txt_proj.1')


# ---- helpers -------------------------------------------------------------------
def make_inputs():
    rng = np.random.RandomState(0)
    video = rng.standard_normal((BATCH, FRAMES, 3, IMG, IMG)).astype(np.float32)
    video2 = rng.standard_normal((BATCH, 2, 3, IMG, IMG)).astype(np.float32)
    video8 = rng.standard_normal((BATCH, INFLATED_FRAMES, 3, IMG, IMG)).astype(np.float32)
    ids = np.full((len(TEXT_LENGTHS), TEXT_LEN), PAD_ID, np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(TEXT_LENGTHS):
        ids[row, 0] = CLS_ID
        ids[row, 1:length - 1] = rng.randint(3, TINY_TEXT['vocab_size'], size=length - 2)
        ids[row, length - 1] = SEP_ID
        mask[row, :length] = 1
    return video, video2, video8, ids, mask


def pickle_globals(path):
    """Every class/function the checkpoint's data.pkl references (protocol 2: GLOBAL)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))
    found = set()
    for op, arg, _ in pickletools.genops(data):
        assert op.name != 'STACK_GLOBAL', 'unexpected pickle protocol'
        if op.name == 'GLOBAL':
            found.add(arg.replace(' ', '.'))
    return sorted(found)


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def upstream_commit(egovlp_dir, fallback):
    try:
        top = subprocess.check_output(['git', '-C', egovlp_dir, 'rev-parse', '--show-toplevel'],
                                      stderr=subprocess.DEVNULL, text=True).strip()
        if os.path.realpath(top) != os.path.realpath(egovlp_dir):
            return fallback
        return subprocess.check_output(['git', '-C', egovlp_dir, 'rev-parse', 'HEAD'],
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except Exception:  # noqa: BLE001 (not a git checkout)
        return fallback


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


def describe(value):
    """Type (and small value) of a checkpoint entry, for info.json."""
    t = type(value)
    name = f'{t.__module__}.{t.__qualname__}'
    if isinstance(value, (int, float, str)):
        return {'type': name, 'value': value}
    return {'type': name}


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def write_layout(out, commit, tiny_path):
    """layout_b16.json: FrozenInTime's full-size 'module.' state_dict names and shapes."""
    import torch
    log = PatchLog()
    saved = torch.load(tiny_path, map_location='cpu', weights_only=False)['state_dict']
    # Self-check: the same route (prefix added by hand) reproduces the tiny file's key table.
    tiny = build_frozen(FRAMES, PatchLog())
    sd = OrderedDict(('module.' + k, v) for k, v in tiny.state_dict().items())
    assert shape_table(sd) == shape_table(saved), 'tiny layout != ' + tiny_path
    # On CPU, not the meta device: SpaceTimeTransformer.__init__ calls .item() on
    # torch.linspace (its drop-path schedule), which meta tensors cannot do.
    torch.manual_seed(0)
    model = build_frozen(LAYOUT_FRAMES, log, tiny=False, projection_dim=LAYOUT_PROJ)
    sd = OrderedDict(('module.' + k, v) for k, v in model.state_dict().items())
    param_names = {'module.' + n for n, _ in model.named_parameters()}
    non_param = [k for k in sd if k not in param_names]
    buffers = [n for n, _ in model.named_buffers()]
    non_persistent = [n for n in buffers if 'module.' + n not in sd]
    n_params = sum(p.numel() for p in model.parameters())
    layout = OrderedDict([
        ('upstream', {'repo': EGOVLP_REPO, 'commit': commit}),
        ('model', ('EgoVLP FrozenInTime (projection minimal, 256-d): SpaceTimeTransformer defaults '
                  '(base_patch16_224: 224 px, patch 16, width 768, depth 12, 12 heads, mlp 3072, '
                  f'qkv_bias, LayerNorm eps 1e-6), num_frames {LAYOUT_FRAMES}, time_init zeros, '
                  'frozen-in-time attention; DistilBertModel(DistilBertConfig()) = '
                  'distilbert-base-uncased (vocab 30522, dim 768, 6 layers, 12 heads, hidden 3072, '
                  '512 positions); txt_proj = Sequential(ReLU, Linear(768, 256)), '
                  'vid_proj = Sequential(Linear(768, 256))')),
        ('note', ("ckpt['state_dict'] as base/base_trainer.py::_save_checkpoint writes it under DDP "
                 "('module.' prefix), as egovlp_tiny.pth; FrozenInTime's own __init__ (on CPU; "
                 "SpaceTimeTransformer calls .item(), impossible on the meta device) with the upstream sizes (patches of make_egovlp_golden.py). num_frames is "
                 f"{LAYOUT_FRAMES} as configs/pt/egoclip.json and configs/ft/epic.json build it "
                 "(pretraining feeds 4 frames into the 16-frame model; EgoVLP_PT_BEST holds a "
                 "16-frame temporal_embed, showlab/EgoVLP issues #4 and #25); only "
                 "module.video_model.temporal_embed [1, num_frames, 768] depends on it. "
                 f"{n_params} parameters.")),
        ('num_frames', LAYOUT_FRAMES),
        ('non_parameter_keys', non_param),
        ('non_persistent_buffers', non_persistent),
        ('buffers_note', 'Built with transformers ' + __import__('transformers').__version__ +
                         ': DistilBERT embeddings.position_ids is a non-persistent buffer, so it is '
                         'not in the state dict. transformers 4.2.1 (EgoVLP environment.yml, the '
                         'version the released checkpoints were trained with) has no position_ids '
                         'buffer at all (positions come from torch.arange in forward); 4.20.0, '
                         '4.30.2 and 4.31.0 register it with persistent=False (checked in their '
                         'modeling_distilbert.py). A converter should expect exactly these keys and '
                         'ignore text_model.embeddings.position_ids should a checkpoint have one.'),
        ('state_dict', shape_table(sd)),
    ])
    dump_layout(os.path.join(out, 'layout_b16.json'), layout)
    return {'file': 'layout_b16.json', 'keys': len(sd), 'parameters': n_params,
            'non_parameter_keys': non_param, 'non_persistent_buffers': non_persistent,
            'auto_model_calls': log.auto_model_calls}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--egovlp', required=True, help='EgoVLP work tree (contains model/, parse_config.py)')
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--egovlp-commit', default=EGOVLP_COMMIT,
                    help='commit of the work tree, recorded when it has no .git')
    ap.add_argument('--transformers-wheel',
                    default='/work/golden/transformers-4.2.1-py3-none-any.whl',
                    help='transformers-4.2.1-py3-none-any.whl (its AdamW is EgoVLP\'s optimizer)')
    opts = ap.parse_args()
    egovlp = os.path.abspath(opts.egovlp)
    out = os.path.abspath(opts.out)
    wheel = os.path.abspath(opts.transformers_wheel)
    commit = upstream_commit(egovlp, opts.egovlp_commit)
    os.makedirs(out, exist_ok=True)
    sys.path.insert(0, egovlp)

    import warnings
    warnings.filterwarnings('ignore', category=FutureWarning)
    import model.model as mm
    import parse_config
    import timm
    import torch
    import torch.distributed as dist
    import transformers
    for mod in (mm, parse_config):
        assert os.path.abspath(mod.__file__).startswith(egovlp + os.sep), mod.__file__
    torch.set_num_threads(1)

    # EgoVLP uses paths relative to its repository root; run in a scratch copy of
    # that layout so nothing is written into the upstream tree.
    rundir = tempfile.mkdtemp(prefix='egovlp_run_')
    for sub in ('configs', 'logger'):
        os.symlink(os.path.join(egovlp, sub), os.path.join(rundir, sub))
    os.chdir(rundir)

    video_np, video2_np, video8_np, ids_np, mask_np = make_inputs()
    video, video2, video8 = (torch.from_numpy(v) for v in (video_np, video2_np, video8_np))
    text = {'input_ids': torch.from_numpy(ids_np), 'attention_mask': torch.from_numpy(mask_np)}
    ckpt_path = os.path.join(out, 'egovlp_tiny.pth')

    # ---- 1. build, randomise, train one step, save ------------------------------
    config = make_config(egovlp, rundir)
    adamw = transformers_adamw(wheel)
    dist.init_process_group('gloo', init_method='file://' + os.path.join(rundir, 'pg'),
                            rank=0, world_size=1)
    build_log = PatchLog()
    torch.manual_seed(0)
    model = build_frozen(FRAMES, build_log)
    vit_keys = set(build_log.vit_init_keys)
    model_keys = list(model.state_dict())
    vit_covered = [k for k in model_keys if k.startswith('video_model.')
                   and k[len('video_model.'):] in vit_keys]
    vit_not_covered = [k for k in model_keys if k.startswith('video_model.') and k not in vit_covered]
    init_time = {k: v.clone() for k, v in model.state_dict().items() if '.timeattn.' in k}
    assert all(not v.any() for k, v in init_time.items() if 'qkv' in k or 'proj.bias' in k)
    assert all(bool((v == 1).all()) for k, v in init_time.items() if k.endswith('proj.weight'))
    scheme = randomise(model, seed=1)
    train_text = {k: v[:BATCH] for k, v in text.items()}
    ddp, optimizer, train_loss, loss_name, n_grads = train_one_step(model, config, adamw, video, train_text)
    assert n_grads == len(list(model.parameters())), 'a parameter got no gradient'
    save_checkpoint(ddp, optimizer, config, ckpt_path)
    dist.destroy_process_group()

    # ---- 2. reference outputs from the saved file --------------------------------
    ckpt, m = load_like_test_epic(ckpt_path, PatchLog())
    with torch.no_grad():
        video_features = m.video_model(video).numpy()
        video_embeddings = m.compute_video(video).numpy()
        video2_embeddings = m.compute_video(video2).numpy()
        text_hidden = m.text_model(**text).last_hidden_state.numpy()
        text_embeddings = m.compute_text(dict(text)).numpy()
        assert np.allclose(m.vid_proj(torch.from_numpy(video_features)).numpy(), video_embeddings,
                           atol=1e-6)
        assert np.allclose(m.txt_proj(torch.from_numpy(text_hidden[:, 0])).numpy(), text_embeddings,
                           atol=1e-6)
    text_features = text_hidden[:, 0]
    # padding must not leak into real tokens: recompute the shortest row unpadded
    with torch.no_grad():
        L = TEXT_LENGTHS[-1]
        short = m.text_model(input_ids=text['input_ids'][-1:, :L],
                             attention_mask=text['attention_mask'][-1:, :L]).last_hidden_state.numpy()
    pad_invariance = max_abs(short[0], text_hidden[-1, :L])

    # ---- 3. 8-frame inflation through FrozenInTime's load_checkpoint branch --------
    loaded_temporal = ckpt['state_dict']['module.video_model.temporal_embed'][0].numpy()
    inflated = {}
    inflate_log = PatchLog()
    for fix in ('zeros', 'bilinear'):
        m8 = build_frozen(INFLATED_FRAMES, inflate_log, load_checkpoint=ckpt_path, load_temporal_fix=fix)
        m8.eval()
        with torch.no_grad():
            inflated[fix] = (m8.compute_video(video8).numpy(),
                             m8.video_model.temporal_embed[0].numpy().copy(),
                             {k: v.double().numpy() for k, v in m8.state_dict().items()})
        same = {k: v for k, v in m8.state_dict().items() if k != 'video_model.temporal_embed'}
        for k, v in same.items():
            assert torch.equal(v, m.state_dict()[k]), k
    tz, tb = inflated['zeros'][1], inflated['bilinear'][1]
    assert np.array_equal(tz[:FRAMES], loaded_temporal) and not tz[FRAMES:].any()
    # align_corners=True: src = t * (T_old - 1) / (T_new - 1), linear between neighbours
    src = np.arange(INFLATED_FRAMES) * (FRAMES - 1) / (INFLATED_FRAMES - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, FRAMES - 1)
    frac = (src - lo)[:, None]
    expect_bilinear = (1 - frac) * loaded_temporal[lo].astype(np.float64) + \
        frac * loaded_temporal[hi].astype(np.float64)
    bilinear_formula_diff = max_abs(tb, expect_bilinear)
    assert bilinear_formula_diff < 1e-6, bilinear_formula_diff
    try:
        build_frozen(INFLATED_FRAMES, PatchLog(), load_checkpoint=ckpt_path, load_temporal_fix='interp')
        interp_result = 'no error'
    except Exception as e:  # noqa: BLE001 (recorded: nearest + align_corners=True)
        interp_result = f'{type(e).__name__}: {e}'

    # ---- 4. sensitivity: every parameter, and the temporal attention ------------
    gen = torch.Generator().manual_seed(2)

    def outputs(model_):
        with torch.no_grad():
            return model_.compute_video(video).numpy(), model_.compute_text(dict(text)).numpy()

    base_v, base_t = outputs(m)
    sensitivity = OrderedDict()
    for name, _ in m.named_parameters():
        mp = copy.deepcopy(m)
        p = dict(mp.named_parameters())[name]
        with torch.no_grad():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        v, t = outputs(mp)
        is_text = name.startswith(('text_model.', 'txt_proj.'))
        sensitivity[name] = max_abs(t, base_t) if is_text else max_abs(v, base_v)
        other = max_abs(v, base_v) if is_text else max_abs(t, base_t)
        assert other == 0.0, (name, other)
    # A key bias adds q.b_k to every logit of a query row, which softmax cancels:
    # DistilBERT's k_lin.bias cannot change any output (nor can the k third of
    # VarAttention's qkv.bias, which shares its tensor with q and v).
    invariant = [k for k in sensitivity if k.endswith('attention.k_lin.bias')]
    dead = [k for k, d in sensitivity.items() if d < 1e-5 and k not in invariant]
    assert not dead, dead
    assert all(sensitivity[k] < 1e-5 for k in invariant), {k: sensitivity[k] for k in invariant}
    mt = copy.deepcopy(m)
    with torch.no_grad():
        for name, p in mt.named_parameters():
            if '.timeattn.' in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    timeattn_perturb = max_abs(outputs(mt)[0], base_v)
    mz = copy.deepcopy(m)
    with torch.no_grad():
        for name, p in mz.named_parameters():
            if '.timeattn.' in name:
                p.zero_()
    timeattn_zeroed = max_abs(outputs(mz)[0], base_v)
    # temporal attention mixes frames: changing frame 3 changes... every token of frame 0 via time attention
    # (checked on the cls output: reversing frame order changes it because temporal_embed differs per frame)
    with torch.no_grad():
        rev = m.compute_video(torch.flip(video, dims=[1])).numpy()
    frame_order_effect = max_abs(rev, base_v)
    assert timeattn_perturb > 1e-3 and timeattn_zeroed > 1e-3 and frame_order_effect > 1e-3

    # ---- 5. NumPy float64 forward pass ---------------------------------------------
    sd64 = {k[len('module.'):]: v.double().numpy() for k, v in ckpt['state_dict'].items()}
    np_vf, np_ve = np_video_tower(sd64, video_np.astype(np.float64))
    _, np_v2e = np_video_tower(sd64, video2_np.astype(np.float64))
    np_th, np_te = np_distilbert(sd64, ids_np, mask_np)
    np_v8 = {fix: np_video_tower(inflated[fix][2], video8_np.astype(np.float64))[1]
             for fix in inflated}
    m64 = copy.deepcopy(m).double()
    with torch.no_grad():
        t64_vf = m64.video_model(video.double()).numpy()
        t64_ve = m64.compute_video(video.double()).numpy()
        t64_v2e = m64.compute_video(video2.double()).numpy()
        t64_th = m64.text_model(**text).last_hidden_state.numpy()
        t64_te = m64.compute_text(dict(text)).numpy()
    numpy_vs_torch = OrderedDict([
        ('video_features', max_abs(np_vf, video_features)),
        ('video_embeddings', max_abs(np_ve, video_embeddings)),
        ('video2_embeddings', max_abs(np_v2e, video2_embeddings)),
        ('video8_zeros_embeddings', max_abs(np_v8['zeros'], inflated['zeros'][0])),
        ('video8_bilinear_embeddings', max_abs(np_v8['bilinear'], inflated['bilinear'][0])),
        ('text_hidden', max_abs(np_th, text_hidden)),
        ('text_features', max_abs(np_th[:, 0], text_features)),
        ('text_embeddings', max_abs(np_te, text_embeddings)),
    ])
    numpy_vs_torch64 = OrderedDict([
        ('video_features', max_abs(np_vf, t64_vf)),
        ('video_embeddings', max_abs(np_ve, t64_ve)),
        ('video2_embeddings', max_abs(np_v2e, t64_v2e)),
        ('text_hidden', max_abs(np_th, t64_th)),
        ('text_embeddings', max_abs(np_te, t64_te)),
    ])
    print('numpy float64 vs torch float32, max abs diff:')
    for k, d in numpy_vs_torch.items():
        print(f'  {k:28s} {d:.3e}')
    print('numpy float64 vs torch float64, max abs diff:')
    for k, d in numpy_vs_torch64.items():
        print(f'  {k:28s} {d:.3e}')
    assert max(numpy_vs_torch.values()) < 1e-4, numpy_vs_torch
    assert max(numpy_vs_torch64.values()) < 1e-10, numpy_vs_torch64

    # ---- 6. reference.npz -------------------------------------------------------------
    ref = OrderedDict([
        ('video', video_np), ('video_features', video_features), ('video_embeddings', video_embeddings),
        ('video2', video2_np), ('video2_embeddings', video2_embeddings),
        ('video8', video8_np),
        ('video8_zeros_embeddings', inflated['zeros'][0]),
        ('video8_bilinear_embeddings', inflated['bilinear'][0]),
        ('temporal_embed_zeros', inflated['zeros'][1]),
        ('temporal_embed_bilinear', inflated['bilinear'][1]),
        ('text_ids', ids_np), ('text_mask', mask_np), ('text_hidden', text_hidden),
        ('text_features', text_features), ('text_embeddings', text_embeddings),
    ])
    for k, v in ref.items():
        assert v.dtype == (np.int64 if k in ('text_ids', 'text_mask') else np.float32), (k, v.dtype)
    ref_path = os.path.join(out, 'reference.npz')
    np.savez(ref_path, **ref)

    # ---- 7. how the checkpoint loads --------------------------------------------------------
    try:
        torch.load(ckpt_path, map_location='cpu', weights_only=True)
        weights_only_error = None
    except Exception as e:  # noqa: BLE001 (the refusal is what is recorded)
        weights_only_error = f'{type(e).__name__}: {e}'
    assert weights_only_error is not None, 'weights_only=True unexpectedly accepted the file'
    refusal_line = [l for l in weights_only_error.splitlines() if 'Unsupported global' in l]
    probe = subprocess.run(
        [sys.executable, '-c', ('import sys, torch; torch.load(sys.argv[1], map_location="cpu", '
         'weights_only=False)'), ckpt_path], capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(),
        env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    without_egovlp = (probe.stderr.strip().splitlines() or ['(loaded)'])[-1]

    # Without EgoVLP's classes: a pickle module whose Unpickler maps parse_config.* to a
    # plain placeholder class loads the file (what a converter can do).
    import pickle

    class StubUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == 'parse_config':
                return type(name, (), {'__module__': 'stub_parse_config'})
            return super().find_class(module, name)

    stub_pickle = types.ModuleType('stub_pickle')
    stub_pickle.Unpickler, stub_pickle.load = StubUnpickler, pickle.load
    stubbed = torch.load(ckpt_path, map_location='cpu', weights_only=False, pickle_module=stub_pickle)
    assert list(stubbed) == list(ckpt) and all(
        torch.equal(stubbed['state_dict'][k], v) for k, v in ckpt['state_dict'].items())
    assert sorted(vars(stubbed['config'])) == sorted(vars(ckpt['config']))

    # ---- 8. full-size layout -----------------------------------------------------------
    layout_info = write_layout(out, commit, ckpt_path)

    # ---- 9. info.json ----------------------------------------------------------------
    top = OrderedDict((k, describe(v)) for k, v in ckpt.items())
    opt_sd = ckpt['optimizer']
    state0 = opt_sd['state'][0]
    cfg = ckpt['config']
    files = OrderedDict()
    for name in ('egovlp_tiny.pth', 'reference.npz', 'layout_b16.json'):
        path = os.path.join(out, name)
        files[name] = {'bytes': os.path.getsize(path), 'sha256': sha256(path)}
    files['egovlp_tiny.pth']['pickle_globals'] = pickle_globals(ckpt_path)
    files['egovlp_tiny.pth']['zip_root'] = sorted({n.split('/')[0] for n in
                                                   zipfile.ZipFile(ckpt_path).namelist()})
    info = OrderedDict()
    info['upstream'] = {'repo': EGOVLP_REPO, 'commit': commit,
                        'optimizer_source': f'transformers {TRANSFORMERS_PIN} optimization.AdamW '
                                            f'(from {os.path.basename(wheel)})'}
    info['environment'] = {'torch': torch.__version__, 'transformers': transformers.__version__,
                           'timm': timm.__version__, 'numpy': np.__version__,
                           'python': platform.python_version()}
    info['architecture'] = {
        'frozen_in_time': {'class': 'model.model.FrozenInTime', 'projection': 'minimal',
                           'projection_dim': PROJ, 'video_params': video_params(FRAMES),
                           'text_params': TEXT_PARAMS, 'load_temporal_fix': 'zeros',
                           'compute_video': 'vid_proj(video_model(video))',
                           'compute_text': 'txt_proj(text_model(**text).last_hidden_state[:, 0])'},
        'video': {'class': 'model.video_transformer.SpaceTimeTransformer', **TINY_VIDEO,
                  'num_frames': FRAMES, 'patches_per_frame': (IMG // PATCH) ** 2,
                  'mlp_ratio': 4, 'mlp_hidden': 4 * V_DIM, 'qkv_bias': True, 'time_init': 'zeros',
                  'attention_style': 'frozen-in-time', 'layernorm_eps': V_EPS,
                  'act': 'nn.GELU (exact erf)', 'head_pre_logits_fc': 'nn.Identity (set by FrozenInTime)',
                  'input_layout': '(B, F, C, H, W), F <= num_frames',
                  'token_order': 'cls, then frame-major (f, row, col) patches',
                  'position': 'cls + pos_embed[0]; patch (f, s) + pos_embed[1 + s] + temporal_embed[f] '
                              '(tables tiled to num_frames, then sliced to the tokens present)',
                  'block': 'time_residual = x + timeattn(norm3(x)) [cls query: all tokens; patch (f,s): '
                           "[cls] + (f', s) for all f']; space_out = attn(norm1(time_residual)) [cls: all "
                           "tokens; patch (f,s): [cls] + (f, s') for all s']; space_residual = x + space_out "
                           '(x, not time_residual); x = space_residual + mlp(norm2(space_residual))',
                  'attention': 'qkv = Linear(D, 3D) chunked q|k|v, heads split (h d); q *= head_dim**-0.5; '
                               'the cls query of each VarAttention attends to all tokens (incl. itself)',
                  'output': 'norm(x)[:, 0] (final LayerNorm, cls token)'},
        'text': {'class': 'transformers.DistilBertModel', 'config': TINY_TEXT,
                 'attn_implementation': 'eager', 'layernorm_eps': T_EPS,
                 'act': "gelu (exact erf)", 'embeddings': 'word[ids] + position[arange(L)], LayerNorm',
                 'layer': 'h = sa_layer_norm(x + out_lin(attn(x))); x = output_layer_norm(h + lin2(gelu(lin1(h))))',
                 'attention_mask': 'on keys (padded keys excluded); padded query rows still computed',
                 'tokens': f'[CLS]={CLS_ID}, [SEP]={SEP_ID}, [PAD]={PAD_ID}, ids 3..63'},
        'txt_proj': 'Sequential(ReLU, Linear(32, 16)) -> keys txt_proj.1.*',
        'vid_proj': 'Sequential(Linear(32, 16)) -> keys vid_proj.0.*',
    }
    info['monkeypatches'] = [
        {'target': 'model.model.SpaceTimeTransformer',
         'replacement': f'functools.partial(SpaceTimeTransformer, **{TINY_VIDEO})',
         'why': 'FrozenInTime.__init__ hard-codes SpaceTimeTransformer(num_frames, time_init, '
                'attention_style) at base_patch16_224 sizes'},
        {'target': 'model.model.AutoModel.from_pretrained',
         'replacement': 'returns DistilBertModel(DistilBertConfig(**tiny, attn_implementation="eager"))',
         'why': 'upstream downloads distilbert-base-uncased', 'calls': build_log.auto_model_calls},
        {'target': 'torch.load',
         'replacement': f'{VIT_INIT_PATH} -> state_dict of seeded tiny timm VisionTransformer(img_size=32, '
                        'patch_size=8, embed_dim=32, depth=2, num_heads=4); any other path -> real '
                        "torch.load(path, map_location='cpu', weights_only=False)",
         'why': 'FrozenInTime.__init__ always loads the timm ViT-B/16 init file; its load_checkpoint '
                "branch asks for map_location='cuda:{LOCAL_RANK}' and (torch >= 2.6 default) "
                'weights_only=True, which refuses EgoVLP checkpoints',
         'calls': {'tiny_build': build_log.torch_load_calls,
                   'inflation_build_load_checkpoint': inflate_log.torch_load_calls[:2]},
         'vit_init_keys_loaded': vit_covered, 'video_keys_not_in_vit_init': vit_not_covered},
        {'target': 'os.environ["LOCAL_RANK"]', 'replacement': '"0" while FrozenInTime.__init__ runs',
         'why': 'the load_checkpoint branch reads it (torch.distributed.launch sets it)'},
        {'target': 'parse_config.datetime', 'replacement': f'now() fixed at {FROZEN_NOW.isoformat()}',
         'why': "ConfigParser pickles save dirs stamped with datetime.now().strftime('%m%d_%H')"},
        {'target': 'transformers.AdamW (module argument of config.initialize)',
         'replacement': f'AdamW class from transformers {TRANSFORMERS_PIN} optimization.py',
         'why': 'run/train_epic.py uses transformers.AdamW, absent from current transformers'},
    ]
    info['checkpoint'] = {
        'file': 'egovlp_tiny.pth',
        'saved_by': 'base/base_trainer.py Multi_BaseTrainer_dist._save_checkpoint(epoch=1, save_best=True) '
                    '(plain torch.save of checkpoint-epoch1.pth)',
        'top_level': top,
        'state_dict_keys': list(ckpt['state_dict']),
        'state_dict_shapes': shape_table(ckpt['state_dict']),
        'state_dict_dtype': sorted({str(v.dtype) for v in ckpt['state_dict'].values()}),
        'optimizer': {'class': f'transformers.optimization.AdamW ({TRANSFORMERS_PIN})',
                      'param_groups': [{k: v for k, v in g.items() if k != 'params'} | {'n_params': len(g['params'])}
                                       for g in opt_sd['param_groups']],
                      'state_entries': len(opt_sd['state']),
                      'state_keys': {k: describe(v)['type'] for k, v in state0.items()},
                      'lr_note': 'the step ran at the config lr 3e-5; the saved lr is 2e-4 because '
                                 'trainer_epic._adjust_learning_rate(epoch=1) (learning_rate1 2e-4, '
                                 'schedule [60, 80]) runs at the end of the epoch, before saving'},
        'training_step': {'loss': loss_name, 'loss_value': train_loss,
                          'batch': f'video[:{BATCH}] with text rows 0..{BATCH - 1}',
                          'ddp': 'DistributedDataParallel(find_unused_parameters=True), gloo, world size 1'},
        'config': {'class': f'{type(cfg).__module__}.{type(cfg).__qualname__}',
                   'made_by': 'run/train_epic.py __main__ block (ast) on argv ' + ' '.join(LAUNCH_ARGV)
                              + ' with env ' + json.dumps(LAUNCH_ENV),
                   'attributes': sorted(vars(cfg)),
                   'args': {k: v for k, v in vars(cfg.args).items()},
                   'cfg_fname': str(cfg.cfg_fname), 'save_dir': str(cfg.save_dir),
                   'name': cfg['name'], 'arch': cfg['arch'], 'optimizer': cfg['optimizer'],
                   'note': 'configs/ft/epic.json unchanged: it describes the full-size 16-frame EK-100 '
                           'fine-tune, not the tiny model; take sizes from tensor shapes'},
        'monitor_best_note': "0.0: trainer_epic._valid_epoch never accumulates total_val_loss, so "
                             "'val_loss_0' is always 0.0 and every epoch is 'best' for 'min val_loss_0'",
        'weights_only_true': weights_only_error,
        'weights_only_true_refusal_line': refusal_line,
        'weights_only_false_without_egovlp_on_path': without_egovlp,
        'how_to_load': "torch.load(path, map_location='cpu', weights_only=False) with EgoVLP's "
                       "parse_config importable, or (checked here) torch.load(..., weights_only=False, "
                       "pickle_module=M) where M.Unpickler.find_class maps parse_config.* to a "
                       "placeholder class; the other globals (pickle_globals) are stdlib/torch. "
                       "add_safe_globals needs the real class object",
        'state_dict_order': 'text_model.*, video_model.* (cls_token, pos_embed, temporal_embed, '
                            'patch_embed, blocks.i.{norm1, attn, timeattn, norm2, mlp, norm3}, norm), '
                            'txt_proj.1.*, vid_proj.0.* -- module registration order of FrozenInTime',
    }
    info['weights'] = {
        'construction': 'torch.manual_seed(0) then FrozenInTime.__init__ (time_init zeros: timeattn qkv '
                        'weight/bias 0, proj weight 1, proj bias 0 -- verified before randomising)',
        'randomise': 'torch.Generator seed 1, every parameter redrawn, in named_parameters order: '
                     'LayerNorm weight 1 + 0.1 N(0,1) and bias 0.1 N(0,1); cls_token, pos_embed, '
                     'temporal_embed, word/position embeddings 0.5 N(0,1); other biases 0.1 N(0,1); '
                     'other weights N(0, 1/fan_in) with fan_in = numel(weight[0])',
        'per_parameter': scheme,
        'then': 'one AdamW step (lr 3e-5), saved; all outputs are computed from the saved file in eval mode',
    }
    info['sensitivity'] = {
        'method': 'each parameter tensor += 0.05 N(0,1) (seed 2), max |change| of video_embeddings(video) '
                  'for video_model/vid_proj parameters, of text_embeddings for text_model/txt_proj ones '
                  '(the other tower is checked to be exactly unchanged)',
        'min_change': min(d for k, d in sensitivity.items() if k not in invariant),
        'output_invariant_by_construction': {
            'keys': invariant,
            'why': 'a key bias adds the same q.b_k to all logits of a query row; softmax cancels it '
                   '(changes listed are float32 noise). The k third of video qkv.bias is likewise '
                   'output-invariant, but it shares its tensor with the q and v biases'},
        'per_parameter_max_abs_change': sensitivity,
        'timeattn_all_perturbed_0.05': timeattn_perturb,
        'timeattn_all_zeroed': timeattn_zeroed,
        'frame_order_reversed': frame_order_effect,
        'text_padding_invariance': pad_invariance,
    }
    info['inflation'] = {
        'how': f"FrozenInTime(video_params num_frames {INFLATED_FRAMES}, load_checkpoint='egovlp_tiny.pth', "
               "load_temporal_fix=fix): its own load_checkpoint branch (torch.load, "
               'state_dict_data_parallel_fix, _inflate_positional_embeds, load_state_dict(strict=True)); '
               'every other tensor equals the 4-frame one',
        'zeros': 'temporal_embed[:4] = loaded, [4:] = 0',
        'bilinear': 'F.interpolate((1,1,4,D) -> (8, D), mode bilinear, align_corners=True): along time '
                    'src = t * (4 - 1) / (8 - 1), linear between floor/ceil; along D the identity',
        'bilinear_vs_formula_max_abs': bilinear_formula_diff,
        'interp': interp_result,
        'more_frames_in_checkpoint': 'if the checkpoint has more frames than the model, '
                                     'temporal_embed[:, :num_frames] is kept (not exercised here)',
    }
    info['numpy_reference'] = {
        'what': 'np_video_tower / np_distilbert in tools/golden/make_egovlp_golden.py, float64, from the '
                'formulas in architecture (not upstream code), on the saved weights',
        'max_abs_vs_torch_float32': numpy_vs_torch,
        'max_abs_vs_torch_float64': numpy_vs_torch64,
    }
    info['reference'] = OrderedDict((k, {'shape': list(v.shape), 'dtype': str(v.dtype)})
                                    for k, v in ref.items())
    info['reference_notes'] = {
        'video': 'N(0,1), numpy RandomState(0), drawn in the order video, video2, video8, text ids',
        'video_features': 'm.video_model(video) = final norm cls token (B, 32)',
        'video_embeddings': 'm.compute_video(video)',
        'video2_embeddings': 'm.compute_video(video2): 2 < num_frames frames (position tables sliced)',
        'video8_*_embeddings': 'compute_video(video8) of the 8-frame model inflated with that fix',
        'temporal_embed_*': 'the inflated video_model.temporal_embed[0], (8, 32)',
        'text_ids': f'rows of lengths {list(TEXT_LENGTHS)} (incl. [CLS], [SEP]); 0-padded to {TEXT_LEN}',
        'text_hidden': "m.text_model(input_ids=text_ids, attention_mask=text_mask).last_hidden_state",
        'text_embeddings': "m.compute_text({'input_ids': text_ids, 'attention_mask': text_mask})",
        'normalised': False,
    }
    info['layout'] = layout_info
    info['files'] = files
    info['upstream_quirks'] = [
        ('SpaceTimeBlock: space_residual = x + space_out, where space_out is computed from '
        'norm1(x + timeattn(norm3(x))); the time output itself is not added to the residual stream'),
        ('VarAttention: the cls query attends to all tokens in both the time and the space attention; '
        'every patch query also sees the cls key/value'),
        ('SpaceTimeTransformer default time_init is "rand", but FrozenInTime passes video_params '
        'time_init (default "zeros"): timeattn qkv = 0, proj.weight = 1, proj.bias = 0 at init'),
        ('FrozenInTime.__init__ loads pretrained/jx_vit_base_p16_224-80ecf9dd.pth unconditionally, '
        'even when load_checkpoint is given; timeattn, norm3 and temporal_embed are not in it'),
        ("FrozenInTime(load_checkpoint=...) calls torch.load(path, map_location='cuda:{LOCAL_RANK}'): "
        'needs CUDA and, on torch >= 2.6 (weights_only=True by default), refuses every checkpoint '
        'EgoVLP saves, because of the pickled ConfigParser'),
        "load_temporal_fix 'interp' is broken: it calls F.interpolate(mode='nearest', align_corners=True): "
        + interp_result,
        ("load_temporal_fix 'bilinear' interpolates with align_corners=True (AVION's inflate uses "
        'align_corners=False)'),
        ('configs/pt/egoclip.json and configs/ft/epic.json build the video model with num_frames 16 '
        '(pretraining feeds 4 frames to it): released checkpoints hold a 16-frame temporal_embed'),
        ("run/train_epic.py's optimizer is transformers.AdamW (eps 1e-6, weight_decay 0, correct_bias), "
        'not torch.optim.AdamW; its state step is a python int'),
        "ckpt['arch'] is type(self.model).__name__ = 'DistributedDataParallel', not 'FrozenInTime'",
        "monitor_best is 0.0 in every EK-100 checkpoint (val loss never accumulated)",
        ('the checkpoint config is the full-size run config; the tiny sizes cannot be expressed in it '
        '(FrozenInTime only accepts arch_config base_patch16_224)'),
        'txt_proj applies ReLU to the DistilBERT [CLS] hidden state before the Linear',
    ]
    info['regenerate'] = (
        'see the docstring of tools/golden/make_egovlp_golden.py for the venv and the transformers '
        f'{TRANSFORMERS_PIN} wheel; then mkdir -p /work/golden/EgoVLP && git -C '
        f'/work/.mirror/showlab+EgoVLP/repo archive {EGOVLP_COMMIT} | tar -x -C /work/golden/EgoVLP && '
        '/work/golden/venv-egovlp/bin/python tools/golden/make_egovlp_golden.py --egovlp /work/golden/EgoVLP '
        '--out tests/data/golden/egovlp --transformers-wheel /work/golden/transformers-4.2.1-py3-none-any.whl')
    with open(os.path.join(out, 'info.json'), 'w') as f:
        json.dump(info, f, indent=1, default=str)
        f.write('\n')
    shutil.rmtree(rundir, ignore_errors=True)
    for name, meta in files.items():
        print(f"{name}: {meta['bytes']} bytes")
    print(f"info.json: {os.path.getsize(os.path.join(out, 'info.json'))} bytes")


if __name__ == '__main__':
    main()
