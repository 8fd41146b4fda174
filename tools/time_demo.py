"""`make demo`'s wall time at two commits, side by side, and where the time goes.

    python tools/time_demo.py --old OLD_CHECKOUT --new NEW_CHECKOUT [--repeats 3]
        [--venvs DIR] [--python PYTHON] [--log DIR]

Each checkout gets its own fresh virtual environment under --venvs (``PYTHON -m venv``, then the
demo's own ``pip install -q -e .``, timed: the install a new user pays once), so that neither
touches the environment this script runs in. Then ``make demo PYTHON=<its venv's python>``
runs in each checkout, alternating old, new, old, new, ... (--repeats times each, so that a
change of load on the machine falls on both), each after removing the checkout's runs/demo:
the whole target as a user runs it, its Makefile's exported variables included (before issue 22
the demo inherited the test suite's 8 simulated devices), its `pip install` a no-op by then.
XLA_FLAGS and GLIBC_TUNABLES are removed from the environment first: each Makefile decides.

Every output line is time-stamped as it arrives; the stages are read from the lines the job
prints (SynthKitchens generated / prepared / the first and last step of the progress bar /
each evaluation's table / the closing lines), so the profile costs the run nothing:

  start + generate   process starts, imports, the Makefile's pip install, SynthKitchens
                     (the line gives the generation's own seconds, split off)
  prepare            PyAV decode -> TFDS ArrayRecord ("prepared ... in S s")
  set-up + compile   model init, checkpoint manager, the train step's trace and XLA compile,
                     up to the first finished step
  train              the other steps (evaluations excluded)
  evaluations        each evaluation during training (the first one compiles the embedders)
  finish             after the last table: the last checkpoint written, the closing lines
  eval mode          what follows the training job: a second process reports the plots and
                     gallery (`--mode eval`); 0 where the Makefile runs none

Prints one row per run (wall time, stages, the run's avg mAP from runs/demo/metrics.json), then
per checkout the medians and the ratio new / old of the median wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

STAGES = ("start + generate", "prepare", "set-up + compile", "train", "evaluations", "finish",
          "eval mode")
PROGRESS = re.compile(rb"\|\s*(\d+)/(\d+) \[")  # tqdm: "| 12/400 ["


def run_stamped(command: list[str], cwd: pathlib.Path, env: dict, log: pathlib.Path
                ) -> tuple[float, list[tuple[float, bytes]]]:
    """Runs ``command``; returns (wall seconds, [(seconds since start, line)]) with every
    stdout/stderr line (tqdm's carriage-return updates split into lines) stamped on arrival."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines, buf, since = [], b"", 0.0
    with open(log, "wb") as out:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            now = time.perf_counter() - start
            since = since if buf else now
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            # A line is stamped when its first byte came: tqdm writes "\r" + the bar, so a bar
            # line ends only when the next output starts.
            for k, line in enumerate(done):
                if line.strip():
                    lines.append((since if k == 0 else now, line))
                    out.write(b"%8.1f %s\n" % lines[-1])
            since = now if done else since
        if buf.strip():
            lines.append((since, buf))
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(command)} in {cwd}: exit {code}; see {log}")
    return wall, lines


def profile(wall: float, lines: list[tuple[float, bytes]]) -> dict[str, float]:
    """The stages (module docstring) of one run from its stamped lines; they add up to
    ``wall``."""
    closing = [i for i, (_, line) in enumerate(lines) if line.startswith(b"outputs of ")]
    job = lines[:closing[0] + 1] if closing else lines  # the training job's lines
    job_end = job[-1][0] if closing else wall

    def found(pattern: bytes) -> tuple[float, float]:
        """(stamp, the seconds the line states) of the first line matching ``pattern``."""
        return next((t, float(m[1])) for t, line in job if (m := re.search(pattern, line)))

    generated_at, generate = found(rb"SynthKitchens generated in ([\d.]+) s")
    prepared_at, _ = found(rb"prepared .* clips in ([\d.]+) s")
    bars = [(i, t, int(m[1])) for i, (t, line) in enumerate(job)  # TFDS has bars of its own
            if t >= prepared_at and (m := PROGRESS.search(line))]
    first_step = next(t for _, t, n in bars if n >= 1)
    # Each evaluation prints its table ("step N: ...") after the step; it is timed from the
    # progress bar's last update before the table (the bar skips updates, so the time of a
    # step or two may fall to the evaluation).
    tables = [(j, t) for j, (t, line) in enumerate(job) if re.match(rb"step \d+: ", line)]
    before = [max(((i, t) for i, t, _ in bars if i < j), default=(j, t))[1] for j, t in tables]
    evals = [t - b for (_, t), b in zip(tables, before)]
    train_end = before[-1] if tables else bars[-1][1]
    last_table = tables[-1][1] if tables else train_end
    return {"start + generate": generated_at,
            "prepare": prepared_at - generated_at,
            "set-up + compile": first_step - prepared_at,
            "train": train_end - first_step - sum(evals[:-1]),
            "evaluations": sum(evals),
            "finish": job_end - last_table,
            "eval mode": wall - job_end,
            "generate (inside start)": generate,
            "steps": max(n for _, _, n in bars)}


