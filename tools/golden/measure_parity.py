"""Prints the largest difference between our embeddings and the authors' for every golden file.

    python tools/golden/measure_parity.py

Each file of tests/data/golden/ (made with the authors' own code: make_*_golden.py) is
converted as tools/convert_checkpoint.py converts it and embedded with tempret_jax.pretrained;
the table gives max |ours - theirs| and the largest |theirs| (the scale). The tests assert the
same comparisons at 2e-5 (tests/test_golden_*.py).
"""

import pathlib
import sys
import tempfile

import numpy as np
import torch

from tempret_jax import convert, pretrained

GOLDEN = pathlib.Path(__file__).parents[2] / "tests" / "data" / "golden"
HEADS = dict(vision_heads=2, text_heads=2)  # the tiny models' heads (no file records them)


def _converted(path, root: pathlib.Path, **kwargs) -> pathlib.Path:
    out = root / path.stem
    params, config = convert.convert_checkpoint(path, **HEADS, **kwargs)
    convert.save_converted(out, params, config)
    return out


def _eva02at_with_text(root: pathlib.Path) -> pathlib.Path:
    """EVA02-AT's video tower with EVA-CLIP's tiny text tower (tests/test_golden_eva02at.py)."""
    ckpt = torch.load(GOLDEN / "eva02at" / "eva02at_tiny.pt", weights_only=True)
    text = torch.load(GOLDEN / "eva02_clip" / "eva02_clip_tiny.pt", weights_only=True)
    ckpt["state_dict"].update({f"module.textual.{k}": v for k, v in text.items()
                               if not k.startswith("visual.")})
    torch.save(ckpt, root / "eva02at_tiny.pt")
    return root / "eva02at_tiny.pt"


def rows(root: pathlib.Path):
    """(family, file, output, max |difference|, max |reference|) per comparison."""
    avion = np.load(GOLDEN / "avion" / "reference.npz")
    for stem, video, stage in (("avion_pretrain_tiny", "video4", "pretrain"),
                               ("avion_finetune_tiny", "video16", "finetune"),
                               ("avion_finetune_flash_tiny", "video16", "finetune")):
        m = pretrained.load(_converted(GOLDEN / "avion" / f"{stem}.pt", root))
        yield "AVION", stem, "video", m.encode_video(avion[video]), avion[f"{stage}_video"]
        yield "AVION", stem, "text", m.encode_text(avion["ids"]), avion[f"{stage}_text"]
    m = pretrained.load(root / "avion_pretrain_tiny", num_frames=16)
    yield ("AVION", "avion_pretrain_tiny", "video, 4 -> 16 frames", m.encode_video(avion["video16"]),
           avion["inflated_video"])
    eva = np.load(GOLDEN / "eva02_clip" / "reference.npz")
    for stem in ("eva02_clip_tiny", "eva02_clip_tiny_custom_fp16", "eva02_clip_train_tiny"):
        m = pretrained.load(_converted(GOLDEN / "eva02_clip" / f"{stem}.pt", root, num_frames=1))
        yield "EVA02-CLIP", stem, "image", m.encode_video(eva["image"][:, None]), eva["image_embedding"]
        yield "EVA02-CLIP", stem, "text", m.encode_text(eva["ids"]), eva["text_embedding"]
    at = np.load(GOLDEN / "eva02at" / "reference.npz")
    m = pretrained.load(_converted(_eva02at_with_text(root), root / "converted"))
    yield "EVA02-AT", "eva02at_tiny", "video", m.encode_video(at["video"]), at["video_embedding"]
    ego = np.load(GOLDEN / "egovlp" / "reference.npz")
    path = GOLDEN / "egovlp" / "egovlp_tiny.pth"
    out = root / "egovlp_tiny"
    convert.save_converted(out, *convert.convert_checkpoint(path, vision_heads=4, text_heads=4))
    m = pretrained.load(out)
    frames = ego["video"].transpose(0, 1, 3, 4, 2)  # EgoVLP's (B, F, C, H, W)
    yield "EgoVLP", "egovlp_tiny", "video", m.encode_video(frames), ego["video_embeddings"]
    yield ("EgoVLP", "egovlp_tiny", "text (ids + mask)",
           m.encode_text(ego["text_ids"], ego["text_mask"].astype(bool)), ego["text_embeddings"])
    m = pretrained.load(out, num_frames=8)
    yield ("EgoVLP", "egovlp_tiny", "video, 4 -> 8 (zeros)",
           m.encode_video(ego["video8"].transpose(0, 1, 3, 4, 2)), ego["video8_zeros_embeddings"])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "converted").mkdir()
        print(f"{'family':<11} {'file':<28} {'output':<22} {'max |diff|':>10} {'max |ref|':>9}")
        for family, stem, output, ours, theirs in rows(root):
            diff = float(np.abs(np.asarray(ours) - theirs).max())
            print(f"{family:<11} {stem:<28} {output:<22} {diff:10.2e} {np.abs(theirs).max():9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
