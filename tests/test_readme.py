"""Every command in the README runs as written, at tiny size, on a fresh machine's files.

The README's commands (its ```bash blocks, and the `python ...` / `make ...` / `pip ...` spans
of its prose) are read from the file; `PLAN` holds, for each, the command this test runs. A
planned command is the README's own, in a folder laid out like a user's (`world`): its
placeholders are real files there (DATA is what the README's preparation command wrote,
CONVERTED what its conversion wrote, ROOT and ANN SynthKitchens' videos and annotations,
configs/X.py a config of the converted model), and only size changes are added: fewer
steps, a smaller batch, the tiny model of the stand-in checkpoint, the demo's 'test' size.
A README command missing from `PLAN`, or a planned one gone from the README, fails the first
test: the README cannot drift from what runs. The few commands not run here say why
(`Elsewhere`): CI runs `make test` itself.

The commands run in `PLAN`'s order, each needing what the ones before it made (about five
minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tiny_run import REPO, TINY

README = REPO / "README.md"

# The flags a planned command may add to the README's: size only (a few steps of a small batch,
# no worker processes, the stand-in checkpoint's own architecture and 32 px frames).
SIZE_FLAGS = ("global_batch_size", "total_steps", "optim.warmup_steps", "data.num_workers",
              "eval.num_workers", "eval.batch_size", "init_from.architecture",
              "data.resolution", "epochs")
SMALL_RUN = ("--config.global_batch_size=8 --config.total_steps=2 --config.optim.warmup_steps=1 "
             "--config.data.num_workers=0 --config.eval.num_workers=0 --config.eval.batch_size=8")
FINE_TUNE = f"{SMALL_RUN} --config.init_from.architecture=checkpoint --config.data.resolution=32"
EVAL = "--config.eval.num_workers=0"
DRY_RUN = (("pip install", "pip install -q --dry-run"),)  # resolves the extra, installs nothing


@dataclasses.dataclass(frozen=True)
class Run:
    """Runs the README command with ``fill``'s replacements (option brackets, a placeholder
    that is no file, --dry-run) and ``size`` (flags of SIZE_FLAGS) appended; it must exit 0
    and print ``expect``."""

    size: str = ""
    fill: tuple[tuple[str, str], ...] = ()
    expect: str = ""


@dataclasses.dataclass(frozen=True)
class Serve:
    """Starts the README command (a server) with ``fill`` (its port: a free one), waits until
    it answers 200 on ``path``, stops it."""

    fill: tuple[tuple[str, str], ...] = ()
    path: str = "/"


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    """Not run by this test, for ``reason``."""

    reason: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEARCH_PORT, BOARD_PORT = free_port(), free_port()

# README command -> how it runs. Ordered: each may use what the ones before it made.
PLAN = {
    # Set-up.
    "python3 -m venv .venv && . .venv/bin/activate && make test": Elsewhere(
        ".ci/run is this command: a fresh virtual environment, then make test"),
    "make test": Elsewhere(".ci/run runs it on every submission (make test-ci)"),
    "make test-newest": Elsewhere(".ci/run runs it on every submission (make test-ci)"),
    "make test-ci": Elsewhere(".ci/run is this command: make test and make test-newest, their "
                              "suites at once"),
    "make test-slow": Elsewhere("the slow suite (full-size parity, the full demo); make test "
                                "runs every fast test"),
    "pip install -e .": Run(fill=DRY_RUN),
    "pip install -e '.[torch]'": Run(fill=DRY_RUN),
    "pip install -e '.[tpu]'": Run(fill=DRY_RUN),
    "pip install -e '.[cuda12]'": Run(fill=DRY_RUN),
    "pip install -e '.[beam]'": Run(fill=DRY_RUN),
    # SynthKitchens, and the EK-100 preparation run on it.
    "python tools/synthkitchens.py --out DIR [--size demo|test|default] "
    "[--layout mp4|chunked|frames]": Run(fill=(
        ("DIR", "synth"), ("[--size demo|test|default]", "--size test"),
        ("[--layout mp4|chunked|frames]", "--layout chunked"))),
    "python tools/prepare_ek100.py --annotations ANN --videos ROOT --output DATA": Run(
        expect="clips"),
    # The demo and its variants.
    # (The three run one demo: the first trains it, the others find it done.)
    "python3 -m venv .venv && . .venv/bin/activate && make demo": Run(
        fill=(("python3 -m venv .venv && . .venv/bin/activate && ", ""),),
        expect="outputs of runs/demo"),
    "make demo": Run(expect="outputs of runs/demo"),
    "python -m tempret_jax.main --config configs/synthetic.py --workdir runs/demo": Run(
        fill=(("synthetic.py", "synthetic.py:test"),), expect="outputs of runs/demo"),
    "python -m tempret_jax.main --config configs/synthetic.py:joint,sms --workdir runs/x": Run(
        fill=(("joint,sms", "joint,sms,test"),), expect="mAP"),
    # Checkpoints: conversion, zero-shot, fine-tuning.
    "python tools/convert_checkpoint.py avion_pretrain_lavila_vitb_best.pt converted/avion_b16":
        Run(expect="wrote converted/avion_b16"),
    "python -m tempret_jax.main --mode eval --checkpoint converted/avion_b16 --workdir "
    "runs/avion_b16_zero_shot --config.dataset_dir=DATA": Run(size=EVAL, expect="mAP"),
    "python -m tempret_jax.main --config configs/ek100_tempret_vitb16.py --workdir "
    "runs/tempret_b --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION": Run(
        size=FINE_TUNE, expect="mAP"),
    "python -m tempret_jax.main --config configs/ek100_tempret_vitb16.py --workdir "
    "runs/tempret_b --config.dataset_dir=DATA --config.init_from.path=converted/avion_b16": Run(
        size=FINE_TUNE, expect="outputs of runs/tempret_b"),  # the same run, found complete
    # Pretraining, EgoMCQ and Charades-Ego, on SynthKitchens' world in their formats.
    "python tools/synthkitchens.py --format ego --out EGO": Run(expect="egoclip.csv"),
    "python tools/prepare.py --corpus ego4d --annotations EGO/ego4d --videos EGO/ego4d/videos "
    "--output EGO4D_DATA --num_frames 4": Run(expect="clips"),
    "python tools/prepare.py --corpus charades_ego --annotations EGO/charades_ego --videos "
    "EGO/charades_ego/videos --output CHARADES_DATA --num_frames 16": Run(expect="clips"),
    "python -m tempret_jax.main --mode eval --checkpoint CONVERTED --workdir runs/zs_egomcq "
    "--config.dataset_dir=EGO4D_DATA": Run(size=EVAL, expect="EgoMCQ"),
    "python -m tempret_jax.main --mode eval --checkpoint CONVERTED --workdir runs/zs_charades "
    "--config.dataset_dir=CHARADES_DATA": Run(size=EVAL, expect="mAP"),
    "python -m tempret_jax.main --config configs/egoclip_eva02at_b.py --workdir runs/egoclip_b "
    "--config.dataset_dir=EGO4D_DATA --config.init_from.path=CONVERTED": Run(
        size=FINE_TUNE, expect="EgoMCQ"),
    "python -m tempret_jax.main --config configs/charades_ego_eva02at_b.py --workdir "
    "runs/charades_b --config.dataset_dir=CHARADES_DATA --config.init_from.path=runs/egoclip_b":
        Run(size=f"{FINE_TUNE} --config.epochs=0", expect="mAP"),
    "python tools/pretrain_chain.py --workdir runs/chain": Elsewhere(
        "tests/test_pretraining_chain.py runs this chain at this size (tools/pretrain_chain.py "
        "run(workdir, 'test', seed=0))"),
    "python tools/prepare.py --corpus ego4d --annotations EGO/ego4d --videos EGO/ego4d/videos "
    "--output EGO4D_BEAM --num_frames 4 --runner beam --direct_num_workers 2": Run(
        expect="clips"),
    "python tools/prepare.py --corpus ego4d --annotations /mnt/ego4d/meta --videos "
    "/mnt/ego4d/chunked --output /mnt/ego4d/prepared --num_frames 4 --runner beam "
    '--beam_options="--runner=FlinkRunner --flink_master=FLINK_HOST:8081 '
    "--environment_type=EXTERNAL --environment_config=localhost:50000 --parallelism=256\"": Elsewhere(
        "needs a Flink cluster and Ego4D; tests/test_data_beam.py runs the same pipeline on "
        "the DirectRunner and checks it against the local path"),
    # Evaluating and searching runs and checkpoints.
    "python -m tempret_jax.main --mode eval --workdir runs/x": Run(size=EVAL, expect="mAP"),
    "python -m tempret_jax.main --mode eval --workdir runs/x --step STEP --config.eval.tta=True":
        Run(size=EVAL, fill=(("STEP", "2"),), expect="mAP"),
    "python -m tempret_jax.main --mode eval --config configs/X.py --workdir runs/x_converted "
    "--checkpoint CONVERTED": Run(size=EVAL, expect="mAP"),
    "python -m tempret_jax.main --mode eval --workdir runs/zero_shot --checkpoint CONVERTED "
    "--config.dataset_dir=DATA": Run(size=EVAL, expect="mAP"),
    'python -m tempret_jax.main --mode search --workdir runs/x --query "cut the onion"': Run(
        size=EVAL, expect="narration"),
    "python -m tempret_jax.main --mode search --workdir runs/zero_shot --checkpoint CONVERTED "
    '--config.dataset_dir=DATA --query "..."': Run(
        size=EVAL, fill=(('"..."', '"open the drawer"'),), expect="narration"),
    "python -m tempret_jax.doctor [--dataset_dir DATA] [--workdir RUN] [--checkpoint CONVERTED]":
        Run(fill=(("[", ""), ("]", "")), expect="backend"),
    "python tools/evaluate_similarity.py sim.npy --annotation_dir tests/data/ek100": Run(
        expect="mAP"),
    "python tools/fit_check.py --config configs/X.py --target v5e:2x2 --target v5p:2x2x1 "
    "[--global_batch 32] [--set model.remat=True]": Run(
        fill=(("[--global_batch 32]", "--global_batch 8"),
              ("[--set model.remat=True]", "--set model.remat=True")), expect="v5p"),
    "python tools/fault_drill.py": Run(fill=(("fault_drill.py", "fault_drill.py --only "
                                                                "bad_torch_file"),),
                                       expect="bad_torch_file"),
    "python tools/recipes_table.py": Run(fill=(("recipes_table.py", "recipes_table.py --check"),)),
    "python -m tempret_jax.search_server --workdir runs/demo --port 8000": Serve(
        fill=(("8000", str(SEARCH_PORT)),)),
    "tensorboard --logdir runs/demo/tensorboard": Serve(
        fill=(("tensorboard", f"tensorboard --port {BOARD_PORT}", ),)),
}


def planned(readme: str) -> str:
    """The command run for a README command (its plan's fills, then its size flags)."""
    plan = PLAN[readme]
    command = readme
    for old, new in plan.fill:
        assert old in command, (readme, old)
        command = command.replace(old, new)
    return f"{command} {getattr(plan, 'size', '')}".strip()


def port_of(readme: str) -> int:
    return int(re.search(r"--port (\d+)", planned(readme))[1])


def readme_commands(text: str) -> list[str]:
    """The commands of a README: each line of its ```bash blocks (continuations joined,
    comments dropped) and each `python|python3|make|pip ...` span of its prose, whitespace
    normalised, in order of first appearance."""
    found = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                found.append(" ".join(line.split()))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [" ".join(span.split())
              for span in re.findall(r"`((?:python3?|make|pip) [^`]+)`", prose)]
    return list(dict.fromkeys(found))


def test_every_readme_command_is_planned_and_every_plan_is_in_the_readme():
    commands = readme_commands(README.read_text())
    assert sorted(set(commands) - set(PLAN)) == [], "README commands this test does not run"
    assert sorted(set(PLAN) - set(commands)) == [], "planned commands gone from the README"


def test_a_planned_command_adds_only_size_flags_to_the_readmes():
    for readme, plan in PLAN.items():
        if isinstance(plan, Run):
            for flag in plan.size.split():
                key = re.fullmatch(r"--config\.([\w.]+)=\S+", flag)
                assert key and key[1] in SIZE_FLAGS, (readme, flag)
        else:
            assert isinstance(plan, Serve) or plan.reason


# ---------------------------------------------------------------------------------------------
# The user's folder.


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder laid out as a user's: the repository's configs and tools, SynthKitchens'
    videos and annotations as ROOT / ANN, the published checkpoint's stand-in, a similarity
    matrix of the EK-100 test split, and configs/X.py (a config of the converted model)."""
    from tempret_jax.data import synthetic

    root = tmp_path_factory.mktemp("world")
    (root / "configs").mkdir()
    for config in (REPO / "configs").glob("*.py"):
        (root / "configs" / config.name).symlink_to(config)
    (root / "configs" / "X.py").write_text(X_CONFIG)
    for name in ("tools", "tests", "Makefile", "pyproject.toml", "tempret_jax", "README.md"):
        (root / name).symlink_to(REPO / name)
    synthetic.generate(root / "ROOT", TINY)
    (root / "ANN").symlink_to(root / "ROOT" / synthetic.ANNOTATION_DIR)
    _avion_stand_in(root / "avion_pretrain_lavila_vitb_best.pt")
    (root / "CONVERTED").symlink_to(root / "converted" / "avion_b16")
    (root / "CONVERTED_AVION").symlink_to(root / "converted" / "avion_b16")
    (root / "RUN").symlink_to(root / "runs" / "x")
    rng = np.random.default_rng(0)
    np.save(root / "sim.npy", rng.standard_normal((9668, 3842), dtype=np.float32))
    return root


# "Your config" for the converted checkpoint: AVION's EK-100 recipe with the checkpoint's model.
X_CONFIG = '''"""configs/X.py of the README: AVION's EK-100 recipe with converted/avion_b16's model."""
from tempret_jax import convert, recipes


def get_config(arg=None):
    c = recipes.ek100("ek100_avion_vitb16")
    c.dataset_dir = "DATA"  # your prepared data set
    c.model = convert.read_model_config("converted/avion_b16")
    c.data.resolution = c.model.vision.image_size
    c.model.vision.num_frames = c.data.num_frames
    c.eval.batch_size = 8
    return c
'''


def _avion_stand_in(path) -> None:
    """AVION's tiny golden pretraining checkpoint (tests/data/golden/avion, saved by AVION's own
    script) made to look like a released one: CLIP's 49,408-token vocabulary (random rows),
    and no model name in its args, so its heads are width // 64 as every released model's."""
    import torch

    saved = torch.load(REPO / "tests/data/golden/avion/avion_pretrain_tiny.pt",
                       weights_only=False)  # our own committed test file
    del saved["args"].model
    saved["args"].vocab_size = 49408
    table = saved["state_dict"]["module.textual.token_embedding.weight"]
    generator = torch.Generator().manual_seed(0)
    saved["state_dict"]["module.textual.token_embedding.weight"] = 0.02 * torch.randn(
        49408, table.shape[1], generator=generator)
    torch.save(saved, path)


