"""Does each paper's own component help? Each method family at tiny size on SynthKitchens,
scored with and without the part its paper adds.

    python tools/study_components.py --workdir runs/study [--steps 300] [--size study]

| family | its component | with | without |
|---|---|---|---|
| SMS | SMS loss | joint attention, SMS | the same with AVION's MI-MM |
| EVA02-AT | learned + spatial-temporal RoPE | joint, SMS, 'learned+rope' | joint, SMS, learned |
| CR-CLIP | context refinement | joint, SMS, refinement | joint, SMS |
| CR-CLIP | test-time views | the refinement run, 5 views | the same run, centre crop |
| EgoVLP | dual-softmax (EgoVLP's form) | adaptive MI-MM run, dual-softmax | the same run, none |
| TempRet | temporal transformer | frames -> temporal transformer, SMS | frames -> mean, SMS |
| TempRet | ITM rerank (stage 2) | stage 2 on the TempRet run, top-K reranked | its dual encoder |

Every run trains configs/synthetic.py (the demo's data, seed and schedule; ``--size study``
narrows the model to a 2-layer, 64-wide ViT so that the eight trainings take minutes, ``demo``
keeps the demo's, ``test`` is the test suite's seconds-long size) for ``--steps`` steps, and is scored on the test split (avg mAP / nDCG of
both directions). The stage-2 run holds ``HOLDOUT`` training clips out and tunes the rerank's K
and alpha on them. Results go to <workdir>/study.jsonl (a finished row is not run again; a run
resumes from its checkpoint) and are printed as a table.
"""

import argparse
import importlib.util
import json
import pathlib

from tempret_jax import main, state
from tempret_jax.evaluators import ek100_mir

CONFIG = pathlib.Path(__file__).parent.parent / "configs" / "synthetic.py"
HOLDOUT = {"study": 128, "demo": 128, "test": 2}  # of 1,024 training clips (test: 8)
# Training runs: name -> (configs/synthetic.py arg, model overrides).
RUNS = {
    "joint_sms": ("joint,sms", {}),
    "joint_mi_mm": ("joint,mi_mm", {}),
    "joint_sms_st_rope": ("joint,sms", {"vision.pos_embed": "learned+rope"}),
    "joint_sms_refine": ("joint,sms", {"refine.enabled": True}),
    "joint_adaptive_mi_mm": ("joint,adaptive_mi_mm", {}),
    "tempret_sms": ("tempret,sms", {}),
    "mean_sms": ("mean,sms", {}),
}
# Rows: (family, component, (run, eval overrides) with it, (run, eval overrides) without it).
ROWS = (
    ("SMS", "SMS loss", ("joint_sms", {}), ("joint_mi_mm", {})),
    ("EVA02-AT", "learned + ST-RoPE", ("joint_sms_st_rope", {}), ("joint_sms", {})),
    ("CR-CLIP", "context refinement", ("joint_sms_refine", {}), ("joint_sms", {})),
    ("CR-CLIP", "test-time views", ("joint_sms_refine", {"tta": True}),
     ("joint_sms_refine", {})),
    ("EgoVLP", "dual-softmax", ("joint_adaptive_mi_mm", {"dual_softmax": "egovlp"}),
     ("joint_adaptive_mi_mm", {})),
    ("TempRet", "temporal transformer", ("tempret_sms", {}), ("mean_sms", {})),
    ("TempRet", "ITM rerank", ("tempret_sms_stage2", {"rerank": True}),
     ("tempret_sms_stage2", {})),
)


