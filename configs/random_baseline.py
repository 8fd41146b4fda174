"""Random-similarity baseline on the EK-100 MIR test split (the 'Random' row of every paper).

    python -m tempret_jax.main --config configs/random_baseline.py --workdir runs/random
"""

import ml_collections


def get_config(arg=None):
    del arg  # no variants
    config = ml_collections.ConfigDict()
    config.name = "random_baseline"
    config.job = "random_baseline"
    config.seed = 0
    # The real EK-100 annotation files shipped with the repository (CC BY-NC 4.0).
    config.annotation_dir = "tests/data/ek100"
    return config
