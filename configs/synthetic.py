"""The embedded demo: SynthKitchens generated, prepared, trained on and evaluated, on a CPU.

    python -m tempret_jax.main --config configs/synthetic.py --workdir runs/demo
    python -m tempret_jax.main --config configs/synthetic.py:joint,mi_mm --workdir runs/x

``arg`` is a comma-separated list of variant tokens (any order; defaults first):
  model:  tempret (per-frame ViT + TempRet temporal transformer) | mean (per-frame ViT, frame
          averaging) | joint (AVION joint space-time attention, learned temporal embedding) |
          rope (EVA02-AT spatial-temporal RoPE, no learned position embedding) |
          egovlp (EgoVLP's Frozen-in-Time: divided space-time attention, DistilBERT over
          SynthKitchens' own WordPiece vocabulary, `synthetic.wordpiece_vocab`)
  loss:   info_nce | sms (EVA02-AT) | mi_mm (AVION) | adaptive_mi_mm (EgoVLP)
  size:   demo (about 3 minutes on 2 CPU cores, `make demo`) | test (seconds: for the test suite)
  reversed: add time-reversed hard negatives for the mirrored verb pairs (loss.reversed_negatives:
          a clip of "move left" played backwards is a negative for its own sentence), each
          weighted like all of its anchor's other negatives together (batch - 1)
The model is trained from scratch (no CLIP weights exist offline), small enough for a CPU.
SynthKitchens has 9 verbs and 20 nouns, so EK-100's positive rule (any sentence with
rel > 0.1) would pair a clip with a quarter of all sentences, far too weak a signal to learn
from scratch in minutes: the demo samples positives with the clip's own (verb, nouns) key
(data.positive_threshold 0.99). One acted-on object per clip, no distractor objects.

The demo size (issue 22: `make demo` in at most half the time it took at f39fde4, avg mAP at
least as high; BENCHMARKS.md "Dec 7" has the profile): the same SynthKitchens as before (64 train
and 8 test videos: the test split is unchanged), 4 frames a clip instead of 8 (the ViT over the
frames is almost all of a step), text rows of 8 tokens instead of CLIP's 77 (the longest
narration is 6 with its start and end tokens; the 77 ran the text tower on padding), lr 1e-3
instead of 2e-3 over 500 steps instead of 400, one evaluation at the end instead of two.
"""

import ml_collections

from tempret_jax import config as config_lib
from tempret_jax.data import synthetic
from tempret_jax.models import retrieval

MODELS = ("tempret", "mean", "joint", "rope", "egovlp")
LOSSES = ("sms", "mi_mm", "adaptive_mi_mm", "info_nce")
SIZES = ("demo", "test")
NEGATIVES = ("plain", "reversed")


def parse_arg(arg):
    """'joint,mi_mm' -> {'model': 'joint', 'loss': 'mi_mm', 'size': 'demo', 'negatives': 'plain'}."""
    choice = {"model": "tempret", "loss": "info_nce", "size": "demo", "negatives": "plain"}
    categories = (("model", MODELS), ("loss", LOSSES), ("size", SIZES), ("negatives", NEGATIVES))
    for token in filter(None, (arg or "").split(",")):
        for key, allowed in categories:
            if token in allowed:
                choice[key] = token
                break
        else:
            raise ValueError(f"configs/synthetic.py: unknown variant {token!r}; expected tokens "
                             f"from {MODELS + LOSSES + SIZES + NEGATIVES}")
    return choice


def mirrored_verb_ids():
    """SynthKitchens' time-mirrored verb pairs as class ids: ((0, 1), (2, 3), ...)."""
    ids = {v.key: i for i, v in enumerate(synthetic.VERBS)}
    return tuple((ids[a], ids[b]) for a, b in synthetic.MIRRORED_VERBS)


def get_config(arg=None):
    choice = parse_arg(arg)
    demo = choice["size"] == "demo"
    c = config_lib.default_config()
    c.name = "synthetic_" + "_".join(choice[k] for k in ("model", "loss", "size"))
    if choice["negatives"] == "reversed":
        c.name += "_reversed"
    c.seed = 0

    # SynthKitchens (tempret_jax.data.synthetic.SynthConfig) and its preparation.
    c.synthetic = ml_collections.ConfigDict(dict(
        seed=0, num_train_videos=64 if demo else 2, num_test_videos=8 if demo else 1,
        num_participants=4 if demo else 2, clips_per_video=16 if demo else 4, width=128,
        height=96, fps=15 if demo else 10, clip_seconds=(1.0, 2.0), gap_seconds=(0.2, 0.5),
        gop=15, max_nouns=1, num_distractors=0, num_clutter=4, stamp_frame_index=False))
    c.prepare = ml_collections.ConfigDict(dict(num_frames=16 if demo else 4, short_side=40))

    # Model: a CLIP-shaped dual encoder, small enough for CPUs.
    m = retrieval.model_config("egovlp_tiny" if choice["model"] == "egovlp" else "tiny")
    m.embed_dim = 128 if demo else 16
    width, depth = (128, 4) if demo else (32, 1)
    m.vision.update(image_size=32, patch_size=8, width=width, layers=depth, heads=4, num_frames=4)
    # SynthKitchens' narrations are 4 CLIP tokens at most ("push red circle left"), 6 with the
    # start and end tokens: 8 positions hold them (77 would run the text tower on padding).
    m.text.update(width=width, layers=depth, heads=4,
                  **(dict(context_length=8, max_positions=8) if demo else {}))
    if choice["model"] in ("tempret", "mean"):
        m.vision.frame_mode = True
        m.temporal.enabled = choice["model"] == "tempret"
        m.temporal.update(layers=2 if demo else 1, heads=4)
    elif choice["model"] == "rope":
        m.vision.pos_embed = "rope"
    elif choice["model"] == "egovlp":
        m.text.update(vocab_file=str(synthetic.vocab_path()), context_length=32,
                      max_positions=32, vocab_size=len(synthetic.wordpiece_vocab()))
    c.model = m

    c.loss.name = choice["loss"]
    c.global_batch_size = 64 if demo else 8
    if choice["negatives"] == "reversed":
        c.loss.reversed_negatives = mirrored_verb_ids()
        c.loss.reversed_weight = float(c.global_batch_size - 1)
    c.total_steps = 500 if demo else 4
    c.data.update(num_frames=m.vision.num_frames, resolution=m.vision.image_size,
                  crop_scale=(0.7, 1.0), positive_threshold=0.99)
    # Trained from scratch: a larger lr than fine-tuning CLIP (AVION uses 3e-5 from CLIP).
    c.optim.update(lr=1e-3 if demo else 2e-3, start_lr=1e-5, end_lr=1e-5,
                   warmup_steps=40 if demo else 1, weight_decay=0.05, clip_grad_norm=1.0)
    c.eval.update(every_steps=0, batch_size=64 if demo else 8)  # at the end
    c.checkpoint.update(every_steps=250 if demo else 2, keep=2)
    c.log_every = 10 if demo else 1
    return c


def results_setup(c):
    """The demo's model and schedule before issue 22 made it faster (8 frames, CLIP's 77-token
    rows for a CLIP text tower, lr 2e-3), in place: what RESULTS.md and docs/results.md were
    measured with (tools/ablate_synthetic.py, tools/study_components.py). Demo size only."""
    if "_demo" in c.name:
        c.model.vision.num_frames = c.data.num_frames = 8
        if c.model.text.tower == "clip":
            c.model.text.update(context_length=77, max_positions=77)
        c.optim.lr = 2e-3
    return c

