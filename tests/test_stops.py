"""Training stops never lose work and fail loudly: pre-flight video check, checkpoint at
--max-steps, SIGTERM then --resume, a damaged newest checkpoint, --resume without a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tempsamp.errors import UserError
from tempsamp.train import loop
from tempsamp.train.checkpoint import checkpoints, latest_checkpoint, verify_checkpoint
from tempsamp.train.config import load_config
from tempsamp.train.logger import read_metrics
from video_files import write_video

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stops")
    rows = []
    for i, span in enumerate([(2.0, 5.0), (4.0, 7.5)]):
        write_video(root / f"v{i}.mp4", 8.0, span)
        rows.append({"video": f"v{i}.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [list(span)]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    bad = [dict(rows[0], video="missing.mp4"), dict(rows[0], video="corrupt.mp4")]
    (root / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    return root


def overrides(model_dir, data, out, **extra):
    values = {"model": str(model_dir), "train_annotations": str(data / "train.jsonl"), "dataset": "jsonl",
              "output_dir": str(out), "num_generations": 2, "max_new_tokens": 4, "queries_per_step": 1,
              "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 32, "beta": 0.0,
              "stages": [{"mode": "answer", "steps": 3}], "save_every": 100, "frame_cache": None, **extra}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def test_unreadable_videos_stop_before_step_zero_with_the_list(tiny_small_vocab_model_dir, data, tmp_path, capsys):
    cfg = load_config("tiny_cpu", overrides(tiny_small_vocab_model_dir, data, tmp_path / "run",
                                            train_annotations=str(data / "bad.jsonl")))
    with pytest.raises(UserError, match=r"none of the 2 training videos checked can be read .*corrupt.mp4: cannot be decoded"):
        loop.train(cfg)
    assert "missing.mp4: not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written, not even an untouched "checkpoint"
    with pytest.raises(UserError, match="videos=/nonexistent: no such folder"):
        loop.train(load_config("tiny_cpu", overrides(tiny_small_vocab_model_dir, data, tmp_path / "run", videos="/nonexistent")))


def test_max_steps_saves_and_a_damaged_newest_checkpoint_is_passed_over(tiny_small_vocab_model_dir, data, tmp_path, capsys):
    args = overrides(tiny_small_vocab_model_dir, data, tmp_path / "run", keep_last=3)
    cfg = load_config("tiny_cpu", args)
    with pytest.raises(UserError, match=r"--resume: no intact checkpoint in .*run; .*--allow-fresh"):
        loop.train(cfg, resume=True, require_checkpoint=True)
    out = loop.train(cfg, max_steps=1)
    assert [p.name for p in checkpoints(out)] == ["checkpoint-1"]  # --max-steps 1 leaves a checkpoint
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "train: 1 of 3 steps done: 1 applied, 0 skipped (no usable video 0, non-finite loss or gradient 0); faults: ")
    loop.train(cfg, resume=True, max_steps=2)
    assert [p.name for p in checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]  # step 2 kept, not thrown away
    weights = out / "checkpoint-2" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    assert "checkpoint-2/model/model.safetensors: truncated" in verify_checkpoint(out / "checkpoint-2")
    loop.train(cfg, resume=True, require_checkpoint=True)
    printed = capsys.readouterr().out
    assert f"skipping damaged checkpoint-2: {weights}: truncated" in printed
    assert f"resumed from {out / 'checkpoint-1'} at step 1" in printed
    assert latest_checkpoint(out).name == "checkpoint-3"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_sigterm_finishes_the_step_checkpoints_and_resume_continues(tiny_small_vocab_model_dir, data, tmp_path):
    out = tmp_path / "run"
    args = overrides(tiny_small_vocab_model_dir, data, out, stages=[{"mode": "answer", "steps": 40}])
    cmd = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Traceback" not in stderr and "SIGTERM: finishing this step" in stderr
    (kept,) = checkpoints(out)
    step = int(kept.name.split("-")[1])
    assert 0 < step < 40 and [r["step"] for r in read_metrics(out)] == list(range(1, step + 1))
    assert f"stopped by SIGTERM after step {step} of 40" in stdout
    assert stderr.strip().splitlines()[-1].startswith(f"tempsamp train: train: {step} of 40 steps done: {step} applied")
    assert "continue with --resume" in stderr
    resumed = subprocess.run([*cmd, "--resume", "--max-steps", str(step + 1)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {kept} at step {step}" in resumed.stdout
    assert (out / f"checkpoint-{step + 1}").is_dir()


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_says_so(tiny_small_vocab_model_dir, data, tmp_path, capsys,
                                                                      monkeypatch):
    """Through the CLI: the write of checkpoint-2 fails with ENOSPC (the optimizer file, as on a full disk)."""
    import errno

    from tempsamp.cli import main
    from tempsamp.train import checkpoint

    real = checkpoint.save_file

    def save_file(tensors, path, *args, **kwargs):
        if ".checkpoint-2.tmp" in str(path) and path.endswith("optimizer.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    out = tmp_path / "run"
    code = main(["train", "tiny_cpu", *overrides(tiny_small_vocab_model_dir, data, out, save_every=1)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"tempsamp train: checkpoint-2 could not be written to {out} (the disk is full); checkpoint-1 is intact and the "
        "partial checkpoint-2 was removed; free space, then continue with --resume")
    assert [p.name for p in checkpoints(out)] == ["checkpoint-1"] and verify_checkpoint(out / "checkpoint-1") is None
    assert not list(out.glob(".checkpoint-*")) and not (out / ".tempsamp.lock").exists()
    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed: the run continues from checkpoint-1
    assert main(["train", "tiny_cpu", *overrides(tiny_small_vocab_model_dir, data, out, save_every=1), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out and latest_checkpoint(out).name == "checkpoint-3"
