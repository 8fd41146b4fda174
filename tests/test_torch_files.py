"""Reading torch files: classes the file names become inert placeholders, never imported."""

import argparse
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tempret_jax import torch_files

torch = pytest.importorskip("torch")

MODULE = textwrap.dedent('''
    import pathlib
    pathlib.Path(__file__).with_name("IMPORTED").write_text("the module ran")

    class ConfigParser:  # what EgoVLP's parse_config.ConfigParser keeps
        def __init__(self):
            self._config = {"name": "EpicKitchens_MIR_4f",
                            "arch": {"args": {"video_params": {"num_frames": 16}}}}
            self._save_dir = pathlib.PosixPath("results/models")

    def side_effect():
        pathlib.Path(__file__).with_name("CALLED").write_text("a function ran")

    class Runs:
        def __reduce__(self):  # unpickling would call side_effect()
            return (side_effect, ())
''')


@pytest.fixture
def foreign_checkpoint(tmp_path):
    """A checkpoint written by a program whose module the reader does not have."""
    (tmp_path / "egovlp_like.py").write_text(MODULE)
    script = textwrap.dedent(f'''
        import sys, argparse, torch, numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        import egovlp_like
        torch.save({{"state_dict": {{"module.w": torch.ones(2)}}, "config":
                    egovlp_like.ConfigParser(), "hook": egovlp_like.Runs(),
                    "args": argparse.Namespace(lr=3e-5), "monitor_best": np.float64(0.5)}},
                   {str(tmp_path / "ckpt.pth")!r})
    ''')
    subprocess.run([sys.executable, "-c", script], check=True)
    (tmp_path / "IMPORTED").unlink()
    return tmp_path


def test_unknown_classes_become_placeholders_and_nothing_of_theirs_runs(foreign_checkpoint):
    contents = torch_files.read(foreign_checkpoint / "ckpt.pth")

    np.testing.assert_array_equal(contents["state_dict"]["module.w"].numpy(), [1.0, 1.0])
    config = contents["config"]
    assert isinstance(config, torch_files.Placeholder)
    assert config.name == "egovlp_like.ConfigParser"
    assert config.state["_config"]["arch"]["args"]["video_params"]["num_frames"] == 16
    assert config.state["_save_dir"].name == "pathlib.PosixPath"
    assert contents["hook"].name == "egovlp_like.side_effect"
    assert not (foreign_checkpoint / "IMPORTED").exists()  # the module was never imported
    assert not (foreign_checkpoint / "CALLED").exists()  # nor its function called
    assert "egovlp_like" not in sys.modules
    # Plain data stays itself.
    assert contents["args"] == argparse.Namespace(lr=3e-5)
    assert contents["monitor_best"] == 0.5 and isinstance(contents["monitor_best"], np.float64)


def test_a_placeholder_says_what_it_stands_for(foreign_checkpoint):
    config = torch_files.read(foreign_checkpoint / "ckpt.pth")["config"]
    assert repr(config) == "<placeholder egovlp_like.ConfigParser>"
