"""Bad input through the real CLI: each case exits non-zero with one line naming the file and
line or the key, and no traceback. Cases that load no model run in one subprocess; those that
need the tiny model in a second one (a driver calls tempsamp.cli.main per case, as `python -m
tempsamp` does, capturing each case's output)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from video_files import write_video

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from tempsamp.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit:  # argparse
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = "raised"
        results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
    sys.__stdout__.write("\\nRESULTS " + json.dumps(results) + "\\n")
""")


def run_cases(cases: list[list[str]], cwd: Path) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("\nRESULTS ", 1)[1])


def check(result: dict, code: int, *needles: str) -> None:
    """Exit code, every needle in the last line of stderr, no traceback anywhere."""
    where = f"{result['argv']}: {result['err'][-1500:]}"
    assert result["code"] == code, where
    assert "Traceback" not in result["err"] + result["out"], where
    last = result["err"].strip().splitlines()[-1] if result["err"].strip() else ""
    for needle in needles:
        assert needle in last, f"{needle!r} not in the last line {last!r} ({result['argv']})"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    write_video(root / "v0.mp4", 6.0, (1.0, 3.0))
    good = {"video": "v0.mp4", "duration": 6.0, "query": "when is the red square visible?", "spans": [[1.0, 3.0]]}
    (root / "good.jsonl").write_text(json.dumps(good) + "\n")
    (root / "latin1.jsonl").write_bytes((json.dumps(good) + "\n").encode() + '{"query": "caf\xe9"}\n'.encode("latin-1"))
    (root / "empty.jsonl").write_text("")
    (root / "syntax.yaml").write_text("model: tiny\nlearning_rate: [1e-4\nseed: 0\n")
    (root / "empty.yaml").write_text("")
    (root / "a_file").write_text("not a folder\n")
    (root / "not_a_model").mkdir()
    (root / "run_empty").mkdir()
    (root / "run_empty" / "metrics.jsonl").write_text("")
    (root / "synth_used").mkdir()
    (root / "synth_used" / "notes.txt").write_text("mine\n")
    return root


