"""Data curation through the command line: `tempsamp data difficulty`, the difficulty selections,
online filtering and dynamic sampling in `tempsamp train`, on the demo's start model (it answers
with spans, so IoUs vary) and the tiny random model (every answer scores 0)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tempsamp.data.selection import OnlineFilter, gaussian, stratified
from tempsamp.train.schedule import QueryStream, step_queries

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
START_MODEL = REPO / "assets" / "demo-start-model"
PIXELS = ["--min-pixels", "3136", "--max-pixels", "3136"]


def tempsamp(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tempsamp", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's task (one object appearing in a 20-s video): 9 training queries."""
    root = tmp_path_factory.mktemp("curation") / "synth"
    tempsamp("data", "synth", "--out", root, "--n", 12, "--objects", 1, "--kinds", "appear", "--queries-per-video", 1,
             "--distractors", 0, "--duration", 20, "--event-length", "2:6")
    return root


def train_args(data: Path, out: Path, model=START_MODEL, **extra):
    values = {"model": str(model), "train_annotations": str(data / "train.jsonl"), "dataset": "jsonl",
              "output_dir": str(out), "num_generations": 4, "max_new_tokens": 24, "queries_per_step": 2,
              "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 401408, "learning_rate": 1e-4,
              "stages": [{"mode": "answer", "steps": 3}], "save_every": 100, "frame_cache": None}
    values.update(extra)
    return ["train", "tiny_cpu"] + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def qids(data: Path) -> list[str]:
    from tempsamp.data.readers import load_examples

    return [ex.qid for ex in load_examples(data / "train.jsonl", "jsonl")]


# ---------------------------------------------------------------- data difficulty


def test_difficulty_samples_k_answers_per_query_resumes_and_refuses_other_settings(demo_data, tmp_path):
    out = tmp_path / "difficulty.jsonl"
    args = ["data", "difficulty", "--model", START_MODEL, "--annotations", demo_data / "train.jsonl",
            "--samples", 3, "--max-new-tokens", 24, *PIXELS, "--out", out]
    first = tempsamp(*args, "--limit", 3, "--batch-size", 2)
    records = lines(out)
    assert [r["qid"] for r in records] == qids(demo_data)[:3]
    for r in records:
        assert len(r["answers"]) == len(r["iou"]) == 3
        assert r["mean"] == pytest.approx(np.mean(r["iou"]), abs=1e-5)
        assert r["max"] == pytest.approx(max(r["iou"]), abs=1e-5)
        assert r["pass_rate"] == pytest.approx(np.mean(np.array(r["iou"]) >= 0.5))
    assert any(i > 0 for r in records for i in r["iou"])  # the start model's answers are spans, some overlap
    assert "mean IoU of the 3 samples per query (histogram)" in first.stdout
    assert "all samples IoU 0" in first.stdout
    assert "temperature 1.0, transformers" in first.stderr  # the training temperature by default

    # one more query: the first three are reused, not sampled again
    second = tempsamp(*args, "--limit", 4, "--batch-size", 1)
    assert "3 of 4 queries reused" in second.stderr
    assert [r["answers"] for r in lines(out)[:3]] == [r["answers"] for r in records]

    # a query's samples depend on (seed, qid) only: another batch size, another file, the same answers
    other = tmp_path / "other.jsonl"
    tempsamp(*args[:-1], other, "--limit", 4, "--batch-size", 3)
    assert [r["answers"] for r in lines(other)] == [r["answers"] for r in lines(out)]

    refused = tempsamp(*args[:7], 5, *args[8:], "--limit", 4, check=False)
    assert refused.returncode != 0 and "samples: 3 -> 5" in refused.stderr and "Traceback" not in refused.stderr


