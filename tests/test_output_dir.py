"""One run per output_dir, through `python -m tempsamp train`: a folder that holds a run is refused
unless --resume or --overwrite, a second writer is refused naming the holder, a stale lock is taken
over with a note, and nothing is appended to a finished run's metrics."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from video_files import write_video

REPO = Path(__file__).resolve().parents[1]


def tempsamp(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "TEMPSAMP_OUTPUT_DIR_LOCKED"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "tempsamp", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def one_line_error(done, *needles):
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_run")
    write_video(root / "v0.mp4", 8.0, (2.0, 5.0))
    row = {"video": "v0.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [[2.0, 5.0]]}
    (root / "train.jsonl").write_text(json.dumps(row) + "\n")
    return root


def overrides(model_dir, data, out):
    values = {"model": str(model_dir), "train_annotations": str(data / "train.jsonl"), "dataset": "jsonl",
              "output_dir": str(out), "num_generations": 2, "max_new_tokens": 4, "queries_per_step": 1,
              "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 32, "beta": 0.0,
              "stages": [{"mode": "answer", "steps": 1}], "frame_cache": None}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def test_a_folder_holding_a_run_is_refused_and_a_lock_names_its_holder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "state.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    done = tempsamp("train", "tiny_cpu", f"output_dir={run}", "--max-steps", "1")
    one_line_error(done, f"output_dir {run} already holds a training run (checkpoint-2, metrics.jsonl)", "--resume",
                   "--overwrite")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    one_line_error(tempsamp("train", "tiny_cpu", f"output_dir={run}", "--resume", "--overwrite"), "contradict")

    # a live writer holds the lock: refused with its PID and host, before anything is read
    busy = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tempsamp.train import runlock; "
                               f"runlock.acquire({str(busy)!r}); print('held', flush=True); time.sleep(300)"],
                              env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = tempsamp("train", "tiny_cpu", f"output_dir={busy}", "train_annotations=missing.jsonl")
        one_line_error(done, f"output_dir {busy} is in use by another training run (PID {holder.pid} on host "
                             f"{socket.gethostname()}, since ")
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone (killed, the file left behind): taken over, with a note
    assert json.loads((busy / ".tempsamp.lock").read_text())["pid"] == holder.pid
    done = tempsamp("train", "tiny_cpu", f"output_dir={busy}", "train_annotations=missing.jsonl", "dataset=jsonl")
    assert f"note: taking over the stale lock of {busy} (PID {holder.pid} on host {socket.gethostname()}" in done.stderr
    one_line_error(done, "missing.jsonl: annotation file not found")
    assert not (busy / ".tempsamp.lock").exists()  # released at the end, whatever the end


@pytest.mark.slow
def test_rerunning_a_finished_run_is_refused_overwrite_replaces_it_resume_appends_nothing(tiny_small_vocab_model_dir,
                                                                                          data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "tiny_cpu", *overrides(tiny_small_vocab_model_dir, data, out)]
    first = tempsamp(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "config.yaml", "events.jsonl", "final-model", "layout.json",
                                                     "metrics.jsonl", "queries.jsonl", "selection.json", "speed.json",
                                                     "tensorboard"]  # no lock left
    metrics = (out / "metrics.jsonl").read_text()
    (out / "eval").mkdir()  # not the run's: kept by --overwrite
    one_line_error(tempsamp(*args), f"output_dir {out} already holds a training run", "--resume", "--overwrite")
    assert (out / "metrics.jsonl").read_text() == metrics

    resumed = tempsamp(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "metrics.jsonl").read_text() == metrics  # a finished run: nothing appended

    again = tempsamp(*args, "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"--overwrite: removed the previous run in {out} (checkpoint-1, config.yaml, events.jsonl, final-model" in again.stderr
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "eval").is_dir() and (out / "checkpoint-1" / "state.json").exists()
