"""One RL step on the tiny Qwen2.5-VL, measured side by side in one run.

    python benchmarks/bench_train_step.py [--group 8] [--new-tokens 24] [--steps 4] [--vocab small|real]
                                          [--width 64]

(1) TempSamp vs plain GRPO at the same G, on a video prompt (8 s at 2 FPS, 56x56 frames): a
    TempSamp step samples G-1 completions and appends the ground truth, so its generation should
    cost about (G-1)/G of GRPO's; the scoring forward/backward sees G rows in both. At width 64 a
    decoding step is dominated by per-step overhead, not per-row compute; ``--width 512`` (a wider
    tiny model, same architecture) shows the saving where rows cost compute.
(2) This trainer vs TRL's GRPOTrainer (trl 1.16, `pip install 'tempsamp[bench]'`) on identical
    image-prompt work: the same tiny model, one image prompt per step, G completions of at most
    `new-tokens` tokens (a random model rarely stops early, so both generate the maximum), IoU
    reward, beta = 0.04 (a reference forward), one AdamW step. TRL is compared on an image
    because with a video its loss forward silently drops the video (docs/decisions.md).
    Without trl installed this part prints a note and is skipped.
(3) Peak memory (ru_maxrss) of each trainer's process: each runs in its own subprocess, ours first
    on the image work (the peak is read before the video runs), then on the video.

Step time is the minimum over `steps` steps after one warm-up step (the least disturbed by other
processes), GRPO and TempSamp steps interleaved, with one intra-op thread in every process (the
tiny model's small ops run faster that way on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

QUERY = "when is the red square visible?"
SPAN = (2.0, 5.0)


def tiny_spec(args):
    """The tiny Qwen2.5-VL at the asked width (4 heads; rotary sections scaled to the head size)."""
    from tempsamp.models.tiny import TinySpec

    if args.width == 64:
        return TinySpec(vocab=args.vocab)
    half_head = args.width // 4 // 2  # mrope_section must sum to head_dim / 2
    temporal = half_head // 4
    height = (half_head - temporal) // 2
    return TinySpec(vocab=args.vocab, hidden_size=args.width, intermediate_size=2 * args.width,
                    mrope_section=(temporal, height, half_head - temporal - height))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def image_and_frames():
    import numpy as np

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 56, 56, 3), dtype=np.uint8)  # 8 s at 2 FPS
    image = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    return image, frames


def iou_of(text: str) -> float:
    import numpy as np

    from tempsamp.rewards import iou_reward
    from tempsamp.spans import parse_span, spans_to_array

    return float(iou_reward(spans_to_array([parse_span(text)]), np.array([SPAN]))[0])


# ---------------------------------------------------------------------------------------------- ours


def worker_ours(args) -> dict:
    import torch

    from tempsamp.data.example import Example
    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import ensure_tiny_model
    from tempsamp.prompts import prompt_text
    from tempsamp.train import loop
    from tempsamp.train.config import load_config
    from tempsamp.train.parallel import Parallel
    from tempsamp.train.rollout_engine import TransformersEngine

    torch.set_num_threads(1)
    model_dir = ensure_tiny_model(spec=tiny_spec(args))
    image, frames = image_and_frames()
    example = Example(qid="q", video_id="v", video_path=None, duration=8.0, query=QUERY, spans=(SPAN,))

    class Frames:  # what tempsamp.video.cache.sample_frames returns, already in memory
        def __init__(self):
            self.frames, self.fps = frames, 2.0

    def runner(strategy: str, media: str):
        """A generator: each next() runs one full step and yields its timings."""
        cfg = load_config("tiny_cpu", [f"strategy={strategy}", f"num_generations={args.group}", f"max_new_tokens={args.new_tokens}",
                                       "beta=0.04", "learning_rate=1e-6", "temperature=1.0"])
        model, processor = qwen_vl.load_policy(str(model_dir))
        qwen_vl.freeze_vision_tower(model)
        ref_model = __import__("copy").deepcopy(model).eval().requires_grad_(False)
        parallel = Parallel("ddp")  # one process: the plain model
        parallel.prepare(model, lambda params: torch.optim.AdamW(params, lr=cfg.learning_rate), max_grad_norm=cfg.max_grad_norm)
        engine = TransformersEngine(model, processor, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0)
        pad_id = qwen_vl.pad_token_id(processor)
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            model.eval()
            with torch.no_grad():
                if media == "video":
                    group = loop.rollout(cfg, engine, processor, "cpu", example, "answer", step, lambda _: Frames())
                else:  # the image work TRL is given: G sampled completions, no off-policy row
                    text = prompt_text(QUERY, "answer", duration=8.0)
                    prompt = qwen_vl.build_image_prompt(processor, text, image)
                    ids, texts, _ = engine.sample(prompt, None, None, text, num_samples=cfg.num_generations, seed=step)
                    group = loop.Group(example, prompt, ids, texts, [False] * len(ids), sum(map(len, ids)))
            t_generate = time.perf_counter() - t0
            task, fmt, off, _ = loop.score(cfg, [group], False, loop.Counters())
            adv = loop.advantages(cfg, task, fmt, off)
            model.train()
            loop.update(cfg, model, ref_model, [group], adv, parallel, pad_id)
            yield {"step_s": time.perf_counter() - t0, "generate_s": t_generate, "generated_tokens": group.generated_tokens}

    def summary(steps: list[dict]) -> dict:
        steps = steps[1:]  # the first step warms up
        # min over steps: the least disturbed by other processes on a shared machine
        return {"step_s": min(x["step_s"] for x in steps), "generate_s": min(x["generate_s"] for x in steps),
                "generated_tokens": statistics.median(x["generated_tokens"] for x in steps)}

    image_run = summary(list(runner("grpo", "image")))
    image_run["peak_rss_gb"] = peak_rss_gb()
    # GRPO and TempSamp steps interleaved, so both see the same machine load
    grpo_steps, temp_steps = [], []
    for a, b in zip(runner("grpo", "video"), runner("shaping", "video")):
        grpo_steps.append(a)
        temp_steps.append(b)
    return {"image_grpo": image_run, "video_grpo": summary(grpo_steps), "video_tempsamp": summary(temp_steps)}


# ---------------------------------------------------------------------------------------------- TRL


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tempsamp.models.tiny import ensure_tiny_model
    from tempsamp.prompts import prompt_text

    torch.set_num_threads(1)
    model_dir = str(ensure_tiny_model(spec=tiny_spec(args)))
    image, _ = image_and_frames()
    text = prompt_text(QUERY, "answer", duration=8.0)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
             "image": Image.fromarray(image)}] * (args.steps + 1)

    def iou_reward(completions, **kwargs):
        return [iou_of(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.lengths, self.t0 = [], [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args_, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    timer = StepTimer()
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    for p in model.model.visual.parameters():  # frozen vision tower, as in ours
        p.requires_grad_(False)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.group, num_generations=args.group,
            max_completion_length=args.new_tokens, max_steps=args.steps + 1, learning_rate=1e-6, beta=0.04,
            temperature=1.0, top_p=1.0, num_iterations=1, gradient_accumulation_steps=1, logging_steps=1,
            report_to="none", save_strategy="no", use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0,
            gradient_checkpointing=False,  # TRL turns it on by default; ours is off here
        )
        trainer = GRPOTrainer(model=model, reward_funcs=iou_reward, args=config, train_dataset=Dataset.from_list(rows),
                              processing_class=processor, callbacks=[timer])
        trainer.train()
    return {"image_grpo": {"step_s": min(timer.times[1:]), "peak_rss_gb": peak_rss_gb(),
                           "mean_length": statistics.mean(timer.lengths[1:])}}


# ---------------------------------------------------------------------------------------------- main


def run_worker(name: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--group", str(args.group), "--new-tokens", str(args.new_tokens),
               "--steps", str(args.steps), "--vocab", args.vocab, "--width", str(args.width)]
    done = subprocess.run(command, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up step)")
    parser.add_argument("--vocab", choices=["small", "real"], default="small")
    parser.add_argument("--width", type=int, default=64, help="text hidden size of the tiny model (a multiple of 32)")
    parser.add_argument("--worker", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((worker_ours if args.worker == "ours" else worker_trl)(args)))
        return 0

    g = args.group
    print(f"tiny Qwen2.5-VL (width {args.width}, {args.vocab} vocabulary), CPU, 1 thread per process; G = {g}, {args.new_tokens} new tokens, "
          f"fastest of {args.steps} steps after a warm-up")
    ours = run_worker("ours", args)
    grpo, temp = ours["video_grpo"], ours["video_tempsamp"]
    print("\n(1) video prompt (8 s, 2 FPS, 56x56): TempSamp vs GRPO at the same G")
    print(f"{'':24}{'sampled rows':>14}{'new tokens':>12}{'generate s':>12}{'step s':>10}")
    print(f"{'GRPO':24}{g:>14}{grpo['generated_tokens']:>12.0f}{grpo['generate_s']:>12.3f}{grpo['step_s']:>10.3f}")
    print(f"{'TempSamp (G-1 + GT)':24}{g - 1:>14}{temp['generated_tokens']:>12.0f}{temp['generate_s']:>12.3f}{temp['step_s']:>10.3f}")
    print(f"TempSamp/GRPO: generated tokens {temp['generated_tokens'] / grpo['generated_tokens']:.3f} "
          f"(expected (G-1)/G = {(g - 1) / g:.3f}), generation time {temp['generate_s'] / grpo['generate_s']:.3f}, "
          f"whole step {temp['step_s'] / grpo['step_s']:.3f}")
    print("  (on a CPU the tiny model's decoding is latency-bound: a decoding step costs about the same for 7 or 8 "
          "rows, so the time saved is smaller than the tokens saved; the saving grows with the share of per-row compute)")

    print("\n(2)+(3) image prompt, plain GRPO, identical work: this trainer vs TRL GRPOTrainer")
    try:
        import trl
    except ImportError:
        print("trl is not installed (pip install 'tempsamp[bench]'): TRL comparison skipped")
        print(f"this trainer: step {ours['image_grpo']['step_s']:.3f} s, peak RSS {ours['image_grpo']['peak_rss_gb']:.2f} GB")
        return 0
    theirs = run_worker("trl", args)["image_grpo"]
    mine = ours["image_grpo"]
    print(f"{'':24}{'step s':>10}{'peak RSS GB':>14}{'mean completion':>17}")
    print(f"{'tempsamp':24}{mine['step_s']:>10.3f}{mine['peak_rss_gb']:>14.2f}{mine['generated_tokens'] / g:>17.1f}")
    print(f"{'TRL ' + trl.__version__:24}{theirs['step_s']:>10.3f}{theirs['peak_rss_gb']:>14.2f}{theirs['mean_length']:>17.1f}")
    print(f"step time TRL/tempsamp = {theirs['step_s'] / mine['step_s']:.2f}; peak RSS TRL/tempsamp = "
          f"{theirs['peak_rss_gb'] / mine['peak_rss_gb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
