"""Train-step speed of the video+text dual encoder: JAX/Flax (ours) vs the same model in PyTorch.

    python tools/bench_model.py [--threads 2] [--sizes 32 64] [--repeats 7] [--steps 3]
        [--jax default tuned dp2] [--torch eager compile] [--attention_impl auto]
        [--dtype float32]

One step = forward + backward (gradients of every parameter) of the symmetric InfoNCE loss over
the batch (`global_loss.make_global_loss('info_nce')`, the trainer's loss code; the cost class of the
SMS loss: one B x B similarity, negligible next to the towers). The model: video ViT (patch 8,
width 192, 4 layers, 3 heads of 64, joint attention over T*N + 1 tokens, learned spatial +
temporal embeddings) and CLIP text tower (width 128, 2 layers, 2 heads, 77 tokens, causal),
quick-GELU MLPs of 4x width, embedding 128, batch 8. Frames 8 x 32 x 32 give 129 video tokens,
8 x 64 x 64 give 513. The PyTorch model below has the same parameters (counts checked) and the
same computation, attention through `F.scaled_dot_product_attention` (its fused CPU kernel).

Every variant runs in its own worker process, so each gets its own environment (XLA flags,
allocator, host device count) and thread count: `--threads 1` pins every worker to one core
(`os.sched_setaffinity`: XLA sizes its thread pool from the affinity mask; the XLA flag
`intra_op_parallelism_threads` is not a flag at all and is silently ignored) and sets
`torch.set_num_threads(1)`; `--threads 2` gives both cores to every worker. The parent sends
"run" to one worker at a time, round-robin (JAX, JAX, ..., torch, ...), so every variant sees
the same machine load and the others sit idle; each run times `--steps` steps and keeps their
median; the table reports the median over runs and lists all runs.

JAX variants:
  default  one device, stock settings.
  tuned    one device, XLA buffers kept between steps (glibc malloc: one arena, no mmap, no
           trimming): XLA:CPU allocates each step's temporaries as one block (490 MB at 513
           tokens) that glibc otherwise mmaps and unmaps every step, so every step page-faults
           it in again (137k minor faults, ~20% of the CPU time); plus XLA:CPU flags
           `TUNED_XLA_FLAGS` (XNNPACK for the remaining ops, 512-bit vectors in fusions).
  dp2      `tuned` on 2 XLA host devices (`--xla_force_host_platform_device_count=2`), the
           trainer's mesh: parameters replicated, the batch sharded over `data`, the loss over
           the global batch; the worker checks that its loss and gradients equal the 1-device
           step's. (XLA:CPU devices share one thread pool; a device cannot be made 1-threaded.)
  ynn_eltwise  `tuned` plus `YNN_ELTWISE_XLA_FLAGS`: elementwise and reduce fusions also go to
           YNNPACK (its `exp` is ~3x XLA's: tools/probe_xla_cpu.py), not only the dots.
Torch variants: eager, compile (`torch.compile`, inductor on CPU).

`--dtype bfloat16`: the JAX model's compute dtype (`model_config().dtype`; parameters stay
float32) and torch's `torch.autocast('cpu', torch.bfloat16)` around the forward.

GFLOP/s: XLA's cost analysis of each JAX worker's compiled 1-device step (torch rows use the
first JAX worker's count) over time, against the fp32 matmul peak measured by the workers (torch and JAX, 2048^3 and 4096^3, best of
5, under the same thread count; the highest is used).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import version

import numpy as np

EMBED, CONTEXT, FRAMES, BATCH = 128, 77, 8, 8
VISION = dict(patch_size=8, width=192, layers=4, heads=3)
TEXT = dict(width=128, layers=2, heads=2)

CACHED_MALLOC = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                 "glibc.malloc.trim_threshold=17179869184")
TUNED_XLA_FLAGS = "--xla_cpu_use_xnnpack=true --xla_cpu_prefer_vector_width=512"
YNN_ELTWISE_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
JAX_VARIANTS = {  # name: (host devices, GLIBC_TUNABLES, XLA_FLAGS)
    "default": (1, "", ""),
    "tuned": (1, CACHED_MALLOC, TUNED_XLA_FLAGS),
    "dp2": (2, CACHED_MALLOC, TUNED_XLA_FLAGS),
    "ynn_eltwise": (1, CACHED_MALLOC, f"{TUNED_XLA_FLAGS} {YNN_ELTWISE_XLA_FLAGS}"),
}
TORCH_VARIANTS = ("eager", "compile")


def batch(image_size: int):
    """The benchmark batch: video (B, T, H, W, 3) float32, ids (B, 77) int32 ending in EOT."""
    rng = np.random.default_rng(0)
    video = rng.standard_normal((BATCH, FRAMES, image_size, image_size, 3), dtype=np.float32)
    ids = rng.integers(1, 49406, (BATCH, CONTEXT)).astype(np.int32)
    ids[:, -1] = 49407
    return video, ids


def timed(fn, steps: int) -> list:
    """Milliseconds of each of `steps` calls of fn (which must block until done)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


