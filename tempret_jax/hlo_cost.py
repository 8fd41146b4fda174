"""FLOPs and memory traffic of a compiled XLA program, read from its HLO text, loops included.

XLA's own `cost_analysis()` counts a while loop's body once (a scanned stack of 12 layers is
counted as one layer), counts nothing inside most custom calls (flash attention kernels), and
is None for GPU targets compiled without a GPU. `count(hlo_text)` walks the optimised module
instead: every computation a while loop runs is multiplied by the loop's trip count (XLA's
``known_trip_count``, which `lax.scan` loops carry), fusions and calls are followed, and a
conditional counts its costliest branch.

- FLOPs are those of matrix products, 2 per multiply-add: ``dot`` and the GPU's cuBLAS calls
  (2 x output elements x contracted size), ``convolution`` and cuDNN's forward convolution
  (2 x the multiply-adds that meet a real input element: the TPU compiler writes many dots as
  convolutions with padding and dilation, whose holes it does not multiply; `_conv_flops`)
  and the attention kernels of
  `ATTENTION_KERNELS` (their L x S x head-dim products, from the query and key shapes); other
  custom calls count none. Elementwise work, a few percent in a transformer, is left
  out, as in the usual model-FLOPs convention; recomputation (remat) is in, since it runs.
- Bytes are a traffic estimate: for every instruction outside fusions (each fusion is one
  kernel), its operands read and its output written, once per trip; a dynamic slice reads
  only its slice, and a dynamic update slice (in place: XLA aliases the buffer) reads and
  writes only its update, inside fusions too (`_traffic`). Loops that fill or read a stacked
  buffer a row per trip (the TPU compiler writes such loops for microbatched, rematerialised
  stacks) would otherwise count the whole buffer on every trip.

Both are per device: an SPMD-partitioned module is one device's program.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import numpy as np

# Kernels XLA sees as opaque custom calls: (how the call is recognised, matrix products of
# L x S x head-dim each, axis of the sequence in the key operand). The Pallas TPU kernels
# (jax.experimental.pallas.ops.tpu.flash_attention: forward; backward dq and dk/dv, which
# recompute the scores) are named by the instruction; cuDNN's by the call target (inputs
# (B, T, N, H)). cuDNN's backward recomputes the scores: S, dP, dV, dQ, dK.
ATTENTION_KERNELS = (
    ("name", "flash_attention", 2, 2), ("name", "flash_mha_bwd_dq", 3, 2),
    ("name", "flash_mha_bwd_dkv", 4, 2),
    ("target", "__cudnn$fmhaSoftmaxBackward", 5, 1), ("target", "__cudnn$fmhaSoftmax", 2, 1),
)
GEMM_CALLS = ("__cublas$gemm", "__cublas$lt$matmul")  # XLA GPU's dots after its rewrite
CONV_CALLS = ("__cudnn$convForward",)
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
# Instructions that move no data of their own (aliases, control flow, bookkeeping).
NO_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call",
              "conditional", "after-all", "partition-id", "replica-id", "opt-barrier"}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_CALLED = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")


@dataclasses.dataclass(frozen=True)
class Cost:
    """flops: matrix-product FLOPs; bytes: estimated memory traffic (module docstring)."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, n: float) -> Cost:
        return Cost(self.flops * n, self.bytes * n)


@dataclasses.dataclass
class _Instruction:
    name: str
    shape: str  # the output type: 'f32[2,3]{1,0}' or a tuple '(f32[2], s32[])'
    opcode: str
    operands: list[str]
    attributes: str
    root: bool = False  # the computation's ROOT (its result)


def count(hlo_text: str) -> Cost:
    """The per-device Cost of an optimised HLO module (`Compiled.as_text()`), loops counted by
    their trip counts. Raises ValueError if the text has no ENTRY computation."""
    computations, entry = _parse(hlo_text)
    if entry is None:
        raise ValueError("hlo_cost.count: no ENTRY computation in the HLO text")
    memo: dict[tuple[str, bool], Cost] = {}
    return _cost(entry, computations, fused=False, memo=memo)


def _cost(name: str, computations: dict, fused: bool, memo: dict) -> Cost:
    if (name, fused) in memo:
        return memo[name, fused]
    instructions = computations.get(name, [])
    shapes = {i.name: i.shape for i in instructions}
    total = Cost()
    for inst in instructions:
        total = total + Cost(flops=_flops(inst, shapes))
        if not fused and inst.opcode not in NO_TRAFFIC and not inst.opcode.endswith("-done"):
            total = total + Cost(bytes=_traffic(inst, shapes, computations))
        total = total + _called_cost(inst, computations, fused, memo)
    memo[name, fused] = total
    return total


