"""The main entry point runs the configured job and writes its metrics."""

import json
import subprocess
import sys


def test_random_baseline_job_prints_the_table_and_writes_metrics(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/random_baseline.py",
         "--workdir", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "mAP" in out and "nDCG" in out and "V2T" in out
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["config"] == "random_baseline"
    assert 5.4 < result["mAP"]["avg"] < 5.9 and 10.6 < result["nDCG"]["avg"] < 11.1


def test_a_misspelt_config_key_names_the_nearest_one(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/random_baseline.py",
         "--workdir", str(tmp_path), "--config.sed=1"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == ("error: command line: --config override: no such key "
                                           "'sed'; did you mean 'seed'?")
    debug = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/random_baseline.py",
         "--workdir", str(tmp_path), "--config.sed=1", "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def _main(*args):
    return subprocess.run([sys.executable, "-m", "tempret_jax.main", *args],
                          capture_output=True, text=True)


def test_synthetic_job_generates_prepares_trains_and_evaluates(tmp_path):
    workdir = tmp_path / "run"
    run = _main("--config", "configs/synthetic.py:test", "--workdir", str(workdir),
                "--config.microbatches=auto", "--config.model.remat", "auto")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "devices:" in run.stdout and "parameters:" in run.stdout and "global batch" in run.stdout
    # 'auto' on the command line, for keys that hold an int or a bool: resolved (on CPU, the
    # cheapest setting), printed, and saved resolved.
    assert "auto: model.remat=False microbatches=1 mesh.fsdp=1 mesh.data=-1" in run.stdout
    result = json.loads((workdir / "metrics.json").read_text())
    assert result["step"] == 4 and set(result["mAP"]) == {"v2t", "t2v", "avg"}
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["name"] == "synthetic_tempret_info_nce_test"
    assert (saved["microbatches"], saved["model"]["remat"]) == (1, False)
    assert saved["dataset_dir"] == "data/ek100_mir/frames4_short40/1.0.0"  # inside: relative
    # It ends saying where its outputs are: plots and gallery are the eval mode's.
    assert run.stdout.rstrip().splitlines()[-5:] == [
        f"outputs of {workdir}:",
        f"  metrics      {workdir / 'metrics.json'}",
        f"  plots        not written yet: python -m tempret_jax.main --mode eval --workdir "
        f"{workdir} writes them to {workdir / 'eval'}/",
        f"  gallery      not written yet: python -m tempret_jax.main --mode eval --workdir "
        f"{workdir} writes them to {workdir / 'eval'}/",
        f"  TensorBoard  tensorboard --logdir {workdir / 'tensorboard'}"]
    # The run folder moved: eval mode (its saved config, an override) scores it again, in eval/.
    moved = tmp_path / "moved"
    workdir.rename(moved)
    run = _main("--workdir", str(moved), "--mode", "eval", "--config.eval.num_workers=0")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((moved / "eval" / "metrics.json").read_text())["mAP"] == result["mAP"]
    closing = run.stdout.rstrip().splitlines()[-5:]
    assert closing[0] == f"outputs of {moved}:" and closing[1] == (
        f"  metrics      {moved / 'metrics.json'}, {moved / 'eval' / 'metrics.json'}")
    assert closing[2].startswith(f"  plots        {moved / 'eval'}/")
    assert "verb_ap.png" in closing[2]
    assert closing[3] == f"  gallery      {moved / 'eval' / 'gallery.html'}"
    assert (moved / "eval" / "gallery.html").is_file()
    # search mode reopens the run from its saved config.
    run = _main("--mode", "search", "--workdir", str(moved), "--query", "open the red box",
                "--top", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert "step 4" in lines[-5] and "index built" in lines[-5]
    assert [line.split()[0] for line in lines[-3:]] == ["1", "2", "3"]
    # and training resumes from it: already at its last step, it trains nothing.
    run = _main("--workdir", str(moved))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "generated" not in run.stdout and "prepared" not in run.stdout  # its data found
    assert sorted(p.name for p in (moved / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]


def test_eval_mode_without_a_checkpoint_is_a_clear_error(tmp_path):
    run = _main("--config", "configs/synthetic.py:test", "--workdir", str(tmp_path), "--mode", "eval")
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (f"error: no checkpoint in {tmp_path / 'checkpoints'}: "
                                           f"train the run first")


def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path):
    run = _main("--config", "configs/synthetic.py:test", "--workdir", str(tmp_path),
                "--config.eval.tta_reduce=max")
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == ("error: config: eval.tta_reduce: expected one of "
                                           "('embeddings_mean', 'features_mean'), got 'max'")
    assert not (tmp_path / "synthkitchens").exists()  # validated before any work


def test_a_workdir_in_use_is_one_line_naming_the_other_trainer(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tempret_jax import lock\n"
         "with lock.WorkdirLock(sys.argv[1]):\n    print('HELD', flush=True)\n    time.sleep(600)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        run = _main("--config", "configs/synthetic.py:test", "--workdir", str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith(
        f"error: {tmp_path} is in use by another trainer (pid {holder.pid} on ")
    assert not (tmp_path / "synthkitchens").exists()  # refused before any work


def test_an_unexpected_error_is_one_line_and_its_traceback_is_behind_debug(
        tmp_path, monkeypatch, capsys):
    import pytest
    from absl import flags

    from tempret_jax import main

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr(main, "run", broken)
    flags.FLAGS(["main", "--config", "configs/random_baseline.py", "--workdir", str(tmp_path)])
    try:
        with pytest.raises(SystemExit) as exit_:
            main.main(["main"])
        assert exit_.value.code == 1
        assert capsys.readouterr().err == ("error: RuntimeError: disk on fire second line (rerun "
                                           "with --debug for the traceback)\n")
        monkeypatch.setenv("TEMPRET_DEBUG", "1")
        with pytest.raises(RuntimeError, match="disk on fire"):
            main.main(["main"])
    finally:
        flags.FLAGS.unparse_flags()


def test_the_egovlp_family_trains_evaluates_and_searches_on_the_demo_data(tmp_path):
    run = _main("--config", "configs/synthetic.py:egovlp,adaptive_mi_mm,test", "--workdir",
                str(tmp_path), "--config.eval.dual_softmax=egovlp")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["step"] == 4 and set(result["mAP"]) == {"v2t", "t2v", "avg"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["model"]["vision"]["tower"], saved["model"]["text"]["tower"]) == (
        "space_time", "distilbert")
    run = _main("--mode", "search", "--workdir", str(tmp_path), "--query", "lift the red bar",
                "--top", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert [line.split()[0] for line in run.stdout.strip().splitlines()[-2:]] == ["1", "2"]