# ---------------------------------------------------------------------------------------------
# JAX worker (ours).


class JaxWorker:
    """The compiled train step of one JAX variant at one frame size."""

    def __init__(self, image_size: int, variant: str, attention_impl: str, dtype: str):
        import jax
        import jax.numpy as jnp
        from tempret_jax import global_loss, sharding
        from tempret_jax.models.retrieval import RetrievalModel, model_config

        self.jax, self.jnp = jax, jnp
        c = model_config("tiny")
        c.embed_dim = EMBED
        c.attention_impl = attention_impl
        c.dtype = dtype
        c.vision.update(image_size=image_size, num_frames=FRAMES, **VISION)
        c.text.update(context_length=CONTEXT, **TEXT)
        model = RetrievalModel.from_config(c)
        video, ids = batch(image_size)
        params = jax.jit(model.init)(jax.random.key(0), video[:1], ids[:1])["params"]
        self.params_count = sum(x.size for x in jax.tree.leaves(params))

        def make_step(mesh):
            loss = global_loss.make_global_loss("info_nce", mesh, sharding.BATCH_AXES)

            def loss_fn(p, video, ids):
                out = model.apply({"params": p}, video, ids)
                return loss(out["video"], out["text"], temperature=1 / out["logit_scale"])
            if mesh is None:
                return jax.jit(jax.value_and_grad(loss_fn))
            rep, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
            return jax.jit(jax.value_and_grad(loss_fn), in_shardings=(rep, rows, rows),
                           out_shardings=(rep, rep))

        single = make_step(None)
        cost = single.lower(params, video, ids).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        self.flops = float(cost["flops"])
        self.check = None
        devices = JAX_VARIANTS[variant][0]
        if devices == 1:
            self.step, self.args = single, (params, jnp.asarray(video), jnp.asarray(ids))
        else:
            mesh = sharding.make_mesh(data=devices)
            rep, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
            self.step = make_step(mesh)
            self.args = (jax.device_put(params, rep), jax.device_put(video, rows),
                         jax.device_put(ids, rows))
            self.check = self._check_equal(single(params, video, ids), self.step(*self.args))
        self.run(1)  # warm-up (compilation, allocator)

    def _check_equal(self, reference, sharded) -> dict:
        """The data-parallel loss and gradients vs the 1-device step's. Gradient difference:
        the largest |difference| over all parameters relative to the largest |gradient|
        (a per-parameter ratio means nothing for gradients that are mathematically zero,
        e.g. the key biases', whose values are rounding noise)."""
        jnp = self.jnp
        (loss_1, grads_1), (loss_n, grads_n) = reference, sharded
        leaves_1, leaves_n = self.jax.tree.leaves(grads_1), self.jax.tree.leaves(grads_n)
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves_1, leaves_n))
        scale = max(float(jnp.max(jnp.abs(a))) for a in leaves_1)
        return {"loss_1_device": float(loss_1), "loss_data_parallel": float(loss_n),
                "max_grad_diff_over_max_grad": diff / scale}

    def run(self, steps: int) -> list:
        return timed(lambda: self.jax.block_until_ready(self.step(*self.args)), steps)

    def peak(self) -> dict:
        jnp = self.jnp
        mm = self.jax.jit(jnp.matmul)
        result = {}
        for n in (2048, 4096):
            a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
            mm(a, a).block_until_ready()
            best = min(timed(lambda: mm(a, a).block_until_ready(), 5))
            result[n] = 2 * n ** 3 / best / 1e6
        return result


