"""The step's rollouts in one batched call: the samples do not depend on the batching, the loop makes
one engine call per step, and every step logs where its time went."""

import json

import numpy as np
import pytest
import torch

from tempsamp.models import qwen_vl
from tempsamp.train.rollout_engine import RolloutRequest, TransformersEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tiny_small_vocab_model_dir):
    model, processor = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    return model.eval(), processor


def requests(processor, num_samples=3):
    rng = np.random.default_rng(0)
    out = []
    # different video lengths and prompt lengths, so the batch needs left padding
    for i, (frames, text) in enumerate([(8, "when?"), (6, "when does the red square appear in the video?"), (4, "blue?")]):
        video = rng.integers(0, 256, (frames, 56, 56, 3), dtype=np.uint8)
        out.append(RolloutRequest(qwen_vl.build_prompt(processor, text, video, 2.0), video, 2.0, text, num_samples, 100 + i))
    return out


def test_batched_samples_equal_each_query_alone(small):
    model, processor = small
    engine = TransformersEngine(model, processor, max_new_tokens=12, temperature=1.0, top_p=0.95)
    reqs = requests(processor)
    batched = engine.sample_batch(reqs)
    alone = [engine.sample(r.prompt_inputs, r.frames, r.fps, r.text, num_samples=r.num_samples, seed=r.seed) for r in reqs]
    assert [b[0] for b in batched] == [a[0] for a in alone]
    assert engine.sample_batch(reqs[1:])[0][0] == alone[1][0]  # other neighbours, same samples
    assert len({tuple(ids) for ids in alone[0][0]}) == 3  # G distinct samples, not one draw repeated
    assert engine.sample_batch([reqs[1]._replace(seed=7)])[0][0] != alone[1][0]  # the seed matters


def test_seeded_sampler_applies_top_p_after_the_placeholder_suppression(small):
    model, processor = small
    prompt = requests(processor)[0].prompt_inputs
    greedy = qwen_vl.generate(model, processor, prompt, num_samples=1, max_new_tokens=8, do_sample=False).ids[0]
    # top_p this small keeps only the most likely token: the sampler must reproduce greedy decoding,
    # which needs its top-p after the placeholder suppression and the other processors
    nucleus = qwen_vl.generate(model, processor, prompt, num_samples=2, max_new_tokens=8, top_p=1e-9, seed=3).ids
    assert nucleus == [greedy, greedy]
    placeholders = set(qwen_vl.placeholder_token_ids(model))
    video_pad = model.config.video_token_id
    embedding = model.get_input_embeddings().weight
    saved = embedding[video_pad].clone()
    try:
        with torch.no_grad():  # the placeholder now outscores the greedy token (tied output layer)
            embedding[video_pad] = 3.0 * embedding[greedy[0]]
        sampled = qwen_vl.generate(model, processor, prompt, num_samples=4, max_new_tokens=4, top_p=1e-9, seed=3).ids
        assert not placeholders & {t for row in sampled for t in row}
    finally:
        with torch.no_grad():
            embedding[video_pad] = saved


def test_merge_prompts_is_the_inverse_of_split(small):
    _, processor = small
    reqs = requests(processor)
    batch = qwen_vl.build_prompt_batch(processor, [r.text for r in reqs], [r.frames for r in reqs], [r.fps for r in reqs])
    merged = qwen_vl.merge_prompts(qwen_vl.split_prompt_batch(batch), qwen_vl.pad_token_id(processor))
    assert merged.keys() == batch.keys()
    for key in batch:
        assert torch.equal(merged[key], batch[key]), key