def load_config(arg: str, size: str, steps: int, overrides: dict):
    """configs/synthetic.py:arg at ``size`` ('study' | 'demo'), ``steps`` steps, model keys
    ``overrides`` ({'refine.enabled': True, ...})."""
    spec = importlib.util.spec_from_file_location("synthetic_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.results_setup(module.get_config(arg + (",test" if size == "test" else "")))
    if size == "study":
        c.model.vision.update(width=64, layers=2)
        c.model.text.update(width=64, layers=2)
        c.model.embed_dim = 64
        c.model.temporal.layers = 1
        c.model.cross_encoder.update(width=64, heads=4, layers=1)
    c.model.refine.update(heads=4)
    for key, value in overrides.items():
        block, name = key.split(".")
        c.model[block][name] = value
    c.total_steps = steps
    c.eval.every_steps = -1
    c.checkpoint.every_steps = steps
    return c


def stage2_config(stage1, stage1_dir: pathlib.Path, steps: int, holdout: int):
    """TempRet's second stage on a trained stage-1 run (as `recipes.stage2`, at demo scale):
    the ITM cross-encoder trains on in-batch hard negatives with the dual encoder frozen,
    without the held-out clips its rerank is tuned on."""
    c = stage1.copy_and_resolve_references()
    c.name = stage1.name + "_stage2"
    c.stage = 2
    c.model.cross_encoder.update(enabled=True, video_tokens="frame")
    c.itm.update(freeze_dual_encoder=True, dual_loss_weight=0.0)
    c.optim.update(lr=1e-3, start_lr=1e-5, end_lr=1e-5, freeze="")
    c.init_from.update(path=str(stage1_dir / "checkpoints"), include=state.DUAL_ENCODER)
    c.data.holdout_clips = holdout
    c.total_steps = steps
    return c


def score(config, run_dir: pathlib.Path, name: str, eval_overrides: dict) -> dict:
    """avg mAP / nDCG of a trained run on the test split with ``eval_overrides``: tta,
    dual_softmax, rerank (K and alpha tuned on the held-out clips)."""
    c = config.copy_and_resolve_references()
    c.eval.tta = eval_overrides.get("tta", False)
    c.eval.dual_softmax = eval_overrides.get("dual_softmax", "none")
    if eval_overrides.get("rerank"):
        c.eval.rerank.update(k=10, ks=(5, 10, 20), alphas=(0.1, 0.5, 1.0, 2.0, 5.0),
                             curve_ks=(5, 10, 20))
    setup = state.TrainSetup(c)
    params, step = setup.load_eval_params(run_dir, expect_config=c.name)
    out = run_dir / ("eval_" + ("_".join(sorted(eval_overrides)) or "plain"))
    result = ek100_mir.evaluate(setup.model, params, setup.mesh, c, out=out)
    record = result.record.get("rerank", result.record)
    return {"step": step, "mAP": record["mAP"]["avg"], "nDCG": record["nDCG"]["avg"],
            **({"k": record["k"], "alpha": record["alpha"]} if "k" in record else {})}


def train(name: str, args, data: str) -> tuple:
    """Trains run ``name`` (resuming); returns (its config, its workdir)."""
    if name == "tempret_sms_stage2":
        stage1, stage1_dir = train("tempret_sms", args, data)
        config = stage2_config(stage1, stage1_dir, args.steps, HOLDOUT[args.size])
    else:
        arg, overrides = RUNS[name]
        config = load_config(arg, args.size, args.steps, overrides)
    config.dataset_dir = data
    run_dir = args.workdir / name
    main.run(config, run_dir, "train")
    return config, run_dir


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", default="study", choices=("study", "demo", "test"),
                        help="test: configs/synthetic.py's seconds-long size (the test suite)")
    parser.add_argument("--rows", default=",".join(map(str, range(len(ROWS)))),
                        help="which rows of ROWS to run, by position (default all)")
    args = parser.parse_args(argv)
    rows = [ROWS[int(i)] for i in args.rows.split(",")]
    log = args.workdir / "study.jsonl"
    done = ({(r["run"], json.dumps(r["eval"], sort_keys=True)): r
             for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {})
    data = main.synthetic_dataset(load_config("mean,sms", args.size, args.steps, {}),
                                  args.workdir)
    for *_, with_, without in rows:
        for name, eval_overrides in (with_, without):
            key = (name, json.dumps(eval_overrides, sort_keys=True))
            if key in done:
                continue
            config, run_dir = train(name, args, data)
            record = {"run": name, "eval": eval_overrides, "steps": args.steps,
                      "size": args.size, **score(config, run_dir, name, eval_overrides)}
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            done[key] = record
    print(table(done, rows))


def table(done: dict, rows=ROWS) -> str:
    """The study's markdown table of ``rows`` from its records {(run, eval json): record}."""
    lines = ["| family | component | with: avg mAP / nDCG | without: avg mAP / nDCG | delta mAP |",
             "|---|---|---:|---:|---:|"]
    for family, component, with_, without in rows:
        a, b = (done[(n, json.dumps(o, sort_keys=True))] for n, o in (with_, without))
        tuned = f" (K {a['k']}, alpha {a['alpha']:g})" if "k" in a else ""
        lines.append(f"| {family} | {component}{tuned} | {a['mAP']:.2f} / {a['nDCG']:.2f} | "
                     f"{b['mAP']:.2f} / {b['nDCG']:.2f} | {a['mAP'] - b['mAP']:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main_()
