"""Single operations of the train step in XLA:CPU vs PyTorch: where the step's gap comes from.

    python tools/probe_xla_cpu.py [--threads 2] [--repeats 15] [--scale 1.0]

`tools/bench_model.py` times the whole step; this tool times the pieces the step is made of, at
the 513-token size (batch 8, width 192, 3 heads of 64, MLP 768), so that the gap can be followed
from one jaxlib version to the next (BENCHMARKS.md, issue 3):

  dot        the three products of a dense layer, x (M, K) @ w (K, N) forward, dy @ w^T (input
             gradient) and x^T @ dy (weight gradient; it contracts the rows, the major dim of
             both operands), in float32 and in bfloat16 with float32 accumulation; for JAX also
             whether XLA gave the product to YNNPACK and whether it kept it in bfloat16.
  eltwise    exp, softmax over the last axis and quick-GELU of a (24, 513, 513) float32 array
             (the attention scores of one layer).
  attention  softmax attention forward + backward at (8, 513, 3, 64): the repository's CPU
             attention (`layers.dot_product_attention`, einsum with a custom VJP) and
             `jax.nn.dot_product_attention(implementation='xla')` vs torch's fused SDPA.

JAX runs in worker processes, one per XLA flag set (`bench_model.TUNED_XLA_FLAGS` and the same
plus YNNPACK elementwise fusions), torch in its own; all with bench_model's cached-malloc setting,
so that no call pays for page faults on fresh output memory and the rows compare the kernels.
Every row is the median over `--repeats` calls after a warm-up.
`--scale` shrinks the token count (tests use it); the table names the shapes used.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np

from bench_model import CACHED_MALLOC, TUNED_XLA_FLAGS, YNN_ELTWISE_XLA_FLAGS, timed

JAX_FLAG_SETS = {"tuned": TUNED_XLA_FLAGS,
                 "tuned+ynn_eltwise": f"{TUNED_XLA_FLAGS} {YNN_ELTWISE_XLA_FLAGS}"}
BATCH, HEADS, HEAD_DIM, MLP = 8, 3, 64, 768
DOT_FORMS = {  # name: (lhs, rhs, XLA contracting dims, the torch product) over x, w, dy
    "x @ w (forward)": ("x", "w", ((1,), (0,)), lambda t: t["x"] @ t["w"]),
    "dy @ w^T (input grad)": ("dy", "w", ((1,), (1,)), lambda t: t["dy"] @ t["w"].t()),
    "x^T @ dy (weight grad)": ("x", "dy", ((0,), (0,)), lambda t: t["x"].t() @ t["dy"]),
}
ELTWISE = ("exp", "softmax", "quick_gelu")
ATTENTION = ("einsum", "xla")  # JAX implementations, each against torch's SDPA


def shapes(scale: float) -> dict:
    """Token count and the derived shapes at `scale` (1.0: 513 tokens)."""
    tokens = max(8, int(round(513 * scale)))
    return dict(tokens=tokens, m=BATCH * tokens, k=HEADS * HEAD_DIM, n=MLP,
                scores=(BATCH * HEADS, tokens, tokens), qkv=(BATCH, tokens, HEADS, HEAD_DIM))


def dot_operand_dtypes(hlo: str) -> list:
    """[(lhs dtype, rhs dtype)] of every dot in compiled HLO text, e.g. [('bf16', 'bf16')]."""
    found, types = [], {}
    for line in hlo.splitlines():
        if line.rstrip().endswith("{"):  # a new computation: its own instruction names
            types = {}
        define = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+)\[", line)
        if define:
            types[define.group(1)] = define.group(2)
        dot = re.search(r" dot\(%([^,\s]+), %([^)\s]+)\)", line)
        if dot:
            found.append((types.get(dot.group(1)), types.get(dot.group(2))))
    return found


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of `repeats` calls of fn (which blocks until done), after one warm-up."""
    fn()
    return statistics.median(timed(fn, repeats))


