"""Build the tiny random Qwen-VL model offline (see tempsamp/models/tiny.py).

    python scripts/build_tiny_model.py --out DIR [--vocab real|small] [--seed S] [--family qwen2_5_vl]

DIR then loads with Qwen2_5_VLForConditionalGeneration / AutoModelForImageTextToText.from_pretrained
and AutoProcessor.from_pretrained, with no network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from tempsamp.models.tiny import FAMILIES, VOCABS, TinySpec, build_tiny_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (created; existing files overwritten)")
    parser.add_argument(
        "--vocab",
        choices=VOCABS,
        default="real",
        help="real: the full Qwen2.5 vocabulary (default); small: its first 1024 BPE ranks + specials, for speed",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl")
    args = parser.parse_args(argv)
    out = build_tiny_model(args.out, TinySpec(family=args.family, vocab=args.vocab, seed=args.seed))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
