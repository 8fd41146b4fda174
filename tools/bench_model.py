"""Train-step speed of the video+text dual encoder: JAX/Flax (ours) vs the same model in PyTorch.

    python tools/bench_model.py [--sizes 32 64] [--batch 8] [--repeats 7] [--steps 3]

One step = forward + backward (gradients of every parameter) of a symmetric contrastive loss
over the batch (the cost of the SMS loss: one B x B similarity, negligible next to the towers).
The model: video ViT (patch 8, width 192, 4 layers, 3 heads of 64, joint attention over
T*N + 1 tokens, learned spatial + temporal embeddings) and CLIP text tower (width 128, 2 layers,
2 heads, 77 tokens, causal), quick-GELU MLPs of 4x width, embedding 128. Frames 8 x 32 x 32
give 129 video tokens, 8 x 64 x 64 give 513.

The PyTorch model below has the same parameters (counts checked) and the same computation,
with attention through `F.scaled_dot_product_attention` (PyTorch's fused CPU kernel). Runs are
interleaved (JAX, torch, JAX, ...) because the machine is shared; each run times `--steps`
steps and keeps their median; the table reports the median over runs. GFLOP/s: XLA's cost
analysis of the compiled step (the same count is used for torch) over time, against the
machine's fp32 matmul peak measured here (numpy, torch and JAX on 2048^3 and 4096^3, best
of 5; the highest is used).
"""

import argparse
import functools
import os
import statistics
import sys
import time

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "--single_thread" in sys.argv:  # XLA reads its flags when JAX starts, so before the import
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA_FLAGS}"

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tempret_jax.models.retrieval import RetrievalModel, model_config

EMBED, CONTEXT = 128, 77
VISION = dict(patch_size=8, width=192, layers=4, heads=3)
TEXT = dict(width=128, layers=2, heads=2)


# ---------------------------------------------------------------------------------------------
# The model in JAX (ours).


def jax_config(image_size: int, frames: int, attention_impl: str, dtype: str, scan: bool):
    c = model_config("tiny")
    c.embed_dim = EMBED
    c.dtype = dtype
    c.attention_impl = attention_impl
    c.scan_layers = scan
    c.vision.update(image_size=image_size, num_frames=frames, **VISION)
    c.text.update(context_length=CONTEXT, **TEXT)
    return c


def contrastive_loss(video, text, scale):
    """Symmetric InfoNCE; video, text (B, E) unit rows."""
    logits = scale * video @ text.T
    labels = jnp.arange(video.shape[0])
    log_v = jax.nn.log_softmax(logits, axis=1)
    log_t = jax.nn.log_softmax(logits, axis=0)
    return -(log_v[labels, labels].mean() + log_t[labels, labels].mean()) / 2


def jax_step(config, video, ids):
    """(jitted grad step, params, flops of one step)."""
    model = RetrievalModel.from_config(config)
    params = jax.jit(model.init)(jax.random.key(0), video, ids)["params"]

    def loss_fn(p, video, ids):
        out = model.apply({"params": p}, video, ids)
        return contrastive_loss(out["video"], out["text"], out["logit_scale"])

    step = jax.jit(jax.value_and_grad(loss_fn))
    cost = step.lower(params, video, ids).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return step, params, float(cost["flops"])


# ---------------------------------------------------------------------------------------------
# The same model in PyTorch.


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width, heads, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        return x + self.c_proj(quick_gelu(self.c_fc(self.ln_2(x))))


