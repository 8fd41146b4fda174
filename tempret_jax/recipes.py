"""EK-100 MIR fine-tuning recipe shared by configs/ek100_*.py (one place for the common values).

Values are AVION's EK-100 MIR fine-tuning script (`main_lavila_finetune_mir.py` defaults, the
recipe EVA02-AT's SMS code and TempRet build on): 16 frames, 224 px random resized crop with
scale (0.5, 1.0), CLIP normalisation, AdamW (0.9, 0.999), eps 1e-8, weight decay 0.01 (none
on biases, norms, position embeddings, logit scale), lr 3e-5 after a linear warmup from 1e-6
over 1 epoch, cosine to 1e-5 over 100 epochs, mixed precision, logit scale frozen, 16 clips per
GPU on 8 GPUs (global batch 128).
"""

import ml_collections

from tempret_jax import config as config_lib
from tempret_jax import state
from tempret_jax.models import retrieval

TRAIN_CLIPS = 67_217  # EPIC_100_retrieval_train.csv
EPOCHS = 100
GLOBAL_BATCH = 128
STEPS_PER_EPOCH = TRAIN_CLIPS // GLOBAL_BATCH  # drop_remainder


# EVA02-AT's SMS loss as its authors trained it (docs/design.md, Losses): gamma 0.6, tau 0.1, eps 1.1/240.
SMS_HPARAMS = {"margin": 0.6, "tau": 0.1, "eps": 1.1 / 240}


def use_sms(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Switches a config's retrieval loss to SMS with EVA02-AT's hyper-parameters."""
    c.loss.name = "sms"
    c.loss.hparams = dict(SMS_HPARAMS)
    return c


def ek100_finetune(preset: str, name: str) -> ml_collections.ConfigDict:
    """The common EK-100 MIR config on a backbone preset (`retrieval.PRESETS`: the papers start
    from AVION's 'avion_b16' / 'avion_l14' or EVA02's 'eva02_b16' / 'eva02_l14').

    The prepared data set and the converted checkpoint come from the command line:
    --config.dataset_dir=<tools/prepare_ek100.py output> --config.init_from.path=<tools/convert_checkpoint.py output>.
    The checkpoint's architecture must be the preset's (`convert.check_fits`), or be adopted
    with --config.init_from.architecture=checkpoint.
    """
    c = config_lib.default_config()
    c.name = name
    c.dataset_dir = ""
    c.model = retrieval.model_config(preset)
    c.model.dtype = "bfloat16"  # params stay float32 (AVION: torch.cuda.amp)
    c.model.scan_layers = True
    c.model.remat = preset.endswith("l14")  # ViT-L with 16 frames needs activation checkpointing
    c.model.vision.num_frames = 16
    c.data.update(num_frames=16, resolution=224, crop_scale=(0.5, 1.0), num_workers=8,
                  dtype="bfloat16")
    c.global_batch_size = GLOBAL_BATCH
    c.total_steps = EPOCHS * STEPS_PER_EPOCH
    c.optim.update(lr=3e-5, start_lr=1e-6, end_lr=1e-5, warmup_steps=STEPS_PER_EPOCH,
                   b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, freeze=r"^logit_scale$")
    c.loss.name = "mi_mm"
    c.eval.update(every_steps=5 * STEPS_PER_EPOCH, batch_size=128, tta=False, num_workers=8)
    c.checkpoint.update(every_steps=STEPS_PER_EPOCH, keep=2, keep_best=1)
    c.init_from.path = ""  # a converted AVION / EVA02 / CLIP checkpoint of the preset's design
    c.log_every = 50
    return c


def eva02at(preset: str, name: str) -> ml_collections.ConfigDict:
    """EVA02-AT (2025): an EVA02 preset ('eva02_b16' | 'eva02_l14') as a video tower, SMS.

    EVA02-AT keeps EVA02-CLIP's design and adds the learned temporal embedding and the temporal
    RoPE ('learned+rope', the paper's best in its Table IV) to joint space-time attention; its
    feature space is 256-d (the paper's implementation details; the authors' factory
    eva02_base_patch16_clip_224 sets output_dim 256). Fine-tuning follows AVION's recipe, as
    the paper builds on AVION: peak lr 2e-5 after a 1-epoch warmup from 1e-6, 100 epochs.
    """
    c = ek100_finetune(preset, name)
    c.model.embed_dim = 256
    c.optim.update(lr=2e-5, start_lr=1e-6)
    return use_sms(c)


def ek100_sms(preset: str, name: str) -> ml_collections.ConfigDict:
    """The SMS-loss ablation: AVION's model and recipe (`ek100_finetune`) with `use_sms`."""
    return use_sms(ek100_finetune(preset, name))


def tempret(preset: str, name: str, arg) -> ml_collections.ConfigDict:
    """TempRet (2026): per-frame CLIP features -> temporal transformer, SMS; stage 2 cross-encoder.

    arg: None | 'stage1' -> the dual encoder; 'stage2' -> the ITM cross-encoder (text tokens
    cross-attend to per-frame features) trained on in-batch hard negatives from a stage-1 run
    given as --config.init_from.path=<stage-1 workdir>/checkpoints, the dual encoder frozen.
    Inference reranks the dual encoder's top-K with score = s_dual + alpha * s_itm.
    """
    stage = {None: 1, "": 1, "stage1": 1, "stage2": 2}.get(arg)
    if stage is None:
        raise ValueError(f"{name}: arg {arg!r}: expected 'stage1' or 'stage2'")
    c = ek100_finetune(preset, f"{name}_stage{stage}")
    c.model.vision.frame_mode = True  # CLIP image encoder on each frame
    c.model.temporal.update(enabled=True, layers=4, heads=8, pool="mean")
    use_sms(c)
    if stage == 2:
        c.stage = 2
        c.model.cross_encoder.update(enabled=True, layers=4, video_tokens="frame")
        c.itm.update(freeze_dual_encoder=True, dual_loss_weight=0.0, temperature=0.07)
        c.total_steps = 10 * STEPS_PER_EPOCH
        c.optim.update(lr=1e-4, start_lr=1e-6, end_lr=1e-6, freeze="")  # fresh head: larger lr
        c.init_from.include = state.DUAL_ENCODER  # everything but the new cross-encoder
    return c
