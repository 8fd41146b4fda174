"""tools/study_components.py: each family's component scored with and without, resumable."""

import json

from tools import study_components as study


def test_rows_train_once_score_both_sides_and_print_the_table(tmp_path, capsys):
    args = ["--workdir", str(tmp_path), "--steps", "2", "--size", "test", "--rows", "3,6"]
    study.main_(args)
    records = [json.loads(line) for line in (tmp_path / "study.jsonl").read_text().splitlines()]
    assert [(r["run"], r["eval"]) for r in records] == [
        ("joint_sms_refine", {"tta": True}), ("joint_sms_refine", {}),
        ("tempret_sms_stage2", {"rerank": True}), ("tempret_sms_stage2", {})]
    assert all(r["step"] == 2 and 0 <= r["mAP"] <= 100 for r in records)
    assert records[2]["k"] in (5, 10, 20) and "k" not in records[3]
    table = capsys.readouterr().out.splitlines()[-4:]
    assert table[0].startswith("| family | component |")
    assert table[2].startswith("| CR-CLIP | test-time views |")
    assert table[3].startswith(f"| TempRet | ITM rerank (K {records[2]['k']}, alpha ")
    # The stage-2 run held its tuning clips out of training, and a rerun scores nothing again.
    saved = json.loads((tmp_path / "tempret_sms_stage2" / "config.json").read_text())
    assert saved["data"]["holdout_clips"] == study.HOLDOUT["test"] and saved["stage"] == 2
    study.main_(args)
    assert len((tmp_path / "study.jsonl").read_text().splitlines()) == 4


def test_the_study_size_narrows_the_model_and_keeps_the_demo_data():
    demo = study.load_config("joint,sms", "demo", 300, {})
    small = study.load_config("joint,sms", "study", 300, {"refine.enabled": True})
    assert small.synthetic.to_dict() == demo.synthetic.to_dict()
    assert (small.model.vision.width, small.model.vision.layers) == (64, 2)
    assert small.model.refine.enabled and not demo.model.refine.enabled
    assert small.total_steps == 300 and small.eval.every_steps == -1
