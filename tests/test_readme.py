"""The README's commands work as written: the Training quick-start block, run line by line in an empty
folder with `tempsamp` on the PATH the way the README's Quick start puts it there (the venv's bin)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of a README section (from its "## " heading to the next)."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def test_the_readme_says_how_tempsamp_gets_on_the_path():
    (setup,) = [b for b in bash_blocks("Quick start") if "activate" in b]
    assert "make" in setup.split() and "source .venv/bin/activate" in setup
    assert (Path(sys.executable).parent / "tempsamp").exists()  # what activation puts on the PATH


@pytest.mark.slow
def test_the_training_quick_start_runs_as_written(tmp_path):
    block = bash_blocks("Training")[0]
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    assert [c.split()[:2] for c in commands] == [["tempsamp", "data"], ["tempsamp", "train"], ["ls", "runs/tiny_cpu"],
                                                ["tempsamp", "eval"], ["tempsamp", "plot"]]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # = source .venv/bin/activate
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stderr[-3000:])
        outputs.append(done.stdout)
    listed = set(outputs[2].split())
    assert {"checkpoint-2", "final-model", "metrics.jsonl", "events.jsonl", "speed.json", "layout.json"} <= listed
    assert "train: 2 of 6 steps done" in outputs[1]
    assert (tmp_path / "runs/tiny_cpu/eval/report.md").exists() and (tmp_path / "runs/tiny_cpu/plots/reward.png").exists()
    assert not (tmp_path / "runs/tiny_cpu/.tempsamp.lock").exists()
