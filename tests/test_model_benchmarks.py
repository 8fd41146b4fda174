"""The model benchmarks (tools/probe_xla_cpu.py, tools/bench_model.py) time every case in JAX
and in torch and print it in their table."""

import pathlib
import subprocess
import sys

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "probe_xla_cpu.py"


def test_the_table_has_a_row_per_case_with_times_and_ratios():
    out = subprocess.run([sys.executable, str(TOOL), "--scale", "0.04", "--repeats", "1"],
                         stdout=subprocess.PIPE, text=True, check=True, timeout=600).stdout
    header = next(line for line in out.splitlines() if line.startswith("| probe |"))
    assert "JAX tuned ms" in header and "JAX tuned+ynn_eltwise ms" in header
    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if line.startswith(("| dot ", "| eltwise ", "| attention "))]
    cases = [r[1].strip() for r in rows]
    assert sum(c.endswith("float32") for c in cases) == 3
    assert sum(c.endswith("bfloat16") for c in cases) == 3
    assert {"exp", "softmax", "quick_gelu"} <= set(cases)
    assert sum(c.startswith("forward+backward") for c in cases) == 2
    for row in rows:  # 2 JAX times, torch's, 2 ratios: all positive numbers
        assert all(float(x) > 0 for x in row[2:7]), row
    dot_float32 = [r[7].strip() for r in rows if r[1].strip().endswith("float32")]
    assert all(cell.count(", -") == 2 for cell in dot_float32)  # bf16 question: float32 only


def test_bench_model_runs_both_models_in_bfloat16():
    tool = TOOL.parent / "bench_model.py"
    out = subprocess.run([sys.executable, str(tool), "--sizes", "16", "--repeats", "1",
                          "--steps", "1", "--jax", "tuned", "--torch", "eager",
                          "--dtype", "bfloat16"],
                         stdout=subprocess.PIPE, text=True, check=True, timeout=600).stdout
    assert "compute dtype bfloat16" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 8x16x16 ")]
    assert [(r[2].strip(), r[3].strip()) for r in rows] == [("jax", "tuned (auto)"),
                                                            ("torch", "eager")]
    assert all(float(r[5]) > 0 for r in rows)
