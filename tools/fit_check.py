"""Do a config's train and eval steps fit an accelerator? Compiled ahead of time, without one.

    python tools/fit_check.py --config configs/ek100_tempret_vitb16.py [--config ...]
        [--target v5e:2x2] [--target v5p:2x2x1] [--target a100] [--global_batch 32]
        [--set model.remat=True] [--set microbatches=auto] [--step train] [--step eval]
        [--memory_gib 48]
        [--metrics 9668x3842 --metrics 38672x15368]

For every config and TPU topology (libtpu installed: `pip install -e '.[tpu]'`) or simulated GPU
(`--target h100` or `a100`: the CUDA plugin installed, no GPU), builds the real mesh, train step
and evaluation embedding steps (`tempret_jax.aot`; rows 'train', 'eval video', 'eval text'),
compiles them and prints per-device argument, output, temporary and peak bytes, whether the
peak fits the device's memory (`aot.memory_of`), the compile time, the step's matrix-product
TFLOP over all devices (counted from the compiled HLO with loops by their trip counts:
`hlo_cost`), and an ESTIMATE of step time and MFU at the target's peak (`aot.estimate`: a
roofline, max(FLOPs / peak bf16 FLOP/s, HBM traffic / bandwidth) per device; no measurement).
A compile that fails (e.g. out of memory) is a row with its error. `--set key=value` overrides
config keys (Python literals; 'auto' keys are resolved for the target: `auto_fit`).
`--memory_gib G` judges fits (and 'auto') against G GiB a device instead of the target's
memory: a GPU of another size compiled as its nearest target (e.g. a 48 GB RTX 6000 Ada as an
a100, `--memory_gib 48`). `--metrics VxT` adds a row for the evaluation's metric program (`aot.metrics_memory`: mAP and
nDCG of both directions of a V x T similarity matrix, rows split over the chips). Exit 0 when
every row fits, 1 otherwise.
"""

import argparse
import ast
import functools
import importlib.util
import pathlib
import sys

from tempret_jax import aot, auto_fit
from tempret_jax import config as config_lib


def load_config(path: str):
    """configs/X.py[:arg] -> its ConfigDict."""
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location(pathlib.Path(file).stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def apply_overrides(config, overrides) -> None:
    """Sets each 'a.b=value' (a Python literal, else the string); 'auto' in any key."""
    for item in overrides:
        key, _, value = item.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare word ('auto', 'bilinear') stays the string it is
        config_lib.set_key(config, key, value)  # 'auto' where the key holds a bool or an int


def matrix_shape(text: str) -> tuple[int, int]:
    """'9668x3842' -> (9668, 3842)."""
    try:
        videos, texts = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VxT, e.g. 9668x3842, got {text!r}") from None
    if videos < 1 or texts < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return videos, texts


HEADER = (f"{'config':<28} {'step':<10} {'target':<10} {'args GiB':>8} {'out GiB':>8} "
          f"{'temp GiB':>8} {'peak GiB':>8} {'fits':>5} {'compile s':>9} {'TFLOP':>8} "
          f"{'est ms':>8} {'est MFU':>7}")


def row(name: str, step: str, target: str, memory: aot.StepMemory,
        capacity: int | None) -> tuple[str, bool]:
    """One line of the table and whether the step fits ``capacity`` bytes a device."""
    gib = lambda n: f"{n / aot.GIB:8.2f}"  # noqa: E731
    if memory.error:
        return f"{name:<28} {step:<10} {target:<10} does not compile: {memory.error}", False
    fits = capacity is not None and memory.peak_bytes <= capacity
    guess = aot.estimate(memory, target)
    seconds, mfu = (f"{guess[0] * 1e3:8.1f}", f"{guess[1]:7.0%}") if guess else ("n/a", "n/a")
    return (f"{name:<28} {step:<10} {target:<10} {gib(memory.argument_bytes)} "
            f"{gib(memory.output_bytes)} {gib(memory.temp_bytes)} {gib(memory.peak_bytes)} "
            f"{'yes' if fits else 'NO':>5} {memory.compile_s:9.1f} "
            f"{memory.step_flops / 1e12:8.2f} {seconds:>8} {mfu:>7}"), fits


def device_capacity(target: str, memory_gib: float) -> int | None:
    """Bytes a device: ``memory_gib`` when given, else the target's (None if unknown)."""
    return int(memory_gib * aot.GIB) if memory_gib else aot.memory_of(target)


def config_rows(config, target: str, capacity: int | None, steps=("train", "eval")):
    """(step name, StepMemory) of a config's train step and eval steps (those in ``steps``),
    its 'auto' keys resolved for ``capacity`` bytes a device; when no 'auto' setting fits, the
    train row says so (its error) and the eval rows are left out."""
    devices = aot.devices(target)
    chosen = []  # the train step of the setting `resolve` chose: compiled once, not twice

    def compile_step(candidate, candidate_devices):
        chosen[:] = [aot.train_step_memory(candidate, candidate_devices)]
        return chosen[0]

    if auto_fit.has_auto(config):
        try:
            auto_fit.resolve(config, devices, capacity, compile_step=compile_step)
        except config_lib.ConfigError as e:
            yield "train", aot.StepMemory(error=str(e))
            return
    if "train" in steps:
        yield "train", chosen[0] if chosen else aot.train_step_memory(config, devices)
    if "eval" in steps:
        yield from aot.eval_step_memory(config, devices).items()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--target", action="append", default=None,
                        help="a TPU topology, e.g. v5e:2x2 (default), v5p:2x2x1, v6e:2x2, or "
                        "a GPU of aot.GPU_TARGETS: h100, a100 (needs the CUDA plugin)")
    parser.add_argument("--global_batch", type=int, default=0, help="0: the config's")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--step", action="append", choices=("train", "eval"), default=None,
                        help="the steps to compile (default both): the train step, the eval "
                        "embedding steps (video and text towers)")
    parser.add_argument("--memory_gib", type=float, default=0.0,
                        help="memory of a device to judge fits against (0: the target's)")
    parser.add_argument("--metrics", action="append", default=[], type=matrix_shape,
                        help="a similarity matrix VxT, e.g. 9668x3842 (EK-100's test split)")
    args = parser.parse_args(argv)
    if not args.config and not args.metrics:
        parser.error("give at least one --config or --metrics")
    print("TFLOP: matrix products of one step on all devices, loops counted by trip count; "
          "est ms / est MFU: roofline ESTIMATE at the target's peak, not measured")
    print(HEADER)
    all_fit = True
    capacity = functools.partial(device_capacity, memory_gib=args.memory_gib)
    for path in args.config:
        for target in args.target or ["v5e:2x2"]:
            config = load_config(path)
            if args.global_batch:
                config.global_batch_size = args.global_batch
            apply_overrides(config, args.overrides)
            steps = args.step or ("train", "eval")
            for step, memory in config_rows(config, target, capacity(target), steps):
                line, fits = row(config.name, step, target, memory, capacity(target))
                print(line, flush=True)
                all_fit &= fits
    for shape in args.metrics:
        for target in args.target or ["v5e:2x2"]:
            line, fits = row(f"metrics {shape[0]}x{shape[1]}", "metrics", target,
                             aot.metrics_memory(*shape, aot.devices(target)), capacity(target))
            print(line, flush=True)
            all_fit &= fits
    return 0 if all_fit else 1


if __name__ == "__main__":
    sys.exit(main())