def test_the_loop_rolls_out_a_step_in_one_call_and_logs_its_phases(tiny_small_vocab_model_dir, tmp_path, monkeypatch):
    from tempsamp.train import loop, rollout_engine
    from tempsamp.train.config import load_config
    from tempsamp.train.logger import read_metrics
    from tempsamp.train.plot import plot_run
    from video_files import write_video

    rows = []
    for i, span in enumerate([(2.0, 5.0), (4.0, 7.5), (1.0, 3.0)]):
        write_video(tmp_path / f"v{i}.mp4", 8.0, span)
        rows.append({"video": f"v{i}.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [list(span)]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []
    real = rollout_engine.TransformersEngine.sample_batch

    def counting(self, reqs):
        calls.append([r.seed for r in reqs])
        return real(self, reqs)

    monkeypatch.setattr(rollout_engine.TransformersEngine, "sample_batch", counting)
    out = tmp_path / "run"
    cfg = load_config("tiny_cpu", [f"model={tiny_small_vocab_model_dir}", f"train_annotations={tmp_path / 'train.jsonl'}",
                                   f"output_dir={out}", "num_generations=4", "max_new_tokens=6", "queries_per_step=2",
                                   "min_pixels=3136", "max_pixels=3136", "frame_cache=null", "save_every=1",
                                   'stages=[{"mode": "answer", "steps": 2}]'])
    torch.set_num_threads(1)
    loop.train(cfg)
    assert [len(c) for c in calls] == [2, 2]  # one call per step, with both queries
    assert len({s for c in calls for s in c}) == 4  # each query its own seed
    metrics = read_metrics(out)
    phases = [f"speed/{k}_seconds" for k in loop.SPEED_KEYS]
    for row in metrics:
        assert all(row[k] is not None and row[k] >= 0 for k in phases), row
        assert row["speed/rollout_seconds"] > 0 and row["speed/policy_seconds"] > 0 and row["speed/tokens_per_second"] > 0
        assert sum(row[f"speed/{k}_seconds"] for k in ("data", "rollout", "reference", "policy", "optimizer")) <= row["speed/step_seconds"]
    assert metrics[1]["speed/checkpoint_seconds"] > 0  # step 1 saved a checkpoint (save_every=1)
    summary = json.loads((out / "speed.json").read_text())
    assert summary["steps"] == 2 and summary["rollout_seconds"] > 0 and summary["tokens_per_second"] > 0
    assert (out / "plots" / "phases.png").exists() or any(p.name == "phases.png" for p in plot_run(out))


def test_eval_without_mixed_mode_skips_the_log_prob_forward(tiny_small_vocab_model_dir, tmp_path, monkeypatch):
    import math

    from tempsamp.data.example import Example
    from tempsamp.evaluation import inference
    from video_files import write_video

    examples = []
    for i, span in enumerate([(2.0, 5.0), (1.0, 3.0)]):
        write_video(tmp_path / f"v{i}.mp4", 6.0, span)
        examples.append(Example(qid=f"q{i}", video_id=f"v{i}", video_path=str(tmp_path / f"v{i}.mp4"), duration=6.0,
                                query="when is the red square visible?", spans=(span,)))
    calls = []
    real = qwen_vl.completion_logprobs
    monkeypatch.setattr(qwen_vl, "completion_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    video = inference.VideoSettings(max_frames=8, min_pixels=3136, max_pixels=3136)
    out = tmp_path / "eval"
    inference.evaluate(str(tiny_small_vocab_model_dir), examples, out, ["answer"], video=video, max_new_tokens=6,
                       progress=False, batch_size=2)
    assert calls == []  # one generation per query, nothing else
    records = inference.read_records(out / "generations.jsonl")
    assert len(records) == 2 and all(r["scored"] is False and math.isnan(r["logprob"]) for r in records)
    # asking for mixed later: those answers lack the log-probs, so they are made again, scored
    inference.evaluate(str(tiny_small_vocab_model_dir), examples, out, ["mixed"], video=video, max_new_tokens=6,
                       progress=False, batch_size=2)
    assert len(calls) == 4  # answer and cot, two queries
    latest = {(r["qid"], r["mode"]): r for r in inference.read_records(out / "generations.jsonl")}
    assert len(latest) == 4 and all(r["scored"] and math.isfinite(r["logprob"]) for r in latest.values())