def _called_cost(inst: _Instruction, computations: dict, fused: bool, memo: dict) -> Cost:
    """What the computations ``inst`` runs cost: a loop's body and condition times its trip
    count, a conditional's costliest branch, a fusion's products (its traffic is its own)."""
    if inst.opcode == "conditional":
        branches = re.search(r"branch_computations=\{([^}]*)\}", inst.attributes)
        names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else
                 [n for key, n in _CALLED.findall(inst.attributes)])
        costs = [_cost(n, computations, fused, memo) for n in names]
        return max(costs, key=lambda c: (c.flops, c.bytes), default=Cost())
    total = Cost()
    for key, called in _CALLED.findall(inst.attributes):
        if key == "to_apply" and inst.opcode != "call":  # a reducer or comparator: no products
            continue
        inner = _cost(called, computations, fused or inst.opcode == "fusion", memo)
        loops = _trip_count(inst, computations) if inst.opcode == "while" else 1
        total = total + inner * loops
    return total


def _traffic(inst: _Instruction, shapes: dict, computations: dict) -> float:
    """Bytes an instruction outside fusions reads and writes (module docstring)."""
    if inst.opcode == "dynamic-update-slice" and len(inst.operands) > 1:  # in place
        return 2 * _bytes(shapes.get(inst.operands[1], ""))  # the update read, then written
    if inst.opcode == "dynamic-slice":
        return 2 * _bytes(inst.shape)
    if inst.opcode == "fusion":
        return _fusion_traffic(inst, shapes, computations)
    return _bytes(inst.shape) + sum(_bytes(shapes.get(o, "")) for o in inst.operands)


def _fusion_traffic(inst: _Instruction, shapes: dict, computations: dict) -> float:
    """A fusion's operands read and results written, where an operand the fused computation
    only dynamic-slices is read as its slices, one it only updates in place is not read, and a
    result that is such an update is written as its update."""
    called = re.search(r"calls=%?([\w.\-]+)", inst.attributes)
    body = {i.name: i for i in computations.get(called.group(1), [])} if called else {}
    params = {int(i.operands[0]): i.name for i in body.values()
              if i.opcode == "parameter" and i.operands and i.operands[0].isdigit()}
    uses: dict[str, list[tuple[_Instruction, int]]] = {}
    for i in body.values():
        for position, operand in enumerate(i.operands):
            uses.setdefault(operand, []).append((i, position))

    def only(used, opcode):  # every use is as the sliced or updated buffer
        return bool(used) and all(u.opcode == opcode and at == 0 for u, at in used)

    read = 0.0
    for index, operand in enumerate(inst.operands):
        used = uses.get(params.get(index, ""), [])
        if only(used, "dynamic-slice"):
            read += sum(_bytes(u.shape) for u, _ in used)
        elif not only(used, "dynamic-update-slice"):
            read += _bytes(shapes.get(operand, ""))
    root = next((i for i in body.values() if i.root), None)
    if root is None:
        return read + _bytes(inst.shape)
    results = [body.get(o) for o in root.operands] if root.opcode == "tuple" else [root]
    return read + sum(
        _bytes(body[r.operands[1]].shape) if r.opcode == "dynamic-update-slice"
        and len(r.operands) > 1 and r.operands[1] in body else _bytes(r.shape)
        for r in results if r is not None)


def _trip_count(inst: _Instruction, computations: dict) -> int:
    """XLA's ``known_trip_count`` of a while loop; else (the TPU compiler leaves it out) the
    bound of its condition ``i < N``, a loop from 0 by 1 as `lax.scan` and `fori_loop` write
    it: the one integer constant of the condition; else 1."""
    found = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attributes)
    if found:
        return int(found.group(1))
    condition = re.search(r"condition=%?([\w.\-]+)", inst.attributes)
    body = computations.get(condition.group(1), []) if condition else []
    bounds = [i.operands[0] for i in body if i.opcode == "constant" and
              re.match(r"[su](32|64)\[\]", i.shape)]
    return int(bounds[0]) if len(bounds) == 1 and bounds[0].lstrip("-").isdigit() else 1


def _flops(inst: _Instruction, shapes: dict) -> float:
    target = re.search(r'custom_call_target="([^"]*)"', inst.attributes)
    target = target.group(1) if inst.opcode == "custom-call" and target else ""
    if inst.opcode == "dot" or target in GEMM_CALLS:
        lhs = _dims(shapes.get(inst.operands[0], ""))
        axes = (re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.attributes) or
                re.search(r'"lhs_contracting_dimensions":\[([0-9,"]*)\]', inst.attributes))
        contracted = ([lhs[int(a)] for a in axes.group(1).replace('"', "").split(",") if a]
                      if axes else [])
        return 2.0 * math.prod(_dims(inst.shape)) * math.prod(contracted)
    if inst.opcode == "convolution" or target in CONV_CALLS:
        return _conv_flops(inst, shapes)
    return _attention_flops(inst, target, shapes) if target else 0.0