def _environment() -> dict:
    """A user's shell: this environment's python, pip and tensorboard first on PATH, the
    machine's real devices (no simulated ones)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    return env


DEMO_FILL = (("configs/synthetic.py ", "configs/synthetic.py:test "),) + DRY_RUN


def _commands(readme: str, world) -> list[str]:
    """What runs for a README command: `make demo` is what `make -n demo` lists (its pip line
    dry-run: this environment is the installed one; the demo at its test size)."""
    command = planned(readme)
    if command != "make demo":
        return [command]
    # --no-print-directory: under `make test` (CI) this make is a sub-make, which would also
    # print its "Entering directory" lines.
    lines = subprocess.run(["make", "-n", "--no-print-directory", "demo"], cwd=world,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert any("tempret_jax.main" in line for line in lines), lines
    for old, new in DEMO_FILL:
        lines = [line.replace(old, new) for line in lines]
    return lines


def _run(command: str, world, expect: str) -> None:
    done = subprocess.run(command, shell=True, cwd=world, env=_environment(),
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{output[-3000:]}"
    assert expect in output, f"{command}: expected {expect!r} in\n{output[-3000:]}"


def _serve(command: str, port: int, path: str, world) -> None:
    server = subprocess.Popen(command, shell=True, cwd=world, env=_environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    status = None
    try:
        deadline = time.time() + 300
        while status is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                            timeout=5) as answer:
                    status = answer.status
            except OSError:
                time.sleep(1)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert status == 200, f"{command}: no answer (exit {server.poll()})\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]


RUN_HERE = [c for c, plan in PLAN.items() if not isinstance(plan, Elsewhere)]


@pytest.mark.parametrize("readme", RUN_HERE, ids=[f"{i:02d}" for i in range(len(RUN_HERE))])
def test_the_readme_command_runs_as_written(readme, world):
    plan = PLAN[readme]
    if isinstance(plan, Serve):
        _serve(planned(readme), port_of(readme), plan.path, world)
        return
    commands = _commands(readme, world)
    for command in commands:
        _run(command, world, plan.expect if command == commands[-1] else "")


def test_the_demo_wrote_what_it_says_where_it_says(world):
    """After the README's commands: the demo's run folder describes itself."""
    record = json.loads((world / "runs" / "demo" / "metrics.json").read_text())
    assert 0 < record["mAP"]["avg"] <= 100
    assert (world / "runs" / "demo" / "config.json").is_file()
