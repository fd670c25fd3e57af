"""Inference on a benchmark or a single video, in answer-only, CoT, and mixed modes.

Modes:
  answer        the direct answer (stage-1 prompt).
  cot           think, then answer (stage-2 prompt).
  mixed         deployable combination of the two, chosen without the ground truth: the
                prediction whose answer the model finds more likely (mean log-prob per completion
                token, each scored by a forward pass with the video); when only one parses, that one.
  mixed-oracle  the paper's "mixed": per query, whichever of the two has the higher IoU with the
                ground truth. It needs the answer key, so it is an UPPER BOUND, labelled so
                wherever it is printed.
Both underlying modes are generated once per query; ``mixed`` and ``mixed-oracle`` are derived from
them. Generation is greedy by default. Progress is stored in ``generations.jsonl`` one query at a
time, so a rerun skips queries already done (resumable).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tempsamp.data.example import HIGHLIGHTS, Example
from tempsamp.prompts import ANSWER, COT, prompt_text
from tempsamp.rewards import clips_from_windows
from tempsamp.spans import parse_scored_spans, parse_span, temporal_iou

MODES = ("answer", "cot", "mixed", "mixed-oracle")
ORACLE_LABEL = "mixed-oracle (UPPER BOUND: chooses with the ground truth)"


@dataclass
class VideoSettings:
    fps: float = 2.0
    max_frames: int = 256
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 256 * 28 * 28
    total_pixels: int = 3584 * 28 * 28
    cache_dir: str | None = None

    def load(self, path):
        from tempsamp.video.cache import sample_frames

        return sample_frames(path, fps=self.fps, max_frames=self.max_frames, min_pixels=self.min_pixels,
                             max_pixels=self.max_pixels, total_pixels=self.total_pixels, cache_dir=self.cache_dir)


def generate_answer(model, processor, video, query: str, duration: float, mode: str, task: str = "grounding",
                    *, max_new_tokens: int = 256, temperature: float = 0.0) -> dict:
    """One answer for one query: raw text, parsed span(s), and its mean token log-prob (with video)."""
    import torch

    from tempsamp.models import qwen_vl

    text = prompt_text(query, mode, duration=duration, task=task)
    prompt = qwen_vl.build_prompt(processor, text, video.frames, video.fps, device=model.device)
    greedy = temperature <= 0
    out = qwen_vl.generate(model, processor, prompt, num_samples=1, max_new_tokens=max_new_tokens,
                           temperature=1.0 if greedy else temperature, do_sample=not greedy)
    ids, answer = out.ids[0], out.texts[0]
    logprob = float("nan")
    if ids:
        with torch.no_grad():
            batch = qwen_vl.group_batch(prompt, [ids], qwen_vl.pad_token_id(processor))
            logprob = float(qwen_vl.completion_logprobs(model, batch).sum() / len(ids))
    record = {"text": answer, "logprob": logprob, "tokens": len(ids)}
    if task == HIGHLIGHTS:
        record["windows"] = [list(w) for w in parse_scored_spans(answer)]
        record["span"] = record["windows"][0][:2] if record["windows"] else None
    else:
        span = parse_span(answer)
        record["span"] = list(span) if span else None
    return record


def choose_mixed(answer: dict, cot: dict) -> str:
    """Deployable mixed mode: which of the two predictions to trust, without the ground truth."""
    if (answer.get("span") is None) != (cot.get("span") is None):
        return ANSWER if answer.get("span") is not None else COT
    a, c = answer.get("logprob", float("nan")), cot.get("logprob", float("nan"))
    if math.isnan(c) or (not math.isnan(a) and a >= c):
        return ANSWER
    return COT


def choose_oracle(answer: dict, cot: dict, gt_span) -> str:
    def iou(rec):
        return float(temporal_iou(rec["span"], gt_span)) if rec.get("span") else 0.0

    return ANSWER if iou(answer) >= iou(cot) else COT


def prediction_for(record: dict, mode: str, gt_span=None) -> dict | None:
    """The per-mode prediction of one stored generation record (None when the video failed)."""
    if record.get("error"):
        return None
    if mode in (ANSWER, COT):
        return record[mode]
    pick = choose_mixed(record[ANSWER], record[COT]) if mode == "mixed" else choose_oracle(record[ANSWER], record[COT], gt_span)
    return dict(record[pick], chosen=pick)


def grounding_line(example: Example, pred: dict | None) -> dict:
    """A line of the documented grounding prediction format (docs/evaluation.md)."""
    return {"qid": example.qid, "vid": example.video_id, "pred_span": pred["span"] if pred else None,
            "answer": pred["text"] if pred else None}


def qvhighlights_line(example: Example, pred: dict | None) -> dict:
    """A line in the official QVHighlights submission format."""
    n_clips = max(1, math.ceil(example.duration / 2))
    windows = sorted(pred["windows"], key=lambda w: -w[2]) if pred else []
    _, scores = clips_from_windows(windows, n_clips)
    return {"qid": int(example.qid) if str(example.qid).isdigit() else example.qid, "query": example.query,
            "vid": example.video_id, "pred_relevant_windows": [[w[0], w[1], w[2] / 4.0] for w in windows],
            "pred_saliency_scores": scores.tolist()}


def run_generations(model, processor, examples, out_dir: Path, modes_needed, video: VideoSettings,
                    max_new_tokens: int, temperature: float, progress=True) -> list[dict]:
    """Generate every needed mode for every example; resumable through generations.jsonl."""
    from tqdm import tqdm

    from tempsamp.video.cache import VideoDecodeError

    path = out_dir / "generations.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that query is generated again
            done[rec["qid"]] = rec
    todo = [ex for ex in examples if ex.qid not in done]
    with open(path, "a") as sink:
        for ex in tqdm(todo, desc="eval", disable=not progress, initial=len(examples) - len(todo), total=len(examples)):
            rec = {"qid": ex.qid}
            try:
                frames = video.load(ex.video_path)
                for mode in modes_needed:
                    rec[mode] = generate_answer(model, processor, frames, ex.query, ex.duration, mode, ex.task,
                                                max_new_tokens=max_new_tokens, temperature=temperature)
            except (FileNotFoundError, VideoDecodeError) as err:
                rec = {"qid": ex.qid, "error": f"{type(err).__name__}: {err}"}
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
            done[ex.qid] = rec
    return [done[ex.qid] for ex in examples]


def evaluate(model_path: str, examples: list[Example], out_dir: str | Path, modes=("answer",), *,
             video: VideoSettings = VideoSettings(), max_new_tokens: int = 256, temperature: float = 0.0,
             device=None, progress: bool = True) -> dict:
    """Predictions, metrics and a markdown report for every requested mode; returns the metrics."""
    from tempsamp.models import qwen_vl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
    needed = sorted({m for mode in modes for m in ((ANSWER, COT) if mode.startswith("mixed") else (mode,))})
    model, processor = qwen_vl.load_policy(model_path, device=device)
    model.eval()
    t0 = time.perf_counter()
    records = run_generations(model, processor, examples, out_dir, needed, video, max_new_tokens, temperature, progress)
    seconds = time.perf_counter() - t0

    task = examples[0].task if examples else "grounding"
    results = {}
    for mode in modes:
        preds = [prediction_for(r, mode, ex.span if ex.spans else None) for r, ex in zip(records, examples)]
        lines = [(qvhighlights_line if task == HIGHLIGHTS else grounding_line)(ex, p) for ex, p in zip(examples, preds)]
        pred_path = out_dir / f"predictions_{mode}.jsonl"
        pred_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        metrics = score_predictions(task, lines, examples)
        metrics["n_failed_videos"] = sum(1 for r in records if r.get("error"))
        if mode == "mixed-oracle":
            metrics["label"] = ORACLE_LABEL
        if mode.startswith("mixed"):
            chosen = [p["chosen"] for p in preds if p]
            metrics["chose_cot_fraction"] = (chosen.count(COT) / len(chosen)) if chosen else None
        (out_dir / f"metrics_{mode}.json").write_text(json.dumps(metrics, indent=2))
        results[mode] = metrics
    setup = {"model": str(model_path), "n_queries": len(examples), "fps": video.fps, "max_frames": video.max_frames,
             "min_pixels": video.min_pixels, "max_pixels": video.max_pixels, "total_pixels": video.total_pixels,
             "max_new_tokens": max_new_tokens, "decoding": "greedy" if temperature <= 0 else f"sampling T={temperature}",
             "prompt_answer": prompt_text("{query}", ANSWER, duration=0.0, task=task),
             "prompt_cot": prompt_text("{query}", COT, duration=0.0, task=task), "seconds": round(seconds, 1)}
    (out_dir / "report.md").write_text(report_markdown(results, setup, records))
    return results


def score_predictions(task: str, lines: list[dict], examples: list[Example]) -> dict:
    """Metrics with the project's reference implementations (tempsamp.evaluation.grounding / qvhighlights)."""
    if task == HIGHLIGHTS:
        from tempsamp.evaluation.qvhighlights import eval_submission

        gts = [ex.extra.get("raw") or _qvh_gt(ex) for ex in examples]
        return eval_submission(lines, gts)
    from tempsamp.evaluation.grounding import grounding_metrics

    pred = np.array([line["pred_span"] if line["pred_span"] else [np.nan, np.nan] for line in lines], dtype=float).reshape(-1, 2)
    gt = np.array([ex.span for ex in examples], dtype=float).reshape(-1, 2)
    return grounding_metrics(pred, gt)


def _qvh_gt(ex: Example) -> dict:
    return {"qid": int(ex.qid) if str(ex.qid).isdigit() else ex.qid, "query": ex.query, "vid": ex.video_id,
            "duration": ex.duration, "relevant_windows": [list(s) for s in ex.spans],
            "relevant_clip_ids": list(ex.clip_ids), "saliency_scores": [list(s) for s in ex.saliency]}


def report_markdown(results: dict, setup: dict, records: list[dict]) -> str:
    lines = ["# Evaluation report", "", "## Inference set-up", ""]
    lines += [f"- {k}: `{v}`" for k, v in setup.items()]
    lines += ["", "## Metrics", ""]
    for mode, metrics in results.items():
        title = ORACLE_LABEL if mode == "mixed-oracle" else mode
        lines.append(f"### {title}")
        lines.append("")
        lines += [f"- {k}: {v}" for k, v in metrics.items() if not isinstance(v, dict)]
        lines.append("")
    failed = [r for r in records if r.get("error")]
    if failed:
        lines += ["## Videos that could not be read (scored as misses)", ""]
        lines += [f"- {r['qid']}: {r['error']}" for r in failed[:50]]
    return "\n".join(lines) + "\n"