def test_difficulty_asks_exactly_what_training_asks(demo_data, tmp_path, monkeypatch):
    """Under an input preset (its template, system prompt, text-before-video order and frames) the
    difficulty samples come from the very prompt a training step would build for the query."""
    import torch

    from tempsamp.data.difficulty import sample_difficulty
    from tempsamp.data.readers import load_examples
    from tempsamp.models import qwen_vl
    from tempsamp.train import loop, rollout_engine
    from tempsamp.train.config import TrainConfig
    from tempsamp.video.settings import VideoSettings

    seen, real = [], rollout_engine.make_engine

    def spying_engine(*args, **kwargs):
        engine = real(*args, **kwargs)
        sample = engine.sample_batch
        engine.sample_batch = lambda requests: seen.extend(requests) or sample(requests)
        return engine

    monkeypatch.setattr(rollout_engine, "make_engine", spying_engine)
    examples = load_examples(demo_data / "train.jsonl", "jsonl")[:2]
    video = VideoSettings(input_preset="videochat_r1")
    video.validate_video()
    sample_difficulty(str(START_MODEL), examples, tmp_path / "d.jsonl", samples=1, video=video, max_new_tokens=4,
                      progress=False, say=lambda _: None)
    cfg = TrainConfig(model=str(START_MODEL), input_preset="videochat_r1", num_generations=2)
    cfg.validate_video()
    _, processor = qwen_vl.load_policy(str(START_MODEL))
    assert len(seen) == len(examples)
    for request, example in zip(seen, examples):
        training = loop.prepare_query(cfg, processor, "cpu", example, "answer", 0,
                                      lambda ex: cfg.load(ex.video_path, factor=qwen_vl.frame_factor(processor)))
        assert request.text == training.text and "<answer>" in request.text  # the preset's own template
        assert torch.equal(request.prompt_inputs["input_ids"], training.prompt_inputs["input_ids"])
        assert torch.equal(request.prompt_inputs["pixel_values_videos"], training.prompt_inputs["pixel_values_videos"])
        assert request.source_frames == training.source_frames


# ---------------------------------------------------------------- selections


def test_stratified_spreads_evenly_and_spills_over():
    means = {f"q{i}": v for i, v in enumerate([0.0] * 20 + [0.55, 0.6] + [0.95] * 8)}
    picked = stratified(means, 10, bins=2, seed=0)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert sum(means[q] < 0.5 for q in picked) == 5  # even shares over the two halves
    short = stratified(means, 10, bins=10, seed=0)  # 3 non-empty bins; the 2-query bin gives both
    assert sorted(round(means[q], 2) for q in short if 0.5 <= means[q] < 0.7) == [0.55, 0.6]
    assert stratified(means, 10, bins=2, seed=0) == picked and stratified(means, 10, bins=2, seed=1) != picked


def test_gaussian_draws_around_the_target():
    means = {f"q{i}": v for i, v in enumerate(np.linspace(0, 1, 101))}
    picked = gaussian(means, 20, mu=0.3, sigma=0.05, seed=0)
    assert len(picked) == 20 and abs(np.mean([means[q] for q in picked]) - 0.3) < 0.05
    assert all(abs(means[q] - 0.3) < 0.25 for q in picked)


def test_train_uses_the_selection_and_records_it(demo_data, tmp_path):
    ids = qids(demo_data)
    difficulty = tmp_path / "difficulty.jsonl"
    means = {q: (0.05 if i % 2 else 0.85) for i, q in enumerate(ids)}  # half hard, half easy
    difficulty.write_text("".join(json.dumps({"qid": q, "iou": [m], "mean": m, "max": m, "pass_rate": float(m >= 0.5)})
                                  + "\n" for q, m in means.items()))
    out = tmp_path / "stratified"
    tempsamp(*train_args(demo_data, out, select="stratified", select_n=4, select_bins=2,
                         difficulty_file=str(difficulty)), "--max-steps", 2)
    chosen = json.loads((out / "selection.json").read_text())["qids"]
    assert len(chosen) == 4 and sum(means[q] < 0.5 for q in chosen) == 2
    trained = [q for line in lines(out / "queries.jsonl") for q in line["trained"]]
    assert len(trained) == 4 and set(trained) <= set(chosen)
    assert [line["step"] for line in lines(out / "queries.jsonl")] == [1, 2]

    out = tmp_path / "gaussian"
    tempsamp(*train_args(demo_data, out, select="gaussian", select_n=3, select_mu=0.9, select_sigma=0.05,
                         difficulty_file=str(difficulty)), "--max-steps", 1)
    chosen = json.loads((out / "selection.json").read_text())["qids"]
    assert len(chosen) == 3 and all(means[q] > 0.5 for q in chosen)

    bad = tempsamp(*train_args(demo_data, tmp_path / "bad", select="stratified", select_n=4), check=False)
    assert bad.returncode != 0 and "difficulty_file" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- online filtering


def test_query_stream_without_skips_is_the_step_order():
    stream = QueryStream(7, seed=3)
    for step in range(5):
        assert stream.take(3)[0] == step_queries(7, step, 3, 3)


def test_online_filter_skips_a_solved_query_then_lets_it_back():
    f = OnlineFilter(k=2, solved_iou=0.5, skip=1)
    f.visit("a", [0.9, 0.8])
    assert not f.skip("a")  # one solved visit of two
    f.visit("a", [0.1, 0.9])  # mean 0.5: solved
    assert f.skip("a") and not f.skip("a")  # skipped once, then back with a fresh history
    f.visit("a", [0.9])
    assert not f.skip("a")


