"""A tiny trained run shared by the evaluation and search tests (trained once per process).

configs/synthetic.py:test with a cross-encoder (so reranking has one to call), SynthKitchens
prepared where the demo prepares it (<workdir>/data), trained 4 steps with an evaluation at the
end (metrics.jsonl) and checkpoints at steps 2 and 4.
"""

import importlib.util
import pathlib

from tempret_jax import train
from tempret_jax.data import prepare, synthetic

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
_RUNS: dict = {}


def load_config(arg: str):
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIGS / "synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def trained_run(tmp_path_factory):
    """(config, workdir) of the shared run; the config is a fresh copy on every call."""
    if "run" not in _RUNS:
        workdir = tmp_path_factory.mktemp("trained_run")
        config = run_config()
        root = workdir / "synthkitchens"
        synthetic.generate(root, synthetic.SynthConfig(**config.synthetic.to_dict()))
        summary = prepare.prepare(prepare.PrepareConfig(
            annotation_dir=str(root / synthetic.ANNOTATION_DIR), video_root=str(root),
            output_dir=str(workdir / "data"), num_frames=config.prepare.num_frames,
            short_side=config.prepare.short_side, num_workers=1, progress=False))
        config.dataset_dir = summary["dataset_dir"]
        train.train_and_evaluate(config, workdir)
        _RUNS["run"] = (config.dataset_dir, workdir)
    dataset_dir, workdir = _RUNS["run"]
    config = run_config()
    config.dataset_dir = dataset_dir
    return config, workdir


def run_config():
    config = load_config("test")
    config.model.cross_encoder.update(enabled=True, video_tokens="frame")
    config.checkpoint.async_save = False
    return config
