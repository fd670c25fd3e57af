"""Supervised start model: the project's stand-in for "an instruction-tuned model", on a CPU.

The paper starts RL from Qwen2.5-VL-7B-Instruct, a model that already answers in the requested
format and roughly knows where things happen. RL from a randomly initialised network learns
nothing in minutes, so the demo (and anyone trying the method on a laptop) starts from a small
Qwen2.5-VL (the real architecture, tempsamp.models.tiny) trained here by plain supervised
likelihood on ground-truth answers written exactly as the policy is asked to answer
(tempsamp.prompts.build_offpolicy_completion), with the video in every forward pass.

One loop, the same adapter calls the RL trainer uses (build_prompt, group_batch,
completion_logprobs): loss = - mean log-prob of the answer tokens.

Decisions (docs/decisions.md, "Demo"):
- Both prompt modes are trained (``cot_fraction`` of the examples in CoT format, with the GT's fixed
  think sentence), so the hybrid-CoT stage 2 starts from a model that can write the CoT format,
  as an instruction-tuned model can.
- The vision tower is trained too: it starts random, unlike a pretrained one.
- Deliberately short (``steps``): the start model should be partly right, leaving RL room to improve,
  like the 7B instruct model at the paper's start. Its held-out scores are reported next to the RL results.
- The folder is keyed by a digest of the configuration and of the training file, so a changed
  setting rebuilds it and an unchanged one is reused (the demo's second run skips this step).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tempsamp.models.qwen_vl import POSITION_RULE
from tempsamp.models.tiny import TinySpec
from tempsamp.video.settings import VideoSettings

# The demo's start architecture: real Qwen2.5-VL classes, wider and deeper than the test fixture
# (the fixture only has to run), with the truncated BPE vocabulary so the output layer is cheap on
# a CPU (digits are single tokens in both vocabularies: Qwen2 splits numbers digit by digit).
START_SPEC = TinySpec(
    vocab="small", hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, mrope_section=(4, 6, 6), vision_depth=2, vision_hidden_size=64,
)



@dataclass
class SFTConfig(VideoSettings):
    """The supervised start model's settings; the video ones are tempsamp.video.settings.VideoSettings's
    (the same sampling the RL and evaluation stages use), with the start model's small frames."""

    spec: TinySpec = field(default_factory=lambda: START_SPEC)
    steps: int = 500
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    cot_fraction: float = 0.25
    seed: int = 0
    # the start model's frames: 56 x 56 pixels, 128 frames' worth of pixels per clip
    min_pixels: int = 56 * 56
    max_pixels: int = 56 * 56
    total_pixels: int = 56 * 56 * 128

    def digest(self, annotations: Path) -> str:
        # Video keys the start model's config gained later count only when set: at their default they
        # leave the digest as it was, so an existing start model (assets/demo-start-model) stays valid.
        later = {"frame_sampling", "resize", "input_preset"}
        defaults = {f.name: f.default for f in fields(self)}
        payload = {k: v for k, v in asdict(self).items()
                   if k != "frame_cache" and not (k in later and v == defaults[k])}
        payload["spec"] = self.spec.digest()
        payload["data"] = hashlib.sha256(annotations.read_bytes()).hexdigest()
        # The rotary-position rule the model was trained under (a start model built under another
        # rule answers from other positions: tempsamp/models/qwen_vl/positions.py).
        payload["positions"] = POSITION_RULE
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _log(msg: str) -> None:
    print(f"[sft {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_sft(model, processor, examples, config: SFTConfig, log_every: int = 50) -> list[float]:
    """Supervised likelihood on the GT answers; returns the loss per step. Trains ``model`` in place."""
    import torch

    from tempsamp.models import qwen_vl
    from tempsamp.prompts import ANSWER, COT, build_offpolicy_completion

    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    config.validate_video()
    preset = config.preset  # the prompt as the RL stage will show it
    pad_id = qwen_vl.pad_token_id(processor)

    # Every (example, mode) prompt is built once: frames are decoded once, tokenised once.
    items = []
    for ex in examples:
        video = config.load(ex.video_path)
        mode = COT if rng.random() < config.cot_fraction else ANSWER
        prompt = qwen_vl.build_prompt(processor, preset.prompt(ex.query, mode, duration=ex.duration, task=ex.task),
                                      video.frames, video.fps, system_prompt=preset.system_prompt,
                                      video_first=preset.video_first)
        target = qwen_vl.completion_ids(processor, build_offpolicy_completion(ex.span, mode, decimals=preset.decimals))
        items.append(qwen_vl.group_batch(prompt, [target], pad_id))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    model.train()
    losses = []
    for step in range(config.steps):
        lr = config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        batch = [items[rng.randrange(len(items))] for _ in range(config.batch_size)]
        tokens = sum(float(b["completion_mask"].sum()) for b in batch)
        total = 0.0
        for b in batch:
            loss = -qwen_vl.completion_logprobs(model, b).sum() / tokens
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(total)
        if log_every and (step + 1) % log_every == 0:
            _log(f"step {step + 1}/{config.steps}: loss per token {sum(losses[-log_every:]) / log_every:.3f}")
    model.eval()
    return losses


def ensure_start_model(out_dir: str | Path, train_annotations: str | Path, config: SFTConfig | None = None,
                       prebuilt: str | Path | None = None) -> Path:
    """A folder holding the supervised start model for this data and configuration (built if needed).

    prebuilt: a folder to use instead when it holds a model built for the same digest (the demo's
    committed start model); otherwise the model is built in ``out_dir``.

    The build goes to a temporary sibling folder renamed into place; a complete folder carries
    ``tempsamp_sft.json`` with the digest it was built for. A folder built for another digest is
    replaced (it is this function's own cache, not a user's model).
    """
    import torch

    from tempsamp.data.readers import load_examples
    from tempsamp.models.tiny import make_tiny_model

    config = config or SFTConfig()
    out, annotations = Path(out_dir), Path(train_annotations)
    digest = config.digest(annotations)
    for folder in ([Path(prebuilt)] if prebuilt else []) + [out]:
        marker = folder / "tempsamp_sft.json"
        if marker.is_file() and json.loads(marker.read_text()).get("digest") == digest:
            return folder

    examples = load_examples(annotations, "jsonl")
    _log(f"training the start model on {len(examples)} examples for {config.steps} steps")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    model, processor = make_tiny_model(config.spec)
    losses = train_sft(model, processor, examples, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    (staging / "tempsamp_sft.json").write_text(json.dumps({
        "digest": digest, "examples": len(examples), "seconds": round(time.perf_counter() - t0, 1),
        "threads": threads, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "config": {k: v for k, v in asdict(config).items() if k != "spec"}, "spec": asdict(config.spec),
    }, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _log(f"start model ready in {time.perf_counter() - t0:.0f} s: {out}")
    return out