def fresh_venv(checkout: pathlib.Path, venv: pathlib.Path, python: str, env: dict) -> float:
    """A new virtual environment with the checkout installed as the demo installs it (its
    ``pip install -q -e .``); returns the seconds the install took."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    start = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", "."],
                   cwd=checkout, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, type=pathlib.Path, help="checkout of the old commit")
    p.add_argument("--new", required=True, type=pathlib.Path, help="checkout of the new commit")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--venvs", type=pathlib.Path, default=pathlib.Path("/tmp/time_demo_venvs"))
    p.add_argument("--python", default=sys.executable,
                   help="the Python the virtual environments are made from")
    p.add_argument("--log", type=pathlib.Path, default=pathlib.Path("/tmp/time_demo_logs"))
    p.add_argument("--reuse_venvs", action="store_true",
                   help="keep --venvs from an earlier call (no install timed)")
    args = p.parse_args()

    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "GLIBC_TUNABLES", "PYTHONPATH", "VIRTUAL_ENV")}
    args.log.mkdir(parents=True, exist_ok=True)
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    for name, path in checkouts.items():
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--short", "-uno"],
                               capture_output=True, text=True).stdout.strip()
        print(f"{name}: {path} at {commit}{' + local changes' if dirty else ''}", flush=True)
        venv = args.venvs / name
        if not args.reuse_venvs or not (venv / "bin" / "python").exists():
            seconds = fresh_venv(path, venv, args.python, env)
            print(f"{name}: fresh venv, pip install -q -e . in {seconds:.1f} s", flush=True)

    rows = []
    for i in range(args.repeats):
        for name, path in checkouts.items():
            shutil.rmtree(path / "runs" / "demo", ignore_errors=True)
            python = args.venvs / name / "bin" / "python"
            load = os.getloadavg()[0]
            wall, lines = run_stamped(["make", "demo", f"PYTHON={python}"], path, env,
                                      args.log / f"{name}_{i + 1}.log")
            result = json.loads((path / "runs" / "demo" / "metrics.json").read_text())
            row = {"run": f"{name} {i + 1}", "checkout": name, "wall": wall, "load": load,
                   "mAP": result["mAP"]["avg"], "nDCG": result["nDCG"]["avg"],
                   **profile(wall, lines)}
            rows.append(row)
            print(f"{row['run']}: {wall:.1f} s, avg mAP {row['mAP']:.2f}, load at start "
                  f"{load:.1f}", flush=True)
    (args.log / "results.json").write_text(json.dumps(rows, indent=1))

    cols = ("wall", *STAGES, "mAP")
    print("\n| run | load | " + " | ".join(f"{c} (s)" if c not in ("mAP",) else "avg mAP"
                                          for c in cols) + " |")
    print("|---|" + "---:|" * (len(cols) + 1))
    for r in rows:
        print(f"| {r['run']} | {r['load']:.1f} | "
              + " | ".join(f"{r[c]:.2f}" if c == "mAP" else f"{r[c]:.1f}" for c in cols) + " |")
    medians = {}
    for name in checkouts:
        mine = [r for r in rows if r["checkout"] == name]
        medians[name] = {c: statistics.median(r[c] for r in mine) for c in cols}
        m = medians[name]
        print(f"| **{name}: median** | | "
              + " | ".join(f"{m[c]:.2f}" if c == "mAP" else f"{m[c]:.1f}" for c in cols) + " |")
    print(f"\nnew / old, median wall time: {medians['new']['wall']:.1f} / "
          f"{medians['old']['wall']:.1f} s = {medians['new']['wall'] / medians['old']['wall']:.3f}")


if __name__ == "__main__":
    main()
