"""The lines a run ends with: where its metrics, plots, gallery and TensorBoard logs are
(`main.outputs`; the tiny run of tests/test_main.py checks them end to end)."""

from tempret_jax import main


def test_the_closing_lines_name_what_exists_and_how_to_make_the_rest(tmp_path):
    workdir = tmp_path / "my runs" / "demo"
    (workdir / "tensorboard").mkdir(parents=True)
    (workdir / "metrics.json").write_text("{}")
    make = (f"not written yet: python -m tempret_jax.main --mode eval --workdir "
            f"'{workdir}' writes them to {workdir / 'eval'}/")
    assert main.outputs(workdir).splitlines() == [
        f"outputs of {workdir}:",
        f"  metrics      {workdir / 'metrics.json'}",
        f"  plots        {make}",
        f"  gallery      {make}",
        f"  TensorBoard  tensorboard --logdir '{workdir / 'tensorboard'}'"]

    (workdir / "eval").mkdir()
    for name in ("metrics.json", "gallery.html", "verb_ap.png", "training_curves.png"):
        (workdir / "eval" / name).write_text("")
    lines = main.outputs(workdir).splitlines()
    assert lines[1] == (f"  metrics      {workdir / 'metrics.json'}, "
                        f"{workdir / 'eval' / 'metrics.json'}")
    assert lines[2] == (f"  plots        {workdir / 'eval' / 'training_curves.png'}, "
                        f"{workdir / 'eval' / 'verb_ap.png'}")
    assert lines[3] == f"  gallery      {workdir / 'eval' / 'gallery.html'}"


def test_an_evaluation_alone_names_no_tensorboard(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    lines = main.outputs(tmp_path).splitlines()
    assert lines[1] == f"  metrics      {tmp_path / 'eval' / 'metrics.json'}"
    assert len(lines) == 4 and not any("TensorBoard" in line for line in lines)