def test_online_filter_in_training_resumes_exactly(demo_data, tmp_path):
    # every visit counts as solved (iou >= 0): each query is skipped the next time the order reaches it
    extra = {"online_filter_k": 1, "online_filter_iou": 0.0, "online_filter_skip": 1,
             "stages": [{"mode": "answer", "steps": 4}], "num_generations": 3, "max_new_tokens": 16,
             "queries_per_step": 3}  # 12 visits over 9 queries: the second pass meets the filter
    full = tmp_path / "full"
    tempsamp(*train_args(demo_data, full, **extra))
    log = lines(full / "queries.jsonl")
    skipped = [q for line in log for q in line["skipped_by_filter"]]
    trained = [q for line in log for q in line["trained"]]
    assert skipped and set(skipped) <= set(trained)  # only visited queries are skipped
    assert not any(line["skipped_by_filter"] for line in log[:3])  # the first pass (9 queries) meets no skip
    state = json.loads((full / "checkpoint-4" / "state.json").read_text())["data"]
    assert state["cursor"] == 12 + len(skipped) and state["filter"]["dropped"] == len(skipped)

    split = tmp_path / "split"
    tempsamp(*train_args(demo_data, split, **extra), "--max-steps", 2)
    tempsamp(*train_args(demo_data, split, **extra), "--resume")
    assert lines(split / "queries.jsonl") == log
    assert json.loads((split / "checkpoint-4" / "state.json").read_text())["data"] == state


# ---------------------------------------------------------------- dynamic sampling


def test_tie_test_reads_the_onpolicy_rows_only():
    from tempsamp.data.example import Example
    from tempsamp.train.config import TrainConfig
    from tempsamp.train.loop import Group, onpolicy_tied

    ex = Example("q", "v", None, 20.0, "when?", ((2.0, 6.0),))
    tied = ["<answer> 10.0 to 12.0 </answer>", "<answer> 14.0 to 15.0 </answer>", "<answer> 2.0 to 6.0 </answer>"]
    cfg = TrainConfig()
    assert onpolicy_tied(cfg, Group(ex, {}, [[1]] * 3, tied, [False, False, True]), cot=False)  # 0, 0 | GT 1
    assert not onpolicy_tied(cfg, Group(ex, {}, [[1]] * 3, tied, [False, True, False]), cot=False)  # 0, 1


def test_dynamic_sampling_drops_tied_groups_and_refills_up_to_the_cap(tiny_model_dir, demo_data, tmp_path):
    # the tiny random model never answers with a span: every group ties at 0 and is dropped; after the
    # cap (1 refill round of 2) the process keeps its first group so the step still trains
    out = tmp_path / "capped"
    tempsamp(*train_args(demo_data, out, model=tiny_model_dir, dynamic_sampling=True, dynamic_sampling_max_rounds=1,
                         max_new_tokens=8, num_generations=3, stages=[{"mode": "answer", "steps": 2}]))
    log = lines(out / "queries.jsonl")
    assert [(len(x["trained"]), len(x["dropped_tied"])) for x in log] == [(1, 3), (1, 3)]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["dynamic/dropped_groups"] for m in metrics] == [3.0, 3.0]
    assert [m["dynamic/refill_rounds"] for m in metrics] == [1.0, 1.0]
    assert [m["tokens/generated"] for m in metrics] == [4 * 2 * 8, 4 * 2 * 8]  # dropped groups' tokens count
    state = json.loads((out / "checkpoint-2" / "state.json").read_text())["data"]
    assert state["cursor"] == 8  # 2 steps x (2 queries + 2 refills)


def test_dynamic_sampling_keeps_groups_with_signal(demo_data, tmp_path):
    out = tmp_path / "dynamic"
    tempsamp(*train_args(demo_data, out, dynamic_sampling=True, dynamic_sampling_max_rounds=2, strategy="grpo"))
    log = lines(out / "queries.jsonl")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for line, m in zip(log, metrics):
        assert 0 < len(line["trained"]) <= 2
        assert m["dynamic/dropped_groups"] == len(line["dropped_tied"])
        assert m["groups"] == len(line["trained"])
    # under plain GRPO a kept group (not tied) has a non-zero advantage somewhere
    assert all(m["adv/frac_onpolicy_negative"] > 0 for m, line in zip(metrics, log) if len(line["trained"]) == 2)