@pytest.mark.slow
def test_bad_input_without_a_model(files, tiny_small_vocab_model_dir):
    f, model = files, str(tiny_small_vocab_model_dir)
    train = ["train", "tiny_cpu", f"train_annotations={f / 'good.jsonl'}", "dataset=jsonl", f"output_dir={f / 'runs'}"]
    ev = ["eval", "--model", model, "--dataset", "jsonl", "--out", str(f / "eval")]
    other = f / "eval_other"  # a folder made with other settings: refused before the model is loaded
    other.mkdir()
    (other / "eval.json").write_text(json.dumps({"model": "sha256:0123456789abcdef", "fps": 2.0, "max_frames": 256}))
    (other / "generations.jsonl").write_text(json.dumps({"qid": "x", "mode": "answer", "made": {}}) + "\n")
    table = [
        (["train", "tiny_cpu", "learning_rate=abc"], 2, "command line: learning_rate: 'abc' is not a number"),
        (["train", "tiny_cpu", "learnig_rate=1e-4"], 2, "unknown config key 'learnig_rate' (did you mean 'learning_rate'?)"),
        (["train", "tiny_cp"], 2, "recipe 'tiny_cp' not found (did you mean 'tiny_cpu'?)"),
        (["train", str(f / "syntax.yaml")], 2, f"{f / 'syntax.yaml'}:2: YAML syntax error"),
        (["train", str(f / "empty.yaml")], 2, f"{f / 'empty.yaml'}: the recipe is empty"),
        (["train", "tiny_cpu", "stages=5"], 2, "command line: stages: expected a list"),
        ([*train[:2], f"train_annotations={f / 'latin1.jsonl'}"], 2, "latin1.jsonl:2: not UTF-8 text (byte 0xe9)"),
        ([*train[:2], f"train_annotations={f / 'empty.jsonl'}", "dataset=jsonl"], 2, "empty.jsonl: no queries"),
        ([*train, "videos=/nonexistent"], 2, "videos=/nonexistent: no such folder"),
        ([*train[:-1], f"output_dir={f / 'a_file' / 'run'}"], 2, "a_file is a file, not a folder"),
        (["train", "tiny_cpu", "--max-steps", "0"], 2, "argument --max-steps: must be >= 1, got 0"),
        ([*ev, "--annotations", str(f / "good.jsonl"), "--limit", "0"], 2, "argument --limit: must be >= 1, got 0"),
        ([*ev, "--annotations", str(f / "latin1.jsonl")], 2, "latin1.jsonl:2: not UTF-8 text"),
        (["eval", "--model", model, "--annotations", str(f / "empty.jsonl"), "--out", str(f / "eval")], 2,
         "empty.jsonl: the annotation file is empty"),
        ([*ev[:-1], str(f / "a_file"), "--annotations", str(f / "good.jsonl")], 2, "a_file is a file, not a folder"),
        ([*ev, "--annotations", str(f / "missing.jsonl")], 2, "missing.jsonl: annotation file not found"),
        (["eval", "--model", str(f / "not_a_model"), "--annotations", str(f / "good.jsonl"), "--out", str(f / "e")], 2,
         "not_a_model: not a model", "pass a model folder (holding config.json), a training run folder"),
        (["eval", "--model", str(f / "a_file"), "--annotations", str(f / "good.jsonl"), "--out", str(f / "e")], 2,
         "a_file: is a file, not a model"),
        ([*ev[:-1], str(other), "--annotations", str(f / "good.jsonl"), "--videos", str(f)], 2,
         "its answers were made differently (model: 'sha256:0123456789abcdef' -> 'sha256:", "--overwrite"),
        (["predict", "--model", model, str(f / "missing.mp4"), "when?"], 2, "missing.mp4"),
        (["predict", "--model", model, str(f / "v0.mp4"), "  "], 2, "query: empty"),
        (["plot", str(f / "nowhere")], 2, "nowhere: no such folder"),
        (["plot", str(f / "not_a_model")], 2, "metrics.jsonl: not found"),
        (["plot", str(f / "run_empty")], 2, "metrics.jsonl: holds no logged step yet (empty)"),
        (["data", "check", "--annotations", str(f / "latin1.jsonl")], 2, "latin1.jsonl:2: not UTF-8 text"),
        (["data", "synth", "--out", str(f / "synth_used"), "--n", "5"], 2, "synth_used: holds files data synth did not write"),
    ]
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder cannot be made here
        ro = f / "read_only"
        ro.mkdir()
        ro.chmod(0o555)
        table.append(([*ev[:-1], str(ro / "eval"), "--annotations", str(f / "good.jsonl")], 2, "cannot create"))
    results = run_cases([argv for argv, *_ in table] + [["train", "tiny_cpu", "learning_rate=abc", "--debug"]], f)
    for result, (_, code, *needles) in zip(results, table):
        check(result, code, *needles)
    debug = results[-1]  # --debug: the same error with its traceback
    assert debug["code"] == "raised" and "Traceback" in debug["err"] and "learning_rate: 'abc' is not a number" in debug["err"]
    assert (f / "synth_used" / "notes.txt").exists()


