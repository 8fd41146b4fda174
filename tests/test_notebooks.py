"""The Colab notebooks run headless (nbclient, a fresh kernel each) on the smallest settings.

The parameter cells read environment variables (TEMPRET_NOTEBOOK_SIZE, ..._WORKDIR, ..._QUERY,
TEMPRET_EK100_ROOT), which the kernel inherits from the test. quickstart trains the tiny demo
and shows its results; search_demo searches that run (and trains one itself in an empty
workdir); ek100_mir, with no data and on a CPU, completes every cell and explains each step it
skips. Notebooks are stored without outputs.
"""

import json
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).parent.parent / "colab"
NOTEBOOKS = ("quickstart.ipynb", "search_demo.ipynb", "ek100_mir.ipynb")


def execute(name: str, monkeypatch, **env) -> nbformat.NotebookNode:
    """Runs colab/<name> from the colab/ folder with ``env`` set; raises on a failing cell."""
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    nb = nbformat.read(COLAB / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(COLAB)}}).execute()
    return nb


def test_badges_and_clone_urls_name_one_repository_address():
    import re
    readme = (COLAB.parent / "README.md").read_text()
    badges = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/"
                        r"colab/([\w.]+\.ipynb)", readme)
    assert sorted(n for _, n in badges) == sorted(NOTEBOOKS)
    home = {repo for repo, _ in badges}
    assert len(home) == 1 and f"https://github.com/{home.pop()}" in readme
    for name in NOTEBOOKS:
        urls = re.findall(r'TEMPRET_REPO_URL\\", \\"([^"\\]+)\\"', (COLAB / name).read_text())
        assert urls == [f"https://github.com/{badges[0][0]}.git"], name


def outputs(nb, kind: str | None = None) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
            if kind is None or kind in o.get("data", {})]


def printed(nb) -> str:
    return "".join(o.text for o in outputs(nb) if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_valid_and_stored_without_outputs(name):
    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", ()) for c in code) == 1


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as monkeypatch:
        nb = execute("quickstart.ipynb", monkeypatch, TEMPRET_NOTEBOOK_SIZE="test",
                     TEMPRET_NOTEBOOK_WORKDIR=workdir)
    return nb, workdir


def test_quickstart_trains_the_demo_and_shows_table_curves_and_gallery(quickstart):
    nb, workdir = quickstart
    record = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert record["config"] == "synthetic_tempret_info_nce_test" and record["step"] == 4
    text = printed(nb)
    assert "mAP" in text and "nDCG" in text and f"mAP avg {record['mAP']['avg']:.2f}" in text
    assert "training_curves.png" in text
    # Clip frames, then the training curves, evaluation curves and per-verb AP.
    assert len(outputs(nb, "image/png")) == 4
    gallery = outputs(nb, "text/html")
    assert len(gallery) == 1 and "<img" in gallery[0]["data"]["text/html"]
    # tempret_jax.pretrained on the run: a 4 x 4 clip x narration similarity matrix.
    similarity = text.split("clips (rows) x their narrations (columns):\n", 1)[1]
    assert similarity.count("[") == 5, similarity


def test_search_demo_searches_a_trained_run(quickstart, monkeypatch):
    _, workdir = quickstart
    nb = execute("search_demo.ipynb", monkeypatch, TEMPRET_NOTEBOOK_WORKDIR=workdir,
                 TEMPRET_NOTEBOOK_QUERY="raise blue triangle up")
    text = printed(nb)
    assert f"using the run in {workdir}" in text
    assert "synthetic_tempret_info_nce_test step 4, test split: 4 clips" in text
    assert "query: 'raise blue triangle up'" in text and "query: 'drop blue triangle down'" in text
    assert text.count("rank    score") == 2 and "P01_02_0 " in text  # every test clip ranked
    assert len(outputs(nb, "image/png")) == 2  # one frame grid per query
    assert (workdir / "search" / "index.npz").is_file()


def test_search_demo_trains_the_demo_first_in_an_empty_workdir(tmp_path, monkeypatch):
    nb = execute("search_demo.ipynb", monkeypatch, TEMPRET_NOTEBOOK_WORKDIR=tmp_path / "run",
                 TEMPRET_NOTEBOOK_SIZE="test")
    text = printed(nb)
    assert "has no checkpoint: training the SynthKitchens demo (test)" in text
    assert "synthetic_tempret_info_nce_test step 4" in text
    assert len(outputs(nb, "image/png")) == 2


def test_ek100_notebook_without_data_on_a_cpu_runs_every_cell_and_explains(tmp_path, monkeypatch):
    root = tmp_path / "absent"
    nb = execute("ek100_mir.ipynb", monkeypatch, TEMPRET_EK100_ROOT=root)
    text = printed(nb)
    # The cells that need no data: configs, parameter counts, the test split from the repository.
    assert "stage 1: ek100_tempret_vitb16_stage1" in text
    assert "stage 2: ek100_tempret_vitb16_stage2" in text
    assert "text 63.3M, visual 86.0M" in text  # AVION ViT-B/16's towers (256-d projections)
    assert "cross_encoder" in text and "rerank top K among (5, 10, 20, 50)" in text
    assert "picked on 2000 held-out train clips" in text
    assert "test split: 9668 clips x 3842 sentences" in text
    # Each step that needs data or an accelerator says what is missing instead of failing.
    for step in ("data preparation", "checkpoint conversion", "stage 1 training",
                 "stage 2 training", "evaluation", "the submission"):
        assert f"Skipped: {step} needs" in text
    assert text.count("a GPU or TPU runtime (this one has a CPU only)") == 3
    assert f"{root}/EPIC-KITCHENS" in text and "the converted CLIP checkpoint" in text
    assert not root.exists()  # nothing written
