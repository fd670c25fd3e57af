"""eval reruns reuse only answers made the same way (tiny model, real CLI where it matters).

Changed model or settings into the same folder: refused naming the keys, or replaced with
--overwrite; a video folder fixed after a run: the failed queries are generated again; an added
mode: only it is generated. Kill-and-resume through SIGTERM: the rerun finishes the rest.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tempsamp.data.readers import load_examples
from tempsamp.errors import UserError
from tempsamp.evaluation import inference
from tempsamp.evaluation.inference import VideoSettings
from video_files import BLUE, write_video

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VIDEO = VideoSettings(min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=56 * 56 * 64)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun_data")
    (root / "videos").mkdir()
    rows = []
    for i, (seconds, span) in enumerate([(8.0, (2.0, 6.0)), (6.0, (1.0, 4.0)), (7.0, (3.0, 5.0))]):
        write_video(root / "videos" / f"v{i}.mp4", seconds, span, colour=BLUE)
        rows.append({"video": f"v{i}.mp4", "duration": seconds, "query": f"when is the blue square visible {i}?",
                     "spans": [list(span)]})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "empty_videos").mkdir()
    return root


@pytest.fixture
def generated(monkeypatch):
    """(query, mode) pairs the model is asked for."""
    asked = []
    real = inference.generate_answers

    def spy(generator, videos, queries, durations, mode, tasks, *preset):
        asked.extend((q, mode) for q in queries)
        return real(generator, videos, queries, durations, mode, tasks, *preset)

    monkeypatch.setattr(inference, "generate_answers", spy)
    return asked


def run(model, examples, out, modes=("answer",), lines=None, **kwargs):
    kwargs = {"video": VIDEO, "max_new_tokens": 4, "progress": False, "batch_size": 2, **kwargs}
    return inference.evaluate(str(model), examples, out, modes, say=(lines.append if lines is not None else print), **kwargs)


def test_added_mode_is_generated_alone_and_nothing_else(tiny_model_dir, bench, tmp_path, generated):
    examples = load_examples(bench / "test.jsonl", "jsonl", videos=bench / "videos")
    out = tmp_path / "eval"
    first = run(tiny_model_dir, examples, out, ("answer",))
    assert sorted(m for _, m in generated) == ["answer"] * 3
    generated.clear()
    lines = []
    second = run(tiny_model_dir, examples, out, ("answer", "cot"), lines)  # crashed with KeyError 'cot'
    assert sorted(m for _, m in generated) == ["cot"] * 3  # the stored answers are reused
    assert second["answer"] == first["answer"] and set(second) == {"answer", "cot"}
    assert lines == [f"eval: 3 of 6 answers (query x mode) reused from {out / 'generations.jsonl'}, 3 to generate (3 new)"]
    generated.clear()
    lines.clear()
    run(tiny_model_dir, examples, out, ("cot",), lines)  # everything is stored now
    assert generated == [] and lines[0].startswith("eval: 3 of 3 answers (query x mode) reused")
    # mixed reads each answer's log-prob, which runs without mixed do not compute: made again, and said so
    generated.clear()
    lines.clear()
    third = run(tiny_model_dir, examples, out, ("answer", "cot", "mixed"), lines)
    assert sorted(m for _, m in generated) == ["answer"] * 3 + ["cot"] * 3 and set(third) == {"answer", "cot", "mixed"}
    assert lines == [f"eval: 0 of 6 answers (query x mode) reused from {out / 'generations.jsonl'}, 6 to generate "
                     "(6 made without log-probs)"]
    assert third["answer"] == first["answer"]  # greedy: the same answers, now with their log-probs


def test_changed_model_or_settings_are_refused_or_replaced(tiny_model_dir, tiny_small_vocab_model_dir, bench, tmp_path,
                                                           generated):
    examples = load_examples(bench / "test.jsonl", "jsonl", videos=bench / "videos")[:2]
    out = tmp_path / "eval"
    run(tiny_model_dir, examples, out)
    generated.clear()
    with pytest.raises(UserError, match=r"made differently \(model: 'sha256:\w+' -> 'sha256:\w+'\).*--overwrite"):
        run(tiny_small_vocab_model_dir, examples, out)
    with pytest.raises(UserError, match=r"max_new_tokens: 4 -> 5.*max_pixels|max_pixels: 3136 -> 6272.*max_new_tokens"):
        run(tiny_model_dir, examples, out, max_new_tokens=5, video=VideoSettings(min_pixels=3136, max_pixels=6272,
                                                                                  total_pixels=3136 * 64))
    assert generated == []  # refused before any generation
    lines = []
    results = run(tiny_small_vocab_model_dir, examples, out, lines=lines, overwrite=True)
    assert len(generated) == 2 and "0 of 2 answers" in lines[0]  # nothing of the other model is reused
    stored = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    digest = json.loads((out / "eval.json").read_text())["model"]
    assert len(stored) == 2 and {r["made"]["model"] for r in stored} == {digest}
    assert digest in (out / "report.md").read_text() and results["answer"]["n_failed_videos"] == 0
    # the same model copied elsewhere is the same model: its answers are reused
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_small_vocab_model_dir, copy)
    generated.clear()
    run(copy, examples, out)
    assert generated == []


def test_fixed_video_folder_generates_the_failed_queries_again(tiny_model_dir, bench, tmp_path, generated):
    out = tmp_path / "eval"
    wrong = load_examples(bench / "test.jsonl", "jsonl", videos=bench / "empty_videos")
    first = run(tiny_model_dir, wrong, out)
    assert first["answer"]["n_failed_videos"] == 3 and generated == []
    right = load_examples(bench / "test.jsonl", "jsonl", videos=bench / "videos")
    lines = []
    second = run(tiny_model_dir, right, out, lines=lines)
    assert second["answer"]["n_failed_videos"] == 0 and len(generated) == 3
    assert "3 to generate (3 query or video file changed)" in lines[0]
    assert "could not be read" not in (out / "report.md").read_text()


def test_eval_killed_by_sigterm_then_rerun_finishes_the_rest(tiny_model_dir, bench, tmp_path):
    """`tempsamp eval` stopped by SIGTERM after its first batch keeps what it wrote; the rerun
    reuses it, generates only the rest, and ends with the uninterrupted run's predictions."""
    many = tmp_path / "many.jsonl"
    rows = [json.loads(x) for x in (bench / "test.jsonl").read_text().splitlines()]
    many.write_text("".join(json.dumps(dict(rows[i % 3], query=f"q{i} when?")) + "\n" for i in range(12)))
    cmd = [sys.executable, "-m", "tempsamp", "eval", "--model", str(tiny_model_dir), "--dataset", "jsonl",
           "--annotations", str(many), "--videos", str(bench / "videos"), "--min-pixels", "3136", "--max-pixels", "3136",
           "--total-pixels", str(3136 * 64), "--max-new-tokens", "4", "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gen = killed / "generations.jsonl"
    deadline = time.time() + 300
    while not (gen.exists() and len(gen.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    done = len(read_lines(gen))
    assert 2 <= done < 12
    rerun = subprocess.run([*cmd, "--out", str(killed)], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"eval: {done} of 12 answers (query x mode) reused" in rerun.stderr
    whole = tmp_path / "whole"
    subprocess.run([*cmd, "--out", str(whole)], env=env, capture_output=True, text=True, timeout=600, check=True)
    assert read_lines(killed / "predictions_answer.jsonl") == read_lines(whole / "predictions_answer.jsonl")


def read_lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]
