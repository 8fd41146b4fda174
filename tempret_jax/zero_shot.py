"""The zero-shot EK-100 MIR config of a converted checkpoint: its own model, the eval recipe.

This file is a config file for ``--config``: ``--config tempret_jax/zero_shot.py:CONVERTED``
is the EK-100 recipe (`recipes.eval_recipe`, 16 frames at 224 px, the full evaluation
protocol) with the model config saved in CONVERTED (tools/convert_checkpoint.py output) and
CONVERTED as the checkpoint to score; a 4-frame pretrained temporal embedding is inflated to
the 16 frames on load, as AVION evaluates its pretrained models. Main uses it when ``--mode
eval --checkpoint CONVERTED`` comes without ``--config``, so a zero-shot evaluation is

    python -m tempret_jax.main --mode eval --checkpoint CONVERTED --workdir runs/zero_shot \
        --config.dataset_dir=DATA

Compute runs in float32 (a CPU default); on accelerators add --config.model.dtype=bfloat16.
"""

from __future__ import annotations

from tempret_jax import convert, recipes


def get_config(converted: str):
    """The config (module docstring); ``converted`` is the converted checkpoint's folder."""
    if not converted:
        raise ValueError("zero_shot.py needs the converted checkpoint: "
                         "--config tempret_jax/zero_shot.py:CONVERTED")
    c = recipes.eval_recipe("vit_b16", "ek100_zero_shot")
    model = convert.read_model_config(converted)
    frames = c.model.vision.num_frames
    model.update(dtype="float32", scan_layers=True)  # scanned: one compilation per tower
    model.vision.num_frames = frames
    c.model = model
    c.data.resolution = model.vision.image_size
    c.init_from.path = str(converted)
    return c
