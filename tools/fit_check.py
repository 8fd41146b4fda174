"""Does a config's train step fit an accelerator? Compiled ahead of time, no accelerator needed.

    python tools/fit_check.py --config configs/ek100_tempret_vitb16.py [--config ...]
        [--target v5e:2x2] [--target v5p:2x2x1] [--global_batch 32] [--set model.remat=True]
        [--metrics 9668x3842 --metrics 38672x15368]

For every config and TPU topology (libtpu installed: `pip install -e '.[tpu]'`) or simulated GPU
(`--target h100`: the CUDA plugin installed, no GPU), builds the real mesh and train step
(`tempret_jax.aot`), compiles it and prints per-device argument, output, temporary and peak
bytes, whether the peak fits the device's memory (`aot.memory_of`), XLA's FLOPs (a scanned layer
stack counts its body once, custom kernels such as flash attention not at all: read it as a
lower bound) and the compile time.
A compile that fails (e.g. out of memory) is a row with its error. `--set key=value` overrides
config keys (Python literals). `--metrics VxT` adds a row for the evaluation's metric program
(`aot.metrics_memory`: mAP and nDCG of both directions of a V x T similarity matrix, rows split
over the chips). Exit 0 when every row fits, 1 otherwise.
"""

import argparse
import ast
import importlib.util
import pathlib
import sys

from tempret_jax import aot


def load_config(path: str):
    """configs/X.py[:arg] -> its ConfigDict."""
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location(pathlib.Path(file).stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config, overrides) -> None:
    for item in overrides:
        key, _, value = item.partition("=")
        *blocks, name = key.split(".")
        node = config
        for block in blocks:
            node = node[block]
        try:
            node[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            node[name] = value


def matrix_shape(text: str) -> tuple[int, int]:
    """'9668x3842' -> (9668, 3842)."""
    try:
        videos, texts = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VxT, e.g. 9668x3842, got {text!r}") from None
    if videos < 1 or texts < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return videos, texts


def row(name: str, target: str, memory: aot.StepMemory) -> tuple[str, bool]:
    capacity = aot.memory_of(target)
    gib = lambda n: f"{n / aot.GIB:8.2f}"  # noqa: E731
    if memory.error:
        return f"{name:<28} {target:<10} does not compile: {memory.error}", False
    fits = capacity is not None and memory.peak_bytes <= capacity
    flops = "n/a" if memory.flops is None else f"{memory.flops / 1e12:.2f}"
    return (f"{name:<28} {target:<10} {gib(memory.argument_bytes)} {gib(memory.output_bytes)} "
            f"{gib(memory.temp_bytes)} {gib(memory.peak_bytes)} "
            f"{'yes' if fits else 'NO':>5} {flops:>8} {memory.compile_s:8.1f}"), fits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--target", action="append", default=None,
                        help="a TPU topology, e.g. v5e:2x2 (default), v5p:2x2x1, v6e:2x2, or "
                        "a GPU of aot.GPU_TARGETS: h100 (needs the CUDA plugin)")
    parser.add_argument("--global_batch", type=int, default=0, help="0: the config's")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--metrics", action="append", default=[], type=matrix_shape,
                        help="a similarity matrix VxT, e.g. 9668x3842 (EK-100's test split)")
    args = parser.parse_args(argv)
    if not args.config and not args.metrics:
        parser.error("give at least one --config or --metrics")
    print(f"{'config':<28} {'target':<10} {'args GiB':>8} {'out GiB':>8} {'temp GiB':>8} "
          f"{'peak GiB':>8} {'fits':>5} {'TFLOP':>8} {'compile s':>8}")
    all_fit = True
    for path in args.config:
        for target in args.target or ["v5e:2x2"]:
            config = load_config(path)
            if args.global_batch:
                config.global_batch_size = args.global_batch
            apply_overrides(config, args.overrides)
            line, fits = row(config.name, target,
                             aot.train_step_memory(config, aot.devices(target)))
            print(line, flush=True)
            all_fit &= fits
    for shape in args.metrics:
        for target in args.target or ["v5e:2x2"]:
            line, fits = row(f"metrics {shape[0]}x{shape[1]}", target,
                             aot.metrics_memory(*shape, aot.devices(target)))
            print(line, flush=True)
            all_fit &= fits
    return 0 if all_fit else 1


if __name__ == "__main__":
    sys.exit(main())