def jax_probes(s: dict, repeats: int) -> list:
    """Rows of every probe in JAX under this process's XLA_FLAGS."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from tempret_jax.models import layers

    rng = np.random.default_rng(0)
    rows = []
    arrays = dict(x=(s["m"], s["k"]), w=(s["k"], s["n"]), dy=(s["m"], s["n"]))
    for dtype in ("float32", "bfloat16"):
        values = {k: jnp.asarray(rng.standard_normal(v, np.float32), dtype)
                  for k, v in arrays.items()}
        for form, (lhs, rhs, contracting, _) in DOT_FORMS.items():
            fn = jax.jit(lambda a, b, c=contracting: lax.dot_general(
                a, b, (c, ((), ())), preferred_element_type=jnp.float32))
            a, b = values[lhs], values[rhs]
            hlo = fn.lower(a, b).compile().as_text()
            rows.append(dict(probe="dot", case=f"{form} {dtype}",
                             ms=median_ms(lambda: fn(a, b).block_until_ready(), repeats),
                             ynnpack="__ynn_fusion" in hlo,
                             kept_bf16=None if dtype == "float32" else
                             all(t == ("bf16", "bf16") for t in dot_operand_dtypes(hlo))))
    scores = jnp.asarray(rng.standard_normal(s["scores"], np.float32))
    ops = dict(exp=jnp.exp, softmax=lambda x: jax.nn.softmax(x, axis=-1),
               quick_gelu=layers.quick_gelu)
    for name in ELTWISE:
        fn = jax.jit(ops[name])
        rows.append(dict(probe="eltwise", case=name,
                         ms=median_ms(lambda: fn(scores).block_until_ready(), repeats)))
    q, k, v, g = (jnp.asarray(rng.standard_normal(s["qkv"], np.float32)) for _ in range(4))
    for impl in ATTENTION:
        grad = jax.jit(jax.grad(lambda q, k, v, i=impl: jnp.sum(
            layers.dot_product_attention(q, k, v, implementation=i) * g), argnums=(0, 1, 2)))
        rows.append(dict(probe="attention", case=f"forward+backward ({impl})", torch="SDPA",
                         ms=median_ms(lambda: jax.block_until_ready(grad(q, k, v)), repeats)))
    return rows


def torch_probes(s: dict, repeats: int, threads: int) -> list:
    """Rows of every probe in torch (the comparison)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    arrays = dict(x=(s["m"], s["k"]), w=(s["k"], s["n"]), dy=(s["m"], s["n"]))
    for dtype in ("float32", "bfloat16"):
        t = {k: torch.from_numpy(rng.standard_normal(v, np.float32)).to(getattr(torch, dtype))
             for k, v in arrays.items()}
        for form, (*_, product) in DOT_FORMS.items():
            rows.append(dict(probe="dot", case=f"{form} {dtype}",
                             ms=median_ms(lambda f=product: f(t), repeats)))
    scores = torch.from_numpy(rng.standard_normal(s["scores"], np.float32))
    ops = dict(exp=torch.exp, softmax=lambda x: torch.softmax(x, -1),
               quick_gelu=lambda x: x * torch.sigmoid(1.702 * x))
    for name in ELTWISE:
        rows.append(dict(probe="eltwise", case=name,
                         ms=median_ms(lambda f=ops[name]: f(scores), repeats)))
    # SDPA takes (B, H, L, K); the JAX probe's (B, L, H, K) arrays, transposed as bench_model does.
    q, k, v, g = (torch.from_numpy(rng.standard_normal(s["qkv"], np.float32)).transpose(1, 2)
                  .contiguous().requires_grad_() for _ in range(4))

    def step():
        q.grad = k.grad = v.grad = None
        (F.scaled_dot_product_attention(q, k, v) * g).sum().backward()
    rows.append(dict(probe="attention", case="SDPA", ms=median_ms(step, repeats)))
    return rows


def run_worker(name: str, args) -> list:
    """Rows from a worker process of this script for JAX flag set `name`, or 'torch'."""
    env = dict(os.environ, GLIBC_TUNABLES=CACHED_MALLOC)
    if name != "torch":
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), JAX_FLAG_SETS[name]) if f)
    command = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--scale", str(args.scale)]
    out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def table(results: dict) -> str:
    """Markdown table: one row per JAX case, ms per JAX flag set and of the torch case it is
    compared with (the same case, or the one its row names under 'torch'), and the ratios."""
    jax_sets = [n for n in results if n != "torch"]
    torch_ms = {(r["probe"], r["case"]): r["ms"] for r in results["torch"]}
    head = ("| probe | case | " + " | ".join(f"JAX {n} ms" for n in jax_sets) + " | torch ms | "
            + " | ".join(f"torch / JAX {n}" for n in jax_sets)
            + " | JAX: YNNPACK?, kept bf16? (per flag set) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, first in enumerate(results[jax_sets[0]]):
        mine = [results[n][i] for n in jax_sets]
        ref = torch_ms[first["probe"], first.get("torch", first["case"])]
        where = " / ".join(
            f"{'yes' if r['ynnpack'] else 'no'}, "
            + ("-" if r["kept_bf16"] is None else "yes" if r["kept_bf16"] else "no")
            for r in mine if "ynnpack" in r)
        case = first["case"] + (f" vs torch {first['torch']}" if "torch" in first else "")
        lines.append(f"| {first['probe']} | {case} | "
                     + " | ".join(f"{r['ms']:.2f}" for r in mine) + f" | {ref:.2f} | "
                     + " | ".join(f"{ref / r['ms']:.2f}" for r in mine) + f" | {where} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, choices=(1, 2),
                        help="cores per worker (1: pinned to one core, torch 1 thread)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="token count relative to 513 (shapes shrink with it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads == 1:  # before JAX or torch start their thread pools
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    s = shapes(args.scale)
    if args.worker:
        rows = (torch_probes(s, args.repeats, args.threads) if args.worker == "torch"
                else jax_probes(s, args.repeats))
        print(json.dumps(rows))
        return None
    results = {name: run_worker(name, args) for name in (*JAX_FLAG_SETS, "torch")}
    print(f"threads per worker {args.threads}; dot M x K x N = {s['m']} x {s['k']} x {s['n']}; "
          f"eltwise {s['scores']}; attention (B, L, H, K) = {s['qkv']}; median of "
          f"{args.repeats}")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
