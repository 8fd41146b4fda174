"""Converts published PyTorch weights (CLIP, AVION, EVA02-CLIP) into a checkpoint of this project.

    python tools/convert_checkpoint.py SOURCE OUT [--format auto|hf|openai|avion|eva_clip]
        [--vision_heads H] [--text_heads H] [--num_frames T] [--hidden_act quick_gelu|gelu]
    python tools/convert_checkpoint.py --egovlp_init VIT DISTILBERT OUT [--num_frames T]

SOURCE: an HF CLIPModel folder (config.json + model.safetensors / pytorch_model.bin), or a
.safetensors / .bin / .pt / .pth file (OpenAI / open_clip state dict, AVION training
checkpoint as its scripts save it, EVA02-CLIP state dict). The architecture is read from the
file; flags are for what it cannot say (open_clip LAION weights: --hidden_act gelu). OUT: a
new folder holding the weights and their model config (printed at the end); train from it
with `--config.init_from.path=OUT`, evaluate it zero-shot with
`python -m tempret_jax.main --mode eval --checkpoint OUT --workdir DIR --config.dataset_dir=D`.
--egovlp_init writes instead the Frozen-in-Time EgoVLP's pretraining starts from (configs/
egoclip_egovlp.py): VIT a timm ImageNet ViT-B/16 state dict ('vit_base_patch16_224'; EgoVLP
loads jx_vit_base_p16_224-80ecf9dd.pth), DISTILBERT HF distilbert-base-uncased (its folder, or
its model.safetensors / pytorch_model.bin); the temporal attention starts as EgoVLP's
time_init 'zeros', the two projections are random as in EgoVLP (seeded; models/egovlp_init.py).
See `tempret_jax.convert` for the formats. Errors are one line, exit 1.
"""

import argparse
import sys

from tempret_jax import convert


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="omitted with --egovlp_init")
    parser.add_argument("out")
    parser.add_argument("--egovlp_init", nargs=2, metavar=("VIT", "DISTILBERT"), default=None,
                        help="build EgoVLP's pretraining start from these two instead")
    parser.add_argument("--format", default="auto", choices=("auto",) + convert.FORMATS)
    parser.add_argument("--vision_heads", type=int, default=None,
                        help="default: config.json (HF), else width // 64")
    parser.add_argument("--text_heads", type=int, default=None)
    parser.add_argument("--num_frames", type=int, default=16,
                        help="frames of the video tower when the source has no temporal embedding "
                             "(--egovlp_init: configs/pt/egoclip.json's 16)")
    parser.add_argument("--hidden_act", default=None, choices=("quick_gelu", "gelu"),
                        help="default: the family's (CLIP quick_gelu; AVION, EVA02 text: gelu); "
                             "open_clip LAION weights need gelu")
    args = parser.parse_args(argv)
    if (args.source is None) != (args.egovlp_init is not None):
        parser.error("give SOURCE OUT, or --egovlp_init VIT DISTILBERT OUT")
    if args.egovlp_init and (args.format != "auto" or args.hidden_act):
        parser.error("--egovlp_init reads a timm ViT and an HF DistilBERT: no --format or "
                     "--hidden_act")

    try:
        if args.egovlp_init:
            params, config = convert.convert_egovlp_init(
                *args.egovlp_init, vision_heads=args.vision_heads, text_heads=args.text_heads,
                num_frames=args.num_frames)
        else:
            params, config = convert.convert_checkpoint(
                args.source, fmt=args.format, vision_heads=args.vision_heads,
                text_heads=args.text_heads, num_frames=args.num_frames,
                hidden_act=args.hidden_act)
        convert.save_converted(args.out, params, config)
    except convert.ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}; model config ({convert.CONFIG_FILE}):")
    print(config.to_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
