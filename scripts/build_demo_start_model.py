"""Rebuild the demo's committed start model (assets/demo-start-model) from scratch.

    python scripts/build_demo_start_model.py

Writes the synthetic benchmark the demo uses (tempsamp.demo.SYNTH_KNOBS, seed 0) into .cache/demo/synth,
then trains the supervised start model with the demo's SFTConfig into assets/demo-start-model
(a few minutes on 2 CPU cores). `tempsamp demo` uses that folder whenever its recorded digest matches.
"""

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tempsamp.data.synth import synthesize  # noqa: E402
from tempsamp.demo import FULL, FRAME_PIXELS, PREBUILT_START_MODEL, SYNTH_KNOBS  # noqa: E402
from tempsamp.train.sft import SFTConfig, ensure_start_model  # noqa: E402


def main() -> None:
    data = Path(synthesize(REPO / ".cache" / "demo" / "synth", n=FULL.n_videos, seed=0, **SYNTH_KNOBS))
    config = SFTConfig(steps=FULL.sft_steps, min_pixels=FRAME_PIXELS, max_pixels=FRAME_PIXELS,
                       total_pixels=FRAME_PIXELS * 128, frame_cache=str(REPO / ".cache" / "demo" / "frames"))
    if PREBUILT_START_MODEL.exists():
        shutil.rmtree(PREBUILT_START_MODEL)
    print(ensure_start_model(PREBUILT_START_MODEL, data / "train.jsonl", config))


if __name__ == "__main__":
    main()