def test_dynamic_sampling_on_two_processes_takes_the_same_queries_as_one(demo_data, tmp_path):
    # refills are decided on gathered tie flags and every query is seeded by (seed, step, slot), so
    # two gloo processes drop, refill and train on exactly what one process does. Half the queries
    # ask for a span after the video's end: every sample scores 0 there, a tie, always dropped.
    rows = lines(demo_data / "train.jsonl")
    late = [dict(r, qid=r["qid"] + "-late", spans=[[40.0, 45.0]]) for r in rows]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + late))
    (tmp_path / "videos").symlink_to(demo_data / "videos")
    extra = {"dynamic_sampling": True, "dynamic_sampling_max_rounds": 6, "strategy": "grpo", "num_generations": 3,
             "stages": [{"mode": "answer", "steps": 2}], "max_new_tokens": 16,
             "train_annotations": str(tmp_path / "mixed.jsonl")}
    one, two = tmp_path / "one", tmp_path / "two"
    tempsamp(*train_args(demo_data, one, **extra))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "tempsamp", *train_args(demo_data, two, **extra), "--num-processes", "2"],
                          env=dict(env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / "layout.json").read_text())[0]["world_size"] == 2
    assert lines(two / "queries.jsonl") == lines(one / "queries.jsonl")
    log = lines(one / "queries.jsonl")
    dropped = [q for line in log for q in line["dropped_tied"]]
    assert dropped and all(q.endswith("-late") for q in dropped)  # refills happened, for the unreachable ones
    assert all(len(line["trained"]) == 2 for line in log)
    metrics = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    for key in ("dynamic/dropped_groups", "dynamic/refill_rounds", "groups", "tokens/generated"):
        assert [m[key] for m in metrics[0]] == [m[key] for m in metrics[1]], key


# ---------------------------------------------------------------- TimeLens data


def test_timelens_formats_read_and_check(tmp_path):
    """Small files in TimeLens' layouts (TencentARC/TimeLens: timelens/dataset/timelens_data.py)."""
    from tempsamp.data.readers import load_examples

    train = tmp_path / "timelens-100k.jsonl"
    rows = [
        {"source": "cosmo_cap", "video_path": "cosmo_cap/a.mp4", "duration": 30.0,
         "events": [{"query": "A man  opens the door.", "span": [1.0, 4.5]},
                    {"query": "he sits down", "span": [[10.0, 12.0], [20.0, 22.0]]}]},
        {"source": "didemo", "video_path": "didemo/a.mp4", "duration": 25.0,
         "events": [{"query": "a dog runs", "span": [3.0, 31.0]}]},  # an end past the duration: kept, counted
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"video_path": "x.mp4", "duration": 5, "events": []}\n')
    bench = tmp_path / "charades-timelens.json"
    bench.write_text(json.dumps({"AO8RW": {"duration": 31.5, "spans": [[0.0, 6.9], [7.1, 12.0]],
                                           "queries": ["a person is putting a book on a shelf.", "person  opens a door"]},
                                 "Y6R7T": {"duration": 20.0, "spans": [[2.0, 5.0]], "queries": ["someone laughs"]}}, indent=1))

    found = load_examples(train, lenient=True)  # detected as timelens; the empty-events row is skipped
    assert [e.qid for e in found] == ["cosmo_cap/a#0", "cosmo_cap/a#1", "didemo/a#0"]
    assert found[0].query == "A man opens the door" and found[0].video_path == str(tmp_path / "cosmo_cap/a.mp4")
    assert found[1].spans == ((10.0, 12.0), (20.0, 22.0)) and found[2].extra["source"] == "didemo"
    strict = tempsamp("data", "check", "--annotations", train, check=False)
    assert strict.returncode == 1 and "events" in strict.stdout + strict.stderr

    report = json.loads(tempsamp("data", "check", "--annotations", train, "--json", "--lenient").stdout)
    assert (report["queries"], report["videos"], report["spans"]) == (3, 2, 4)
    assert report["ends_past_duration"]["count"] == 1 and report["malformed"]["count"] == 1

    report = json.loads(tempsamp("data", "check", "--annotations", bench, "--json").stdout)
    assert (report["queries"], report["videos"], report["malformed"]["count"]) == (3, 2, 0)
    queries = load_examples(bench, videos=tmp_path / "videos")
    assert [q.query for q in queries] == ["a person is putting a book on a shelf", "person opens a door", "someone laughs"]
    assert queries[0].qid == "AO8RW#0" and queries[0].video_path == str(tmp_path / "videos" / "AO8RW.mp4")


# ---------------------------------------------------------------- Qwen3.5