# ---------------------------------------------------------------------------------------------
# Torch worker: the same model in PyTorch.


def torch_model(image_size: int):
    """The PyTorch model of the same architecture (the loss is its forward)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

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

    class VideoText(nn.Module):
        def __init__(self):
            super().__init__()
            d, p = VISION["width"], VISION["patch_size"]
            grid = image_size // p
            self.conv1 = nn.Conv2d(3, d, p, p, bias=False)
            self.class_embedding = nn.Parameter(torch.randn(d) * d ** -0.5)
            self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, d) * d ** -0.5)
            self.temporal_embedding = nn.Parameter(torch.zeros(FRAMES, d))
            self.ln_pre, self.ln_post = nn.LayerNorm(d), nn.LayerNorm(d)
            self.visual = nn.Sequential(*[Block(d, VISION["heads"])
                                          for _ in range(VISION["layers"])])
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

    return VideoText()


class TorchWorker:
    """The train step of one torch variant at one frame size."""

    def __init__(self, image_size: int, variant: str, dtype: str):
        import torch
        self.torch = torch
        self.autocast = dict(device_type="cpu", dtype=torch.bfloat16,
                             enabled=dtype == "bfloat16")
        self.model = torch_model(image_size)
        self.params_count = sum(p.numel() for p in self.model.parameters())
        self.forward = torch.compile(self.model) if variant == "compile" else self.model
        video, ids = batch(image_size)
        self.video = torch.from_numpy(video).permute(0, 1, 4, 2, 3).contiguous()
        self.ids = torch.from_numpy(ids).long()
        self.flops, self.check = None, None
        self.run(2)  # warm-up (compilation, allocator)

    def _step(self):
        self.model.zero_grad(set_to_none=True)
        with self.torch.autocast(**self.autocast):
            loss = self.forward(self.video, self.ids)
        loss.backward()

    def run(self, steps: int) -> list:
        return timed(self._step, steps)

    def peak(self) -> dict:
        result = {}
        for n in (2048, 4096):
            a = self.torch.from_numpy(
                np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
            best = min(timed(lambda: a @ a, 5))
            result[n] = 2 * n ** 3 / best / 1e6
        return result


def serve(args):
    """Worker process: build the variant, report it, then answer 'run N' / 'peak' / 'exit'."""
    framework, variant = args.worker.split(":")
    if framework == "jax":
        worker = JaxWorker(args.size, variant, args.attention_impl[0], args.dtype)
    else:
        import torch
        torch.set_num_threads(args.threads)
        worker = TorchWorker(args.size, variant, args.dtype)
    print(json.dumps(dict(params=worker.params_count, flops=worker.flops, check=worker.check)),
          flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "run":
            print(json.dumps(worker.run(int(command[1]))), flush=True)
        elif command[0] == "peak":
            print(json.dumps(worker.peak()), flush=True)
        else:
            return


# ---------------------------------------------------------------------------------------------
# Parent: start the workers, interleave their runs, print the table.


class Worker:
    """A worker process of this script and its line protocol."""

    def __init__(self, framework, variant, size, attention_impl, args):
        self.name = f"{framework}:{variant}"
        env = dict(os.environ)
        if framework == "jax":
            devices, tunables, flags = JAX_VARIANTS[variant]
            env["XLA_FLAGS"] = " ".join(
                f for f in (env.get("XLA_FLAGS", ""), flags,
                            f"--xla_force_host_platform_device_count={devices}") if f)
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            self.label = f"{variant} ({attention_impl})"
        else:
            self.label = variant
        self.framework = framework
        command = [sys.executable, __file__, "--worker", self.name, "--size", str(size),
                   "--threads", str(args.threads), "--dtype", args.dtype]
        if attention_impl:
            command += ["--attention_impl", attention_impl]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def ask(self, command: str = None):
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.process.wait()})")
        return json.loads(line)

    def close(self):
        self.process.stdin.write("exit\n")
        self.process.stdin.close()
        self.process.wait()


def bench_size(size, args, peaks):
    """Interleaved runs of every variant at one frame size -> rows of the table."""
    workers = [Worker("jax", v, size, impl, args)
               for v in args.jax for impl in args.attention_impl]
    workers += [Worker("torch", v, size, None, args) for v in args.torch]
    info = [w.ask() for w in workers]  # they compile concurrently; nothing is timed yet
    counts = {i["params"] for i in info}
    assert len(counts) == 1, f"parameter counts differ: {counts}"
    jax_flops = next(i["flops"] for i in info if i["flops"])  # torch rows: the same count
    for w, i in zip(workers, info):
        if i["check"]:
            print(f"{size}px {w.name}: data-parallel step vs 1 device: {i['check']}")
    if not peaks:
        for w in {w.framework: w for w in workers}.values():
            peaks[w.framework] = {int(k): v for k, v in w.ask("peak").items()}
    runs = {w: [] for w in workers}
    for _ in range(args.repeats):
        for w in workers:
            runs[w].append(statistics.median(w.ask(f"run {args.steps}")))
    for w in workers:
        w.close()
    tokens = FRAMES * (size // VISION["patch_size"]) ** 2 + 1
    return [dict(size=size, tokens=tokens, framework=w.framework, variant=w.label,
                 flops=i["flops"] or jax_flops, runs=runs[w], params=i["params"])
            for w, i in zip(workers, info)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, choices=(1, 2),
                        help="cores per worker (1: pinned to one core, torch 1 thread)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--jax", nargs="*", default=["default", "tuned", "dp2"],
                        choices=tuple(JAX_VARIANTS))
    parser.add_argument("--torch", nargs="*", default=list(TORCH_VARIANTS),
                        choices=TORCH_VARIANTS)
    parser.add_argument("--attention_impl", nargs="+", default=["auto"],
                        choices=("auto", "xla", "einsum"),
                        help="JAX attention implementations (each JAX variant with each)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of both models (parameters stay float32)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads == 1:  # before JAX or torch start their thread pools
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.worker:
        return serve(args)
    if not (args.torch and args.jax):
        parser.error("need at least one JAX and one torch variant")

    print(f"jax {version('jax')}, torch {version('torch')}, threads per worker "
          f"{args.threads} (cpus {sorted(os.sched_getaffinity(0))}), compute dtype "
          f"{args.dtype}, XLA_FLAGS of the tuned "
          f"variants {TUNED_XLA_FLAGS!r}, GLIBC_TUNABLES {CACHED_MALLOC!r}", flush=True)
    peaks = {}
    rows = []
    for size in args.sizes:
        rows += bench_size(size, args, peaks)
    peak = max(v for p in peaks.values() for v in p.values())
    print("fp32 matmul GFLOP/s (2048^3 / 4096^3): " + ", ".join(
        f"{k} {p[2048]:.1f} / {p[4096]:.1f}" for k, p in peaks.items()))
    print("| frames | tokens | model | variant | GFLOP/step | ms/step (median) | "
          "best torch / this | GFLOP/s | % of matmul peak | runs (ms) |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---|")
    for size in args.sizes:
        here = [r for r in rows if r["size"] == size]
        best_torch = min(statistics.median(r["runs"]) for r in here if r["framework"] == "torch")
        for r in here:
            med, gflop = statistics.median(r["runs"]), r["flops"] / 1e9
            print(f"| {FRAMES}x{size}x{size} | {r['tokens']} | {r['framework']} | {r['variant']} "
                  f"| {gflop:.1f} | {med:.0f} | {best_torch / med:.2f} | {gflop / med * 1e3:.1f} "
                  f"| {100 * gflop / med * 1e3 / peak:.0f} | "
                  f"{' '.join(f'{x:.0f}' for x in r['runs'])} |")
    print(f"params: {rows[0]['params'] / 1e6:.2f}M (equal in both); matmul peak used: "
          f"{peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
