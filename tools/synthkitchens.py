"""Generates SynthKitchens (`tempret_jax.data.synthetic`): videos and EK-100-format annotations.

    python tools/synthkitchens.py --out DIR [--size demo|test|default] [--layout mp4|chunked|frames]
        [--seed 0]

--size demo / test: the data of `configs/synthetic.py` (what `make demo` and the tests train
on); default: `SynthConfig()`'s sizes. Then prepare it like EK-100:
    python tools/prepare_ek100.py --annotations DIR/annotations --videos DIR --output OUT
"""

import argparse
import dataclasses
import importlib.util
import pathlib
import sys
import time

from tempret_jax.data import synthetic

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "synthetic.py"


def sizes(size: str) -> dict:
    """The SynthConfig fields of a size: configs/synthetic.py's ``synthetic`` block, or none."""
    if size == "default":
        return {}
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(size).synthetic.to_dict()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--size", default="demo", choices=("demo", "test", "default"))
    p.add_argument("--layout", default="mp4", choices=("mp4", "chunked", "frames"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out}: expected a new or empty folder", file=sys.stderr)
        return 2
    config = synthetic.SynthConfig(**{**sizes(a.size), "layout": a.layout, "seed": a.seed})
    start = time.perf_counter()
    annotations = synthetic.generate(out, config)
    videos = config.num_train_videos + config.num_test_videos
    print(f"SynthKitchens ({a.size}, {a.layout}): {videos} videos x {config.clips_per_video} "
          f"clips in {time.perf_counter() - start:.1f} s; annotations in {annotations}")
    print("fields: " + ", ".join(f"{f.name}={getattr(config, f.name)}"
                                 for f in dataclasses.fields(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
