"""How hard each training query is for a model: K sampled answers per query and their IoUs.

``tempsamp data difficulty --model M --annotations A --samples 8 --out F`` writes F, one JSON line
per query: the K answers (text, span, tokens), their IoUs with the ground truth, and the mean, the
max and the pass rate at IoU 0.5. The selections of tempsamp.data.selection read it.

The answers are sampled as training samples them: the training rollout engine (transformers or
vLLM), the training temperature (1.0 unless the model's run says otherwise) and the training prompt
mode, each query's K samples a function of (seed, qid) only, so the figures do not depend on the
batch size or on which queries a resumed run still had to do. The file is resumable and keyed like
``tempsamp eval``'s generations: each line records what made it (model digest, a digest of the
settings, of the exact prompt, the video file); a rerun reuses the lines made the same way and
samples the rest, and a file made with another model or settings is refused naming what differs
(``--overwrite`` replaces it). The settings are kept beside F in ``F.settings.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from tempsamp.data.example import Example
from tempsamp.evaluation.inference import (
    VideoSettings, _atomic_write_text, check_manifest, made_by, model_digest, read_records, run_settings,
)

PASS_IOU = 0.5


def settings_path(out: Path) -> Path:
    return out.with_name(out.name + ".settings.json")


def query_seed(seed: int, qid: str) -> int:
    """The sampling seed of one query: a function of (seed, qid), not of batch or order."""
    digest = hashlib.sha256(f"difficulty:{seed}:{qid}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def figures(ious) -> dict:
    """mean, max and pass rate (IoU >= 0.5) of one query's sampled IoUs."""
    ious = np.asarray(ious, dtype=float)
    return {"mean": float(ious.mean()), "max": float(ious.max()), "pass_rate": float((ious >= PASS_IOU).mean())}


def sample_difficulty(model_path: str, examples: list[Example], out: str | Path, *, samples: int = 8,
                      mode: str = "answer", temperature: float = 1.0, top_p: float = 1.0,
                      video: VideoSettings = VideoSettings(), max_new_tokens: int = 256, engine: str = "transformers",
                      batch_size: int = 4, seed: int = 0, overwrite: bool = False, progress: bool = True,
                      say=print) -> list[dict]:
    """Sample ``samples`` answers per query; returns one record per example (file order).

    A query whose video cannot be read gets a record with ``error`` (it is tried again on a rerun;
    the selections leave it out).
    """
    from tqdm import tqdm

    from tempsamp.models import qwen_vl
    from tempsamp.prompts import prompt_text
    from tempsamp.train.config import TrainConfig
    from tempsamp.train.rollout_engine import RolloutRequest, make_engine
    from tempsamp.train.scoring import score_group
    from tempsamp.video.cache import VideoDecodeError

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = run_settings(model_path, model_digest(model_path, out.parent), video, max_new_tokens, temperature, engine)
    settings.update({"samples": int(samples), "top_p": float(top_p), "seed": int(seed), "mode": mode})
    stored = check_manifest(out.parent, settings, overwrite, generations=out.name, manifest=settings_path(out).name)
    latest = {r["qid"]: r for r in stored}
    reuse = {ex.qid: latest[ex.qid] for ex in examples
             if ex.qid in latest and not latest[ex.qid].get("error") and latest[ex.qid].get("made") == made_by(settings, ex, mode)}
    todo = [ex for ex in examples if ex.qid not in reuse]
    say(f"difficulty: {len(reuse)} of {len(examples)} queries reused from {out}, {len(todo)} to sample "
        f"({samples} answers each, temperature {temperature}, {engine})")
    results = dict(reuse)
    if todo:
        model, processor = qwen_vl.load_policy(model_path)
        model.eval()
        cfg = TrainConfig(rollout_engine=engine, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        sampler = make_engine(cfg, model, processor, model_path)
        bar = tqdm(desc="difficulty", disable=not progress, initial=len(reuse), total=len(examples))
        import torch

        with open(out, "a") as sink, torch.no_grad():
            for first in range(0, len(todo), batch_size):
                chunk, requests, lines = todo[first:first + batch_size], [], []
                readable = []
                for ex in chunk:
                    try:
                        frames = video.load(ex.video_path, factor=qwen_vl.frame_factor(processor))
                    except (FileNotFoundError, VideoDecodeError) as err:
                        lines.append({"qid": ex.qid, "mode": mode, "made": made_by(settings, ex, mode),
                                      "error": f"{type(err).__name__}: {err}"})
                        continue
                    # the prompt exactly as training builds it (tempsamp.train.loop.prepare_query)
                    preset = video.preset
                    text = prompt_text(ex.query, mode, duration=ex.duration, task=ex.task,
                                       template=preset.template(mode, ex.task))
                    prompt = qwen_vl.build_prompt(processor, text, frames.frames, frames.fps, system_prompt=preset.system_prompt,
                                                  video_first=preset.video_first, device=model.device,
                                                  source_frames=frames.source_frames())
                    requests.append(RolloutRequest(prompt, frames.frames, frames.fps, text, samples, query_seed(seed, ex.qid),
                                                   frames.source_frames()))
                    readable.append(ex)
                for ex, sampled in zip(readable, sampler.sample_batch(requests) if requests else []):
                    ids, texts = sampled[0], sampled[1]  # (vLLM also returns its log-probs)
                    ious = np.nan_to_num(np.asarray(score_group(ex, list(texts), False).iou, dtype=float), nan=0.0)
                    answers = [{"text": t, "span": _span(t, ex.task), "tokens": len(i)} for t, i in zip(texts, ids)]
                    lines.append({"qid": ex.qid, "mode": mode, "made": made_by(settings, ex, mode), "answers": answers,
                                  "iou": [round(float(v), 6) for v in ious], **figures(ious)})
                for line in lines:  # flushed per batch: a kill loses at most this batch
                    results[line["qid"]] = line
                    sink.write(json.dumps(line) + "\n")
                sink.flush()
                bar.update(len(chunk))
        bar.close()
    records = [results[ex.qid] for ex in examples]
    # the file holds this run's records once each (superseded lines dropped), in file order
    kept = {r["qid"]: r for r in read_records(out)}
    kept.update(results)
    _atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in kept.values()))
    return records


