"""What this machine gives a run: python -m tempret_jax.doctor [--dataset_dir D] [--workdir W]
[--checkpoint C]

Prints the Python and package versions, JAX's backend and devices, the attention kernel that
``model.attention_impl='auto'`` takes here (and on other devices), and, for each path given,
whether it is usable: a prepared data set (its splits and whether its annotation copies check),
a run's workdir (its checkpoint steps, whether another trainer holds it), a converted
checkpoint (its model config). Exit 1 if a given path is not usable; the line says why.
For accelerators, install the matching extra first (README, "Set-up").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import platform
import sys

PACKAGES = ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
            "grain", "tensorflow-datasets", "numpy", "av", "torch")


def versions() -> dict[str, str]:
    """{package: version or 'not installed'} of the packages a run depends on."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def devices() -> list[str]:
    """Lines on JAX's backend, its devices and the attention 'auto' takes with them."""
    import jax

    from tempret_jax.models import attention
    local = jax.local_devices()
    backend = jax.default_backend()
    platform = local[0].platform
    by_platform = ", ".join(f"{p} {attention.for_platform(p)}" for p in ("cpu", "gpu", "tpu"))
    return [f"backend: {backend}, {jax.device_count()} device(s) in {jax.process_count()} "
            f"process(es); here: {len(local)} x {local[0].device_kind}",
            f"attention (model.attention_impl='auto'): {attention.for_platform(platform)} on "
            f"these {platform} devices; a run takes its mesh devices' ({by_platform}; "
            f"models/attention.py)"]


def dataset(path: str) -> tuple[bool, str]:
    from tempret_jax.data import prepare, verify
    try:
        folder = pathlib.Path(prepare.find_dataset(path))  # a preparation's --output too
    except prepare.PrepareError as e:
        return False, str(e)
    splits = [s for s, (clips, _) in prepare.SPLIT_FILES.items()
              if (folder / prepare.ANNOTATIONS / clips).is_file()]
    if not splits:
        return False, f"{folder}: no prepared split (expected {prepare.ANNOTATIONS}/ with the CSVs)"
    try:
        verify.check_features(folder)
        counts = {s: len(prepare.load_narration_ids(folder, s)[1]) for s in splits}
    except (verify.DatasetError, OSError, ValueError) as e:
        return False, str(e)
    return True, f"{folder}: splits {counts} (clip rows), annotation copies check"


def workdir(path: str) -> tuple[bool, str]:
    from tempret_jax import checkpoint, lock
    folder = pathlib.Path(path)
    steps = sorted(int(p.name) for p in (folder / checkpoint.CHECKPOINTS).glob("*")
                   if p.name.isdigit())
    held = lock.holder(folder)
    state = f"in use by a trainer ({held})" if held else "free (no trainer holds it)"
    return True, f"{folder}: checkpoint steps {steps or 'none'}; {state}"


def converted(path: str) -> tuple[bool, str]:
    from tempret_jax import convert
    try:
        c = convert.read_model_config(path)
    except (convert.ConversionError, OSError, ValueError) as e:
        return False, str(e)
    return True, (f"{path}: vision {c.vision.width}x{c.vision.layers} ({c.vision.num_frames} "
                  f"frames), text {c.text.width}x{c.text.layers}, embed {c.embed_dim}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", help="a prepared data set (config.dataset_dir)")
    p.add_argument("--workdir", help="a run's folder")
    p.add_argument("--checkpoint", help="a converted checkpoint (tools/convert_checkpoint.py)")
    a = p.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.platform()}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    for line in devices():
        print(line)
    ok = True
    for name, check, value in (("data set", dataset, a.dataset_dir),
                               ("workdir", workdir, a.workdir),
                               ("checkpoint", converted, a.checkpoint)):
        if value:
            usable, line = check(value)
            ok &= usable
            print(f"{name}: {'ok' if usable else 'NOT USABLE'}: {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
