"""The papers' chain end to end at tiny size (issue 20 item 7): pretrain on synthetic EgoClip
with EgoNCE, keep the best checkpoint by EgoMCQ intra accuracy, fine-tune on synthetic EK-100
MIR from it and from scratch, evaluate; pretraining helps (tools/pretrain_chain.py)."""

import json

from tempret_jax import checkpoint
from tools import pretrain_chain


def test_pretraining_on_egoclip_helps_the_ek100_fine_tune(tmp_path):
    result = pretrain_chain.run(tmp_path, "test", seed=0)
    scores = json.loads((tmp_path / "pretrain" / checkpoint.CHECKPOINTS /
                         checkpoint.SCORES_FILE).read_text())
    steps, fine_tune_steps = pretrain_chain.SIZES["test"][2:4]
    assert len(scores) == 4  # EgoMCQ every quarter of the pretraining
    # The fine-tune's start: the kept step with the highest intra accuracy (keep_best).
    best = result["pretrain_best_step"]
    assert best == checkpoint.best_step(tmp_path / "pretrain", "egomcq_intra")
    assert result["egomcq"]["egomcq_intra"] == max(v["egomcq_intra"] for v in scores.values())
    # The fine-tune started from that step's parameters, the other from a fresh init.
    tuned = json.loads((tmp_path / "from_pretrained" / "config.json").read_text())
    assert tuned["init_from"]["best_metric"] == "egomcq_intra"
    assert json.loads((tmp_path / "from_scratch" / "config.json").read_text())[
        "init_from"]["path"] == ""
    for name in ("from_pretrained", "from_scratch"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["step"] == \
            fine_tune_steps
    assert result["from_pretrained"]["avg"] > result["from_scratch"]["avg"], result
    assert json.loads((tmp_path / "chain.json").read_text()) == result
    assert "from pretrained" in pretrain_chain.table(result)