def _span(text: str, task: str):
    from tempsamp.spans import parse_scored_spans, parse_span

    if task == "highlights":
        windows = parse_scored_spans(text)
        return list(windows[0][:2]) if windows else None
    span = parse_span(text)
    return list(span) if span else None


def read_difficulty(path: str | Path) -> dict[str, dict]:
    """{qid: record} of a difficulty file; a query whose video failed is left out."""
    from tempsamp.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such difficulty file; make it with `tempsamp data difficulty --out {path} ...`")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(rec, dict) or "qid" not in rec:
            raise UserError(f"{path}:{n}: a difficulty record needs a qid")
        if rec.get("error"):
            continue
        if not isinstance(rec.get("mean"), (int, float)):
            raise UserError(f"{path}:{n}: mean: missing or not a number")
        out[str(rec["qid"])] = rec
    return out


def summary(records: list[dict], bins: int = 10, width: int = 40) -> str:
    """One screen: histogram of per-query mean IoU, share with all-zero samples, pass rates."""
    ok = [r for r in records if not r.get("error")]
    lines = [f"{len(ok)} queries scored" + (f", {len(records) - len(ok)} with an unreadable video (left out)"
                                              if len(ok) < len(records) else "")]
    if not ok:
        return "\n".join(lines)
    means = np.array([r["mean"] for r in ok])
    zero = np.array([max(r["iou"]) <= 0.0 for r in ok])
    counts, _ = np.histogram(np.clip(means, 0, 1), bins=bins, range=(0.0, 1.0))
    top = max(1, counts.max())
    lines.append(f"mean IoU of the {len(ok[0]['iou'])} samples per query (histogram):")
    for b, c in enumerate(counts):
        lo, hi = b / bins, (b + 1) / bins
        lines.append(f"  [{lo:.1f}, {hi:.1f}{']' if b == bins - 1 else ')'} {c:6d} {'#' * math.ceil(width * c / top) if c else ''}")
    lines.append(f"all samples IoU 0 (no signal for plain GRPO): {zero.sum()} of {len(ok)} ({zero.mean():.1%})")
    lines.append(f"mean IoU {means.mean():.3f}; best-of-K IoU {np.mean([r['max'] for r in ok]):.3f}; "
                 f"pass rate at {PASS_IOU} {np.mean([r['pass_rate'] for r in ok]):.3f}")
    return "\n".join(lines)
