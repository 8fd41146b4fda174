"""Fault drill: the accidents a run meets, one after another on a tiny SynthKitchens, each with
what happened and what data it lost (there must be none).

    python tools/fault_drill.py [--workdir DIR] [--only NAME,NAME]

Each accident is staged for real (a byte flipped on disk, kill -9, a second trainer, a
crashing evaluator, a bad file) and its outcome checked against an uninterrupted reference run:
"none" in the last column means the run's state, checkpoints, records and logs are what they
would have been without the accident. Prints a Markdown table (docs/design.md and
BENCHMARKS.md hold the latest) and exits 1 if any row lost data or did not go as expected.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import jax
import numpy as np

from tempret_jax import evaluators, lock, main, state, train
from tempret_jax.data import ek100, pipeline, prepare, synthetic, verify

REPO = pathlib.Path(__file__).resolve().parent.parent
ACCIDENTS: dict[str, tuple[str, callable]] = {}  # name -> (description, fn(drill) -> (happened, lost))

# A trainer in a subprocess: prints "STEP n" after each step; at step KILL_AT prints its
# children's pids and kills itself (-9) once checkpoint WAIT_FOR is complete on disk.
RUNNER = """
import json, os, pathlib, signal, sys, time
import ml_collections
from tempret_jax import train
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
workdir, kill_at, wait_for = pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def hook(step, state):
    print(f"STEP {step}", flush=True)
    if step == kill_at:
        while not (workdir / "checkpoints" / wait_for).is_dir():
            time.sleep(0.1)
        children = " ".join(t.read_text() for t in pathlib.Path(f"/proc/{os.getpid()}/task").glob("*/children"))
        print("CHILDREN", children, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("DRILL_STEP_SLEEP", "0")))
result = train.train_and_evaluate(config, workdir, hooks=[hook])
print("DONE", result["step"], result["preempted"], flush=True)
"""


def accident(name: str, description: str):
    def register(fn):
        ACCIDENTS[name] = (description, fn)
        return fn
    return register


class Drill:
    """The shared set-up: the tiny data set, its config, and the reference run."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        spec = importlib.util.spec_from_file_location("synthetic_config",
                                                      REPO / "configs" / "synthetic.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.base = module.get_config("test")
        self.base.eval.every_steps = -1

    @functools.cached_property
    def dataset(self) -> str:
        """The tiny SynthKitchens, generated and prepared on first use."""
        return quiet(main.synthetic_dataset, self.base, self.root / "shared")

    def config(self, **overrides):
        c = self.base.copy_and_resolve_references()
        c.dataset_dir = self.dataset
        c.update(overrides)
        return c

    def workdir(self, name: str) -> pathlib.Path:
        path = self.root / "runs" / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    @functools.cached_property
    def reference(self) -> tuple[pathlib.Path, dict]:
        """(workdir, final state as numpy) of the uninterrupted run: 4 steps, saves at 2, 4."""
        workdir = self.workdir("reference")
        result = quiet(train.train_and_evaluate, self.config(), workdir)
        return workdir, host(result["state"])

    def copy_of_reference(self, name: str) -> pathlib.Path:
        workdir = self.workdir(name)
        shutil.copytree(self.reference[0], workdir)
        (workdir / lock.LOCK_FILE).unlink(missing_ok=True)
        return workdir

    def spawn(self, config, workdir, kill_at: int = -1, wait_for: str = "none",
              step_sleep: float = 0.0) -> subprocess.Popen:
        env = {**os.environ, "DRILL_STEP_SLEEP": str(step_sleep)}
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, config.to_json(), str(workdir), str(kill_at),
             wait_for], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def same_as_reference(self, final_state) -> bool:
        return trees_equal(self.reference[1], final_state)

    def saved_params_as_reference(self, workdir: pathlib.Path) -> bool:
        """Whether the latest checkpoint's params are the reference run's final ones."""
        return trees_equal(self.reference[1].params, state.load_params(None, workdir)[0])


def trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(host(a)),
                                                      jax.tree.leaves(host(b)), strict=True))


