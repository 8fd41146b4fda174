"""Converts PyTorch CLIP / AVION / LaViLa weights into a params-only orbax checkpoint.

    python tools/convert_checkpoint.py SOURCE OUT [--format auto|hf|openai|avion]
        [--vision_heads H] [--text_heads H] [--num_frames T] [--hidden_act quick_gelu|gelu]
        [--scan_layers] [--preset vit_b16]

SOURCE: an HF CLIPModel folder (config.json + model.safetensors / pytorch_model.bin), or a
.safetensors / .bin / .pt / .pth file (OpenAI / open_clip state dict, AVION / LaViLa training
checkpoint). OUT: a new folder; train with `config.init_from.path=OUT` and the model sizes of
OUT/model_config.json (printed at the end). See `tempret_jax.convert` for the formats.
"""

import argparse
import sys

from tempret_jax import convert
from tempret_jax.models import retrieval


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--format", default="auto", choices=("auto",) + convert.FORMATS)
    parser.add_argument("--vision_heads", type=int, default=None,
                        help="default: config.json (HF), else width // 64")
    parser.add_argument("--text_heads", type=int, default=None)
    parser.add_argument("--num_frames", type=int, default=16,
                        help="frames of the video tower when the source has no temporal embedding")
    parser.add_argument("--hidden_act", default=None, choices=("quick_gelu", "gelu"),
                        help="default: quick_gelu (CLIP), gelu for AVION; open_clip LAION "
                             "weights need gelu")
    parser.add_argument("--scan_layers", action="store_true",
                        help="stack layers for nn.scan (model config scan_layers=True)")
    parser.add_argument("--preset", default="vit_b16", choices=retrieval.PRESETS,
                        help="non-size settings of the written model config")
    args = parser.parse_args(argv)

    base = retrieval.model_config(args.preset)
    base.scan_layers = args.scan_layers
    try:
        params, config = convert.convert_checkpoint(
            args.source, fmt=args.format, vision_heads=args.vision_heads,
            text_heads=args.text_heads, num_frames=args.num_frames, hidden_act=args.hidden_act,
            base_config=base)
        convert.save_converted(args.out, params, config)
    except convert.ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}; model config ({convert.CONFIG_FILE}):")
    print(config.to_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