@pytest.mark.slow
def test_bad_input_with_the_model(files, tiny_small_vocab_model_dir):
    """The tiny model loads in these: a query beyond the context, an unusable frame cache (a warning,
    not an error), a training run folder as --model (its newest intact checkpoint and settings),
    --resume without a checkpoint."""
    f, model = files, tiny_small_vocab_model_dir
    run = f / "a_run"  # a training run as `tempsamp train` leaves it: checkpoints with state.json
    for step in (1, 2):
        shutil.copytree(model, run / f"checkpoint-{step}" / "model")
        config = {"max_new_tokens": 3, "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 16, "fps": 2.0}
        (run / f"checkpoint-{step}" / "state.json").write_text(json.dumps({"step": step, "config": config}))
    (run / "checkpoint-2" / "model" / "model.safetensors").write_bytes(b"\x08")  # damaged newest
    shutil.copytree(model, run / "final-model")  # the run's export: its settings come from the run's config.yaml
    (run / "config.yaml").write_text("max_new_tokens: 3\nmin_pixels: 3136\nmax_pixels: 3136\n")
    video = str(f / "v0.mp4")
    small = ["--min-pixels", "3136", "--max-pixels", "3136", "--total-pixels", str(3136 * 16)]
    cases = [
        ["predict", "--model", str(model), video, "1" * 33000, *small, "--max-new-tokens", "2"],
        ["predict", "--model", str(model), video, "when?", *small, "--max-new-tokens", "2", "--frame-cache", str(f / "a_file")],
        ["predict", "--model", str(run), video, "when?", "--max-new-tokens", "2"],
        ["predict", "--model", str(run / "final-model"), video, "when?", "--total-pixels", str(3136 * 16)],
        ["train", "tiny_cpu", f"model={model}", f"train_annotations={f / 'good.jsonl'}", "dataset=jsonl",
         f"output_dir={f / 'fresh'}", "--resume"],
    ]
    long_query, cache, from_run, final, resume = run_cases(cases, f)
    check(long_query, 2, "the prompt is", "more than the model's context of 32768 tokens", "shorten the query")
    check(cache, 0)
    assert f"warning: frame cache {f / 'a_file'}: cannot write" in cache["err"] and "span: " in cache["out"]
    check(from_run, 0)
    assert f"skipping damaged checkpoint-2: {run / 'checkpoint-2' / 'model' / 'model.safetensors'}: truncated" in from_run["err"]
    assert "model: checkpoint-1, the newest intact checkpoint of the run" in from_run["err"]
    assert f"settings from the trained run: fps=2.0, min_pixels=3136, max_pixels=3136, total_pixels={3136 * 16}\n" in from_run["err"]
    assert "warning: --max-new-tokens 2 differs from the model's training (3)" in from_run["err"]
    check(final, 0)
    assert "settings from the trained run: min_pixels=3136, max_pixels=3136, max_new_tokens=3" in final["err"]
    check(resume, 2, f"--resume: no intact checkpoint in {f / 'fresh'}", "--allow-fresh")


@pytest.mark.slow
def test_no_traceback_and_no_silent_result(files, tiny_small_vocab_model_dir, tmp_path):
    """Each was a traceback or a misleading exit 0: now one line naming what is wrong, non-zero."""
    f, model = files, tiny_small_vocab_model_dir
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    good = {"video": "v0.mp4", "duration": 6.0, "query": "when is the red square visible?", "spans": [[1.0, 3.0]]}
    (tmp_path / "v0.mp4").symlink_to(f / "v0.mp4")
    (tmp_path / "dups.jsonl").write_text("".join(json.dumps(dict(good, qid=q)) + "\n" for q in ("a", "dup", "dup")))
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (tmp_path / "unreadable.jsonl").write_text("".join(json.dumps(dict(good, video=v)) + "\n"
                                                       for v in ("corrupt.mp4", "missing.mp4")))
    (tmp_path / "grounding_preds.jsonl").write_text(json.dumps({"qid": 7, "pred_span": [1.0, 3.0]}) + "\n")
    (tmp_path / "qvh_gt.jsonl").write_text(json.dumps({"qid": 7, "query": "q", "vid": "v", "duration": 150,
                                                       "relevant_windows": [[0, 10]], "relevant_clip_ids": [0, 1, 2, 3, 4],
                                                       "saliency_scores": [[1, 2, 1]] * 5}) + "\n")
    small = ["--min-pixels", "3136", "--max-pixels", "3136", "--total-pixels", str(3136 * 16), "--max-new-tokens", "2"]
    ev = ["eval", "--model", str(model), "--dataset", "jsonl", *small]
    table = [
        (["predict", "--model", str(damaged), str(f / "v0.mp4"), "when?"], 2,
         f"--model {damaged}: model.safetensors is damaged: truncated"),
        (["eval", "--model", str(damaged), "--annotations", str(f / "good.jsonl"), "--out", str(tmp_path / "e0")], 2,
         f"--model {damaged}: model.safetensors is damaged: truncated"),
        (["train", "tiny_cpu", "model=/nonexistent/model"], 2, "model=/nonexistent/model: no such folder"),
        ([*ev, "--annotations", str(tmp_path), "--out", str(tmp_path / "e1")], 2, f"{tmp_path}: is a folder, not an annotation file"),
        (["score", "grounding", "--pred", str(tmp_path), "--gt", str(f / "good.jsonl")], 2, "is a folder, not a JSONL file"),
        (["score", "qvhighlights", "--pred", str(tmp_path / "grounding_preds.jsonl"), "--gt", str(tmp_path / "qvh_gt.jsonl")], 2,
         "grounding_preds.jsonl:1: no line has pred_relevant_windows or pred_saliency_scores",
         "score them with `tempsamp score grounding`"),
        ([*ev, "--annotations", str(tmp_path / "dups.jsonl"), "--out", str(tmp_path / "e2")], 2,
         "dups.jsonl:3: qid 'dup' is used twice (first at dups.jsonl:2)"),
        ([*ev, "--annotations", str(tmp_path / "unreadable.jsonl"), "--out", str(tmp_path / "e3")], 2,
         "none of the 2 videos could be read, so nothing was evaluated", "check --videos"),
    ]
    results = run_cases([argv for argv, *_ in table], tmp_path)
    for result, (_, code, *needles) in zip(results, table):
        check(result, code, *needles)
    assert not (tmp_path / "e2").exists()  # refused before anything was written
    report = (tmp_path / "e3" / "report.md").read_text()
    assert "could not be read" in report  # the list is kept
    assert 'The video is {duration} seconds long. Find the moment that matches the query: "{query}"' in report
    assert "0.0 seconds" not in report


@pytest.mark.slow
def test_a_refusal_under_torchrun_is_one_line(files):
    """`--num-processes 2`: every trainer refuses the missing file; the launcher prints it once, no torchrun traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOGLEVEL"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "tempsamp", "train", "tiny_cpu", "train_annotations=missing.jsonl",
                           "dataset=jsonl", f"output_dir={files / 'torchrun'}", "--num-processes", "2"],
                          cwd=files, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout and "ChildFailedError" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "tempsamp train: error: missing.jsonl: annotation file not found (--debug shows the traceback)"]
    assert not (files / "torchrun").exists()  # the folder the launcher made for the run is gone again


def test_data_synth_removes_an_earlier_larger_benchmark(tmp_path):
    from tempsamp.data.synth import synthesize

    out = tmp_path / "synth"
    synthesize(out, 6, 0)
    assert len(list((out / "videos").iterdir())) == 6
    synthesize(out, 5, 0)  # a smaller one into the same folder: no stale video from the first stays
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"synth0000{i}.mp4" for i in range(5)]
    listed = {json.loads(x)["video"] for name in ("train", "val", "test") for x in (out / f"{name}.jsonl").read_text().splitlines()}
    assert listed == {f"videos/synth0000{i}.mp4" for i in range(5)}


def test_plot_one_quantity_per_axis_points_stages_and_integer_steps(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempsamp.train.plot import plot_run

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss/value": 0.1 * s, "lr": 1e-4, "loss/kl": 1e-4 * s, "policy/entropy": 11.9,
             "loss/clip_fraction": 0.0, "reward/raw": 0.2, "reward/offpolicy": 0.9} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text("stages:\n- {mode: answer, steps: 2}\n- {mode: cot, steps: 2}\n")
    figures = {}
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.setdefault(fig.axes[0].get_title(), fig) and None)
    names = {p.name for p in plot_run(run)}
    assert {"loss.png", "lr.png", "policy.png", "reward.png"} <= names
    policy = figures["Policy drift, clipping and entropy"]  # human titles, y labels and legends, no internal keys
    curves = [[line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] for ax in policy.axes]
    assert curves == [["on-policy rows"], ["clipped tokens"], ["entropy"]]  # the stage line is unlabelled
    assert [ax.get_ylabel() for ax in policy.axes] == ["KL to the reference", "fraction of tokens", "entropy (nats/token)"]
    assert all(ax.get_ylabel() and "/" not in ax.get_title() for fig in figures.values() for ax in fig.axes)
    reward = figures["Reward"].axes[0]
    curves = [line for line in reward.get_lines() if not line.get_label().startswith("_")]
    assert len(curves) == 2 and all(line.get_marker() == "o" for line in curves)  # a one-step run still shows a point
    assert [line.get_xdata()[0] for line in reward.lines if line.get_linestyle() == "--"] == [2.5]  # the answer -> cot change
    assert all(float(t).is_integer() for t in reward.get_xticks())
    for fig in figures.values():
        real_close(fig)
    (run / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # one step: still a picture
    assert plot_run(run)