class TorchVideoText(nn.Module):
    def __init__(self, image_size, frames):
        super().__init__()
        d, p = VISION["width"], VISION["patch_size"]
        grid = image_size // p
        self.conv1 = nn.Conv2d(3, d, p, p, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * d ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, d) * d ** -0.5)
        self.temporal_embedding = nn.Parameter(torch.zeros(frames, d))
        self.ln_pre, self.ln_post = nn.LayerNorm(d), nn.LayerNorm(d)
        self.visual = nn.Sequential(*[Block(d, VISION["heads"]) for _ in range(VISION["layers"])])
        self.proj = nn.Parameter(torch.randn(d, EMBED) * d ** -0.5)
        w = TEXT["width"]
        self.token_embedding = nn.Embedding(49408, w)
        self.text_pos = nn.Parameter(torch.randn(CONTEXT, w) * 0.01)
        self.text = nn.Sequential(*[Block(w, TEXT["heads"], causal=True)
                                    for _ in range(TEXT["layers"])])
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.randn(w, EMBED) * w ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def encode_video(self, video):  # (B, T, 3, H, W)
        b, t = video.shape[:2]
        x = self.conv1(video.flatten(0, 1)).flatten(2).transpose(1, 2)    # (BT, N, D)
        n = x.shape[1]
        pos = self.positional_embedding[1:].repeat(t, 1) + \
            self.temporal_embedding.repeat_interleave(n, 0)
        x = x.reshape(b, t * n, -1) + pos
        cls = (self.class_embedding + self.positional_embedding[0]).expand(b, 1, -1)
        x = self.visual(self.ln_pre(torch.cat([cls, x], 1)))
        return self.ln_post(x[:, 0]) @ self.proj

    def encode_text(self, ids):
        x = self.text(self.token_embedding(ids) + self.text_pos[: ids.shape[1]])
        x = self.ln_final(x)
        return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ self.text_projection

    def forward(self, video, ids):
        v = F.normalize(self.encode_video(video), dim=-1)
        t = F.normalize(self.encode_text(ids), dim=-1)
        logits = self.logit_scale.exp() * v @ t.T
        labels = torch.arange(v.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def torch_step(model, video, ids):
    model.zero_grad(set_to_none=True)
    loss = model(video, ids)
    loss.backward()
    return loss


# ---------------------------------------------------------------------------------------------
# Timing.


def timed(fn, steps: int) -> float:
    """Median seconds of `steps` calls of fn (which must block until done)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int, repeats: int = 5) -> dict:
    """GFLOP/s of an n^3 float32 matmul in numpy, torch and JAX (best of repeats)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ta, ja = torch.from_numpy(a), jnp.asarray(a)
    mm = jax.jit(jnp.matmul)
    mm(ja, ja).block_until_ready()
    runs = {"numpy": lambda: a @ a, "torch": lambda: ta @ ta,
            "jax": lambda: mm(ja, ja).block_until_ready()}
    flops = 2 * n ** 3
    return {k: flops / min(timed(f, 1) for _ in range(repeats)) / 1e9 for k, f in runs.items()}


def bench_size(image_size, args):
    """Interleaved timings at one frame size: {variant: ms runs} for each JAX attention
    implementation and torch, plus the step's flop count and sizes."""
    frames, batch = args.frames, args.batch
    rng = np.random.default_rng(0)
    video = rng.standard_normal((batch, frames, image_size, image_size, 3), dtype=np.float32)
    ids = rng.integers(1, 49406, (batch, CONTEXT)).astype(np.int32)
    ids[:, -1] = 49407
    tokens = frames * (image_size // VISION["patch_size"]) ** 2 + 1

    jv, ji = jnp.asarray(video), jnp.asarray(ids)
    runs, flops = {}, {}
    for impl in args.attention_impl:
        config = jax_config(image_size, frames, impl, args.dtype, args.scan)
        step, params, flops[impl] = jax_step(config, jv, ji)
        runs[f"JAX {impl}"] = functools.partial(
            lambda step, params: jax.block_until_ready(step(params, jv, ji)), step, params)
    n_jax = sum(x.size for x in jax.tree.leaves(params))

    tmodel = TorchVideoText(image_size, frames)
    n_torch = sum(p.numel() for p in tmodel.parameters())
    assert n_jax == n_torch, (n_jax, n_torch)
    tv = torch.from_numpy(video).permute(0, 1, 4, 2, 3).contiguous()
    ti = torch.from_numpy(ids).long()
    runs["torch"] = functools.partial(torch_step, tmodel, tv, ti)
    for run in runs.values():
        run()  # warm-up (compilation, allocator)

    ms = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved: every variant sees the same machine load
        for name, run in runs.items():
            ms[name].append(1e3 * timed(run, args.steps))
    return dict(tokens=tokens, params=n_jax, flops=flops, ms=ms)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attention_impl", nargs="+", default=["auto", "xla"],
                        choices=("auto", "xla", "cudnn", "einsum"),
                        help="JAX variants to time (the first one's flop count is used for torch)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--scan", action="store_true")
    parser.add_argument("--single_thread", action="store_true",
                        help="one thread in both (XLA flags above, torch.set_num_threads(1)): "
                             "on a loaded machine, 2-thread torch (OpenMP barriers) and XLA "
                             "slow down erratically when another process takes a core")
    args = parser.parse_args()
    if args.single_thread:
        torch.set_num_threads(1)

    print(f"jax {jax.__version__} ({jax.default_backend()}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}), torch {torch.__version__} "
          f"(intra-op threads {torch.get_num_threads()}), cpus {os.cpu_count()}")
    peaks = {}
    for n in (2048, 4096):
        peaks[n] = matmul_peak(n)
        print(f"fp32 matmul {n}^3 GFLOP/s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in peaks[n].items()))
    peak = max(max(p.values()) for p in peaks.values())
    print("| frames | tokens | model | attention | GFLOP/step | ms/step (median) | torch / this | "
          "GFLOP/s | % of matmul peak | runs (ms) |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---|")
    for size in args.sizes:
        r = bench_size(size, args)
        torch_ms = statistics.median(r["ms"]["torch"])
        for name, runs in r["ms"].items():
            impl = name.removeprefix("JAX ") if name != "torch" else "sdpa"
            gflop = r["flops"][args.attention_impl[0] if name == "torch" else impl] / 1e9
            med = statistics.median(runs)
            print(f"| {args.frames}x{size}x{size} | {r['tokens']} | "
                  f"{'torch' if name == 'torch' else 'JAX'} | {impl} | {gflop:.1f} | {med:.0f} | "
                  f"{torch_ms / med:.2f} | {gflop / med * 1e3:.1f} | "
                  f"{100 * gflop / med * 1e3 / peak:.0f} | {' '.join(f'{x:.0f}' for x in runs)} |",
                  flush=True)
    print(f"params: {r['params'] / 1e6:.2f}M (equal in both); matmul peak used: {peak:.1f} GFLOP/s")

if __name__ == "__main__":
    main()