def test_tiny_qwen35_trains_and_evaluates_with_the_video(demo_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import QWEN35_SPEC, ensure_tiny_model
    from tempsamp.video.cache import sample_frames

    model_dir = ensure_tiny_model(spec=QWEN35_SPEC)
    model, processor = qwen_vl.load_policy(str(model_dir))
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration" and qwen_vl.family_of(model).model_type == "qwen3_5"
    assert model.config.text_config.layer_types == ["linear_attention", "full_attention"]  # the hybrid stack
    # the video reaches the model: Qwen3-VL-style timestamps in the prompt, and other frames change the log-probs
    video = sample_frames(str(demo_data / "videos" / "synth00000.mp4"), fps=2.0, max_frames=64, min_pixels=3136,
                          max_pixels=3136, total_pixels=401408)
    prompt = qwen_vl.build_prompt(processor, "when?", video.frames, video.fps)
    assert "seconds>" in processor.batch_decode(prompt["input_ids"])[0] and "pixel_values_videos" in prompt
    ids = qwen_vl.completion_ids(processor, "<answer> 1.0 to 2.0 </answer>")
    with torch.no_grad():
        a = qwen_vl.completion_logprobs(model, qwen_vl.group_batch(prompt, [ids], qwen_vl.pad_token_id(processor)))
        dark = qwen_vl.build_prompt(processor, "when?", video.frames * 0, video.fps)
        b = qwen_vl.completion_logprobs(model, qwen_vl.group_batch(dark, [ids], qwen_vl.pad_token_id(processor)))
    assert not torch.allclose(a, b)

    out = tmp_path / "run"
    tempsamp(*train_args(demo_data, out, model="tiny-qwen3.5", max_new_tokens=8, num_generations=3,
                         stages=[{"mode": "answer", "steps": 1}, {"mode": "cot", "steps": 1}], learning_rate=1e-2))
    assert json.loads((out / "final-model" / "config.json").read_text())["model_type"] == "qwen3_5"
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "final-model" / "model.safetensors"))
    changed = [k for k in before if "visual" not in k and not torch.equal(before[k], after[k])]
    assert any("linear_attn" in k for k in changed) and any("self_attn" in k for k in changed)  # both kinds trained
    assert all(torch.equal(before[k], after[k]) for k in before if "visual" in k)  # the frozen vision tower

    ev = tempsamp("eval", "--model", out, "--annotations", demo_data / "test.jsonl", "--out", tmp_path / "eval",
                  "--limit", 2, "--max-new-tokens", 8)
    assert "checkpoint-2" in ev.stderr
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "n_queries: `2`" in report or "- n_queries: `2`" in report
    assert len(lines(tmp_path / "eval" / "predictions_answer.jsonl")) == 2


def test_timelens_recipe_and_prompt():
    from tempsamp.prompts import build_offpolicy_completion, prompt_text
    from tempsamp.spans import parse_span
    from tempsamp.train.config import load_config

    cfg = load_config("timelens_qwen35_tempsamp")
    assert (cfg.model, cfg.dataset, cfg.select, cfg.select_n, cfg.num_generations, cfg.strategy) == (
        "Qwen/Qwen3.5-4B", "timelens", "stratified", 2000, 8, "shaping")
    assert {s["mode"] for s in cfg.stages} == {"timelens"}
    text = prompt_text("a man opens the door", "timelens", duration=30.0)
    assert "sentence 'a man opens the door'" in text and "The event happens in <start time> - <end time> seconds" in text
    gt = build_offpolicy_completion((12.5, 17.8), "timelens")
    assert gt == "The event happens in 12.5 - 17.8 seconds." and parse_span(gt) == (12.5, 17.8)
    with pytest.raises(ValueError, match="no highlights prompt"):
        prompt_text("q", "timelens", duration=3.0, task="highlights")


def test_generation_budget_ends_the_run_and_a_resume_keeps_it_ended(tiny_model_dir, demo_data, tmp_path):
    # 2 queries x 2 samples x 8 tokens (the random model never stops early) = 32 tokens a step
    out = tmp_path / "budget"
    args = train_args(demo_data, out, model=tiny_model_dir, max_new_tokens=8, num_generations=3, max_generated_tokens=40,
                      stages=[{"mode": "answer", "steps": 10}])
    done = tempsamp(*args)
    assert "generation budget spent after 2 steps: 64 tokens" in done.stdout + done.stderr
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2"] and (out / "final-model").is_dir()
    assert json.loads((out / "checkpoint-2" / "state.json").read_text())["counters"]["generated_tokens"] == 64
    tempsamp(*args, "--resume")
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2"]
    assert len(lines(out / "queries.jsonl")) == 2