def _conv_flops(inst: _Instruction, shapes: dict) -> float:
    """2 x output batch x output features x kernel input features x, per spatial dimension,
    the (output position, window position) pairs that read a real (not padded, not a
    dilation hole) input element."""
    lhs, rhs = (_dims(shapes.get(o, "")) for o in inst.operands[:2])
    out = _dims(inst.shape)
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attributes)
    lhs_l, rhs_l, out_l = labels.groups()
    window = dict(re.findall(r"(\w+)=([\d_x]+)", _window(inst.attributes)))
    spatial = sorted(c for c in out_l if c.isdigit())

    def per_dim(key, default):  # one value per spatial dimension, 'AxB' in the text
        return window.get(key, "x".join([default] * len(spatial))).split("x")

    total = 2.0 * out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")]
    for d, size, stride, pad, lhs_dilate, rhs_dilate in zip(
            spatial, per_dim("size", "1"), per_dim("stride", "1"), per_dim("pad", "0_0"),
            per_dim("lhs_dilate", "1"), per_dim("rhs_dilate", "1")):
        total *= _valid_taps(out[out_l.index(d)], int(size), int(stride), int(pad.split("_")[0]),
                             lhs[lhs_l.index(d)], int(lhs_dilate), int(rhs_dilate))
    return total


def _window(attributes: str) -> str:
    found = re.search(r"window=\{([^}]*)\}", attributes)
    return found.group(1) if found else ""


@functools.lru_cache(maxsize=4096)
def _valid_taps(out: int, size: int, stride: int, pad_low: int, length: int, lhs_dilate: int,
                rhs_dilate: int) -> int:
    """(output position, window position) pairs of one dimension that land on an input element."""
    at = (np.arange(out)[:, None] * stride + np.arange(size)[None, :] * rhs_dilate - pad_low)
    valid = (at >= 0) & (at % lhs_dilate == 0) & (at <= (length - 1) * lhs_dilate)
    return int(valid.sum())


def _attention_flops(inst: _Instruction, target: str, shapes: dict) -> float:
    for by, key, products, seq_axis in ATTENTION_KERNELS:
        if (inst.name.startswith(key) if by == "name" else target == key):
            query = _dims(shapes.get(inst.operands[0], ""))
            keys = _dims(shapes.get(inst.operands[1], ""))
            return 2.0 * products * math.prod(query) * keys[seq_axis]
    return 0.0


def _dims(shape: str) -> list[int]:
    """The dimensions of the first array type in ``shape`` ([] for none or a scalar)."""
    found = _ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(",") if d] if found else []


def _bytes(shape: str) -> float:
    """Bytes of every array in a type (a tuple's elements summed)."""
    return float(sum(DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
                     for dtype, dims in _ARRAY.findall(shape)))


def _parse(text: str) -> tuple[dict[str, list[_Instruction]], str | None]:
    """{computation name: its instructions}, and the ENTRY computation's name."""
    computations: dict[str, list[_Instruction]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if line.endswith("{") and not line.startswith(" "):
            header = line.split()
            is_entry = header[0] == "ENTRY"
            current = header[1 if is_entry else 0].lstrip("%")
            computations[current] = []
            entry = current if is_entry else entry
        elif current is not None and (found := _INSTRUCTION.match(line)):
            inst = _instruction(found.group(1), line[found.end():])
            inst.root = "ROOT " in line[:found.end()]
            computations[current].append(inst)
    return computations, entry


def _instruction(name: str, rest: str) -> _Instruction:
    """'f32[2]{0} add(%a, %b), attrs' (the text after 'name = ') -> an _Instruction."""
    shape_end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:shape_end], rest[shape_end:].lstrip()
    open_at = rest.index("(")
    close_at = _closing(rest, open_at)
    operands = [_operand_name(o) for o in _split_top(rest[open_at + 1:close_at])]
    return _Instruction(name, shape, rest[:open_at], operands, rest[close_at + 1:])


def _operand_name(text: str) -> str:
    """'%a' or 'f32[2]{0} %a' (operand types printed) -> 'a'."""
    return text.split()[-1].lstrip("%") if text.strip() else ""


def _split_top(text: str) -> list[str]:
    """Splits at commas outside brackets, braces and parentheses; drops /*index=5*/ notes."""
    text = re.sub(r"/\*[^*]*\*/", "", text)
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _closing(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at ``open_at``."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += text[i] in "([{"
        depth -= text[i] in ")]}"
        if depth == 0:
            return i
    raise ValueError(f"hlo_cost: unbalanced brackets in {text[:80]!r}")