def wait_for_line(proc: subprocess.Popen, prefix: str) -> str:
    """Reads ``proc``'s stdout up to a line starting with ``prefix``; RuntimeError if it ends
    first (the process died: its stderr says why)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"the subprocess ended before printing {prefix!r}: "
                       f"{proc.stderr.read()[-300:]}")


def host(tree):
    return jax.tree.map(np.asarray, tree)


def quiet(fn, *args, **kwargs):
    """Calls fn with its output captured (progress bars included); returns its result (the
    text printed: ``quiet.out``, ``quiet.err``)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return fn(*args, **kwargs)
    finally:
        quiet.out, quiet.err = out.getvalue(), err.getvalue()


def steps_of(path: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def checkpoints(workdir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.is_dir())


def shorten(text: str, n: int = 90) -> str:
    """``text`` without its folders, cut at a word boundary to about ``n`` characters."""
    text = re.sub(r"/\S+/", "", text)
    return text if len(text) <= n else text[:text.rfind(" ", 0, n)] + " ..."


def none_if(ok: bool, detail: str) -> str:
    return f"none ({detail})" if ok else f"YES: {detail} does not hold"


# ---------------------------------------------------------------------------------------------
# The accidents: training.


@accident("kill_9", "the trainer is killed (-9) at step 3, after its step-2 checkpoint")
def kill_9(drill: Drill):
    workdir = drill.workdir("kill_9")
    proc = drill.spawn(drill.config(), workdir, kill_at=3, wait_for="2")
    proc.communicate(timeout=600)
    resumed = quiet(train.train_and_evaluate, drill.config(), workdir)
    logged = steps_of(workdir / train.TRAIN_METRICS)
    ok = drill.same_as_reference(resumed["state"]) and logged == [1, 2, 3, 4]
    return (f"died with signal {-proc.returncode}; the rerun resumed from step 2",
            none_if(ok, "state bitwise equal to the uninterrupted run, steps 1-4 logged once"))


@accident("killed_mid_save", "the trainer is killed while writing its step-4 checkpoint, "
          "after logging steps 3 and 4")
def killed_mid_save(drill: Drill):
    workdir = drill.copy_of_reference("killed_mid_save")
    shutil.rmtree(workdir / "checkpoints" / "4")  # orbax writes to a temporary name first
    resumed = quiet(train.train_and_evaluate, drill.config(), workdir)
    logged = steps_of(workdir / train.TRAIN_METRICS)
    ok = drill.same_as_reference(resumed["state"]) and logged == [1, 2, 3, 4]
    return ("resumed from step 2; records of steps 3-4 dropped and logged again",
            none_if(ok, "state bitwise equal to the uninterrupted run, steps 1-4 logged once"))


@accident("flipped_byte", "one bit flipped in the latest checkpoint's largest array file")
def flipped_byte(drill: Drill):
    workdir = drill.copy_of_reference("flipped_byte")
    data_file = max((workdir / "checkpoints" / "4" / "state").rglob("ocdbt.process_0/d/*"),
                    key=lambda f: f.stat().st_size)
    data = bytearray(data_file.read_bytes())
    data[len(data) // 3] ^= 0x10
    data_file.write_bytes(bytes(data))
    resumed = quiet(train.train_and_evaluate, drill.config(), workdir)
    said = next(line for line in quiet.out.splitlines() if "unusable" in line)
    ok = drill.same_as_reference(resumed["state"]) and "corrupt.4" in checkpoints(workdir)
    return (f"caught by the checksums: {said.split(' (')[0]}, set aside as corrupt.4, "
            f"resumed from step 2", none_if(ok, "state bitwise equal to the uninterrupted run"))


@accident("non_finite_state", "the step-5 update makes the weights infinite (lr = inf); the "
          "loss of that step is still finite")
def non_finite_state(drill: Drill):
    workdir = drill.copy_of_reference("non_finite_state")
    config = drill.config(total_steps=5)
    config.optim.update(lr=float("inf"), start_lr=float("inf"), end_lr=float("inf"))
    try:
        quiet(train.train_and_evaluate, config, workdir)
        return "trained on", "YES: nothing stopped the run"
    except train.NonFiniteError as e:
        arrays = len(e.values["state"])
        ok = checkpoints(workdir) == ["2", "4"] and drill.saved_params_as_reference(workdir)
        return (f"stopped at step {e.step} before its save, naming {arrays}+ arrays and the "
                f"{len(e.narration_ids)} clips of the batch",
                none_if(ok, "checkpoints 2 and 4 untouched"))


@accident("second_trainer", "a second trainer starts on the workdir of a running one")
def second_trainer(drill: Drill):
    workdir = drill.workdir("second_trainer")
    first = drill.spawn(drill.config(), workdir, step_sleep=1.0)
    wait_for_line(first, "STEP 1")
    try:
        quiet(train.train_and_evaluate, drill.config(), workdir)
        refused = "not refused"
    except lock.WorkdirBusyError as e:
        refused = "refused: " + shorten(str(e).split(" (")[0])
    out, _ = first.communicate(timeout=600)
    ok = first.returncode == 0 and "DONE 4" in out and drill.saved_params_as_reference(workdir)
    return refused, none_if(ok, "the first trainer finished with the uninterrupted run's weights")


@accident("eval_crash", "the evaluator crashes at the step-2 evaluation (eval.on_error=stop)")
def eval_crash(drill: Drill):
    workdir = drill.workdir("eval_crash")
    config = drill.config()
    config.eval.every_steps = 2
    with mock.patch.object(evaluators, "run", side_effect=MemoryError("evaluator out of memory")):
        try:
            quiet(train.train_and_evaluate, config, workdir)
            return "not stopped", "YES: the failure went unnoticed"
        except train.EvaluationError:
            stopped = checkpoints(workdir)
    resumed = quiet(train.train_and_evaluate, config, workdir)
    ok = (stopped == ["2"] and steps_of(workdir / train.EVAL_METRICS) == [2, 4]
          and drill.same_as_reference(resumed["state"]))
    return ("stopped after saving step 2; the rerun evaluated step 2, then trained on",
            none_if(ok, "evaluations at 2 and 4, state bitwise equal to the uninterrupted run"))


@accident("early_sigterm", "SIGTERM arrives during start-up, before the first step")
def early_sigterm(drill: Drill):
    workdir = drill.workdir("early_sigterm")
    proc = drill.spawn(drill.config(), workdir)
    wait_for_line(proc, "devices:")  # printed during start-up
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    done = out.split("DONE", 1)[-1].split()
    resumed = quiet(train.train_and_evaluate, drill.config(), workdir)
    ok = proc.returncode == 0 and done[1] == "True" and drill.same_as_reference(resumed["state"])
    return (f"exit {proc.returncode}, stopped as preempted at step {done[0]}",
            none_if(ok, "the rerun reached the uninterrupted run's state"))


@accident("orphan_workers", "the trainer with 2 Grain workers is killed (-9) at step 2")
def orphan_workers(drill: Drill):
    workdir = drill.workdir("orphan_workers")
    config = drill.config()
    config.data.num_workers = 2
    proc = drill.spawn(config, workdir, kill_at=2, wait_for="2")
    out, _ = proc.communicate(timeout=600)
    pids = [int(p) for p in out.split("CHILDREN", 1)[1].split("\n", 1)[0].split()]
    deadline = time.time() + 60
    while any(pathlib.Path(f"/proc/{p}").exists() for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    alive = [p for p in pids if pathlib.Path(f"/proc/{p}").exists()]
    return (f"{len(pids) - len(alive)} of {len(pids)} child processes ended with the trainer",
            none_if(not alive, "no orphan left decoding"))


@accident("bad_torch_file", "tools/convert_checkpoint.py is given a truncated .pt file")
def bad_torch_file(drill: Drill):
    path = drill.root / "truncated.pt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(64))
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", str(path),
                           str(drill.root / "converted"), "--vision_heads", "4", "--text_heads",
                           "4"], cwd=REPO, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    ok = proc.returncode == 1 and len(lines) == 1 and str(path) in lines[0]
    return (f"exit {proc.returncode}, one line: {shorten(lines[-1].split(': ', 2)[-1], 70)}",
            none_if(ok, "nothing written"))


# ---------------------------------------------------------------------------------------------
# The accidents: data.


def prepared_copy(drill: Drill, name: str):
    """(annotations, output, data set, PrepareConfig) of a fresh preparation of the drill's
    SynthKitchens from a copy of its annotation folder (so that it can be edited)."""
    drill.dataset  # noqa: B018  generates the SynthKitchens sources
    source = drill.root / "shared" / "synthkitchens"
    root = drill.workdir(f"data_{name}")
    annotations = root / "annotations"
    shutil.copytree(source / synthetic.ANNOTATION_DIR, annotations)
    config = prepare.PrepareConfig(
        annotation_dir=str(annotations), video_root=str(source),
        output_dir=str(root / "out"), num_frames=drill.base.prepare.num_frames,
        short_side=drill.base.prepare.short_side, num_workers=1, progress=False)
    data = quiet(prepare.prepare, config)["dataset_dir"]
    return annotations, root / "out", pathlib.Path(data), config


def edit_first_narration(csv_file: pathlib.Path, text: str) -> str:
    """Sets the narration of the CSV's first row; returns that row's narration_id."""
    rows = list(csv.reader(csv_file.open(newline="")))
    column = rows[0].index("narration")
    rows[1][column] = text
    with csv_file.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return rows[1][rows[0].index("narration_id")]


def shard_times(output: pathlib.Path) -> dict[pathlib.Path, int]:
    """{shard: mtime_ns} of a preparation's per-video shards (a rebuilt shard gets a new one)."""
    return {p: p.stat().st_mtime_ns for p in (output / "work" / "shards").rglob("*.npz")}


def record_narration(dataset_dir, split: str, narration_id: str) -> str:
    source = pipeline.open_split(dataset_dir, split)
    for i in range(len(source)):
        if source[i]["narration_id"].decode() == narration_id:
            return source[i]["narration"].decode()
    raise KeyError(narration_id)


@accident("stale_annotation", "a narration is corrected in the train CSV after preparation, "
          "and the preparation is run again")
def stale_annotation(drill: Drill):
    annotations, out, _, config = prepared_copy(drill, "stale")
    shards = shard_times(out)
    nid = edit_first_narration(annotations / ek100.TRAIN_CLIPS_FILE, "drill: a corrected text")
    summary = quiet(prepare.prepare, config)
    rebuilt = [p for p, t in shards.items() if p.stat().st_mtime_ns != t]
    ok = record_narration(summary["dataset_dir"], "train", nid) == "drill: a corrected text"
    return (f"{len(rebuilt)} of {len(shards)} video shards rebuilt (the edited row's), the "
            f"data set reassembled", none_if(ok, "the record holds the corrected narration"))


@accident("swapped_annotations", "the data set's annotation copy is replaced by another CSV, "
          "then training starts")
def swapped_annotations(drill: Drill):
    annotations, _, data, _ = prepared_copy(drill, "swapped")
    edit_first_narration(annotations / ek100.TRAIN_CLIPS_FILE, "another text")
    shutil.copyfile(annotations / ek100.TRAIN_CLIPS_FILE,
                    data / prepare.ANNOTATIONS / ek100.TRAIN_CLIPS_FILE)
    workdir = drill.workdir("swapped_annotations")
    try:
        quiet(train.train_and_evaluate, drill.config(dataset_dir=str(data)), workdir)
        return "trained on", "YES: records trained against other annotations"
    except verify.DatasetError as e:
        said = str(e)
    ok = not (workdir / "checkpoints").exists() and ek100.TRAIN_CLIPS_FILE in said
    return ("refused before the first step: " + shorten(said, 110),
            none_if(ok, "nothing trained on mismatched records"))


@accident("csv_encoding", "an annotation CSV saved with a byte-order mark; another with a "
          "byte that is not UTF-8")
def csv_encoding(drill: Drill):
    drill.dataset  # noqa: B018
    source = drill.root / "shared" / "synthkitchens" / synthetic.ANNOTATION_DIR
    folder = drill.workdir("csv_encoding")
    folder.mkdir(parents=True)
    text = (source / ek100.TRAIN_CLIPS_FILE).read_bytes()
    (folder / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text)
    bom_rows = len(ek100.read_clips(folder / "bom.csv"))
    lines = text.split(b"\n")
    lines[2] = lines[2].replace(b",", b",\xff", 1)
    (folder / "latin.csv").write_bytes(b"\n".join(lines))
    try:
        ek100.read_clips(folder / "latin.csv")
        return f"BOM: {bom_rows} rows read; the bad byte was read", "YES: a bad byte went in"
    except ek100.AnnotationError as e:
        said = shorten(str(e))
    ok = bom_rows == len(ek100.read_clips(source / ek100.TRAIN_CLIPS_FILE))
    return (f"BOM: all {bom_rows} rows read; bad byte: {said}",
            none_if(ok, "every row read or the file refused by line"))


@accident("truncated_video", "one source video is cut to half its size before preparation")
def truncated_video(drill: Drill):
    drill.dataset  # noqa: B018
    videos = drill.workdir("truncated_videos")
    shutil.copytree(drill.root / "shared" / "synthkitchens", videos)
    video = sorted(videos.rglob("*.MP4"))[0]
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    out = drill.workdir("data_truncated")
    command = [sys.executable, "tools/prepare_ek100.py", "--annotations",
               str(videos / synthetic.ANNOTATION_DIR), "--videos", str(videos), "--output",
               str(out), "--num_frames", "4", "--short_side", "40", "--workers", "1",
               "--no_progress"]
    refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    allowed = subprocess.run(command + ["--allow_skipped"], cwd=REPO, capture_output=True,
                             text=True)
    summary = json.loads((out / prepare.SUMMARY_FILE).read_text())
    skipped = sum(summary["skipped"].values())
    ok = refused.returncode == 1 and allowed.returncode == 0 and skipped > 0
    return (f"exit {refused.returncode}: {skipped} clip(s) skipped, named in the report; with "
            f"--allow_skipped exit {allowed.returncode}, {sum(summary['clips'].values())} clips "
            f"written", none_if(ok, "no clip dropped silently"))


@accident("killed_preparation", "a preparation killed while assembling leaves TFDS's "
          "incomplete.* folder and a shard's temporary; it is run again")
def killed_preparation(drill: Drill):
    _, out, data, config = prepared_copy(drill, "killed")
    (data.parent / "incomplete.DRILL1_1.0.0").mkdir()
    shards = shard_times(out)
    shard = min(shards)
    (shard.parent / f".{shard.name}.drill123.tmp").write_bytes(b"half a shard")
    summary = quiet(prepare.prepare, config)
    said = next((x for x in quiet.err.splitlines() if "leftover" in x), "")
    ok = (not list(data.parent.glob("incomplete.*")) and "2 leftover(s)" in said
          and summary["dataset_dir"] == str(data)
          and shard_times(out) == shards)
    return ("the rerun removed 2 leftovers, saying so, and reused the shards",
            none_if(ok, "the data set is whole"))


@accident("planted_features_json", "a data set's features.json names a module "
          "(TFDS would import it)")
def planted_features_json(drill: Drill):
    _, _, data, _ = prepared_copy(drill, "planted")
    path = data / verify.FEATURES_FILE
    path.write_text(path.read_text().replace(
        "tensorflow_datasets.core.features.sequence_feature.Sequence", "os.system", 1))
    try:
        pipeline.open_split(data, "train")
        return "opened", "YES: the named module was imported"
    except verify.DatasetError as e:
        said = str(e).split(": ", 1)[-1]
    planted = "os.system" in path.read_text()
    return (f"refused before TFDS read it: {shorten(said, 70)}",
            none_if(planted and "os.system" in said, "nothing imported"))


# ---------------------------------------------------------------------------------------------


def main_(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--only", default="", help=f"comma-separated names from {list(ACCIDENTS)}")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ACCIDENTS)
    unknown = [n for n in names if n not in ACCIDENTS]
    if unknown:
        print(f"error: --only: unknown accident(s) {unknown}; expected {list(ACCIDENTS)}",
              file=sys.stderr)
        return 2
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="fault-drill-"))
    drill = Drill(root)
    rows, failed = [], False
    for name in names:
        description, fn = ACCIDENTS[name]
        started = time.perf_counter()
        try:
            happened, lost = fn(drill)
        except Exception as e:  # noqa: BLE001  a drill row that breaks is a result too
            happened, lost = f"drill failed: {type(e).__name__}: {e}"[:200], "unknown"
        failed |= not lost.startswith("none")
        rows.append((name, description, happened, lost, time.perf_counter() - started))
        print(f"{name}: {happened} | lost: {lost}", file=sys.stderr, flush=True)
    print("| accident | what happened | data lost | s |\n|---|---|---|---|")
    for name, description, happened, lost, seconds in rows:
        print(f"| **{name}**: {description} | {happened} | {lost} | {seconds:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_())
