"""Checkpoints that survive a kill: safetensors and JSON only, written atomically, last K kept.

Layout of ``OUTPUT_DIR/checkpoint-STEP/``:
    model/            save_pretrained output (safetensors + config + processor): loads with
                      transformers ``from_pretrained`` (for LoRA runs: the peft adapter)
    optimizer.safetensors, optimizer.json   AdamW state tensors and param groups (one process / DDP)
    fsdp/             FSDP runs: model and optimizer shards (torch.distributed.checkpoint)
    deepspeed/        ZeRO runs: DeepSpeed's own model and optimizer partitions
    rng.safetensors   torch CPU (and CUDA) generator states; rng-rankR.safetensors for rank R > 0
    state.json        step, data position, numpy/python RNG states, config, counters, world size
A finished run also exports ``OUTPUT_DIR/final-model/``: a plain transformers checkpoint (LoRA merged).
A checkpoint is written to ``.checkpoint-STEP.tmp`` and renamed into place, so a directory named
``checkpoint-*`` is always complete; leftover ``.tmp`` directories from a crash are ignored and removed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tempsamp.errors import RunStopped


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            tensors[f"{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | Path, on_damaged=None) -> Path | None:
    """The newest intact checkpoint (``verify_checkpoint``); damaged newer ones are passed over.

    ``on_damaged(message)`` is told about each one passed over, naming the damaged file.
    """
    for path in reversed(checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        if on_damaged is not None:
            on_damaged(f"skipping damaged {path.name}: {problem}")
    return None


def verify_checkpoint(path: str | Path) -> str | None:
    """None when every file of the checkpoint reads back whole, else what is wrong with which file.

    Cheap (no tensor is loaded): each JSON file parses; each safetensors file has a readable header
    whose tensors end exactly at the end of the file (a truncated or padded file does not); the
    model folder holds weights. Files of other kinds (e.g. sharded optimizer state) are not opened.
    """
    path = Path(path)
    model_dir = path / "model"
    if not model_dir.is_dir() or not any(model_dir.glob("*.safetensors")):
        return f"{model_dir}: no model weights (*.safetensors)"
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix == ".safetensors":
                problem = _safetensors_problem(file)
                if problem:
                    return f"{file}: {problem}"
        except (OSError, ValueError) as err:
            return f"{file}: unreadable ({type(err).__name__}: {err})"
    return None


def damaged_weights(model_dir: str | Path) -> str | None:
    """None when every ``*.safetensors`` in a model folder reads back whole, else which file and what is wrong."""
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            problem = _safetensors_problem(file)
        except (OSError, ValueError) as err:
            problem = f"unreadable ({type(err).__name__}: {err})"
        if problem:
            return f"{file.name} is damaged: {problem}"
    return None


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, no header)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"truncated (header of {n} bytes, file of {size})"
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"truncated ({size} bytes, its header needs {expected})" if size < expected else f"{size - expected} bytes too many"
    return None


class CheckpointWriteFailed(RunStopped):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is untouched.

    A stop (exit 1, one line), not a crash: the work up to the previous checkpoint is safe."""


def _is_disk_full(err: BaseException) -> bool:
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)  # safetensors reports the OS error inside its own exception's text
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


def _writing(tmp: Path, step: int):
    """Turn a failed write of checkpoint-STEP into one line: what failed, which checkpoint is still intact.

    The half-written temporary folder is removed, so the space it took is free again and
    ``--resume`` finds the previous checkpoint as it was.
    """
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except Exception as err:
            from safetensors import SafetensorError

            if not isinstance(err, (OSError, SafetensorError)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            root = Path(tmp).parent
            kept = [p for p in checkpoints(root) if int(p.name.split("-")[1]) != step]
            previous = (f"{kept[-1].name} is intact" if kept else "no earlier checkpoint exists")
            cause = "the disk is full" if _is_disk_full(err) else f"{type(err).__name__}: {' '.join(str(err).split())}"
            raise CheckpointWriteFailed(f"checkpoint-{step} could not be written to {root} ({cause}); {previous} and "
                                        f"the partial checkpoint-{step} was removed; free space, then continue with "
                                        "--resume") from err

    return guard()


def save_checkpoint(output_dir, step: int, model, processor, optimizer, state: dict, keep_last: int = 2,
                    model_state: dict | None = None) -> Path:
    """Write checkpoint-STEP atomically and prune all but the newest ``keep_last`` (one process).

    model_state: the full weights when ``model``'s own are sharded; optimizer None: no optimizer
    state here (a sharded run keeps it in the checkpoint's ``fsdp/`` or ``deepspeed/`` folder).
    Several processes write one checkpoint in three steps: ``begin_checkpoint`` (main), each
    process's shards and ``save_rng``, then ``commit_checkpoint`` (main).
    """
    tmp = begin_checkpoint(output_dir, step)
    save_rng(tmp, rank=0)
    return commit_checkpoint(tmp, step, model, processor, optimizer, state, keep_last, model_state=model_state)


def begin_checkpoint(output_dir, step: int) -> Path:
    """The temporary folder checkpoint-STEP is written into (leftovers of a crash removed)."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".checkpoint-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".checkpoint-{step}.tmp"
    tmp.mkdir()
    return tmp


def save_rng(folder: Path, rank: int) -> None:
    """This process's torch (and CUDA) generator states: rng.safetensors, rng-rank{R} beyond rank 0."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    with _writing(Path(folder), _step_of(folder)):
        save_file(rng, str(Path(folder) / _rng_name(rank)))


def _step_of(tmp) -> int:
    return int(Path(tmp).name.removeprefix(".checkpoint-").removesuffix(".tmp"))


def _rng_name(rank: int) -> str:
    return "rng.safetensors" if rank == 0 else f"rng-rank{rank}.safetensors"


def commit_checkpoint(tmp: Path, step: int, model, processor, optimizer, state: dict, keep_last: int = 2,
                      model_state: dict | None = None) -> Path:
    """Write the model, optimizer and state into ``tmp``, then rename it to checkpoint-STEP (main process)."""
    root = tmp.parent
    final = root / f"checkpoint-{step}"
    with _writing(tmp, step):
        if model_state is None:
            model.save_pretrained(tmp / "model", safe_serialization=True)
        else:
            model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=model_state)
        if processor is not None:
            processor.save_pretrained(tmp / "model")
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta))
        full_state = dict(state, step=step, python_random=_py_random_state(), numpy_random=_np_random_state())
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
        _fsync_tree(tmp)
    if final.exists():  # the same step written again (a resumed run): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def export_model(folder, policy, processor, model_state: dict | None = None) -> Path:
    """A plain transformers checkpoint of the trained policy: ``from_pretrained`` loads it.

    LoRA: the adapters are merged into the base weights (W + B A x alpha / r), so the export needs
    neither peft nor the base model. ``model_state``: the full weights, when the policy's own are
    sharded (FSDP / ZeRO-3); written through a temporary folder and renamed, like a checkpoint.
    """
    folder = Path(folder)
    state = model_state if model_state is not None else {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    base = policy
    if hasattr(policy, "peft_config"):
        state = merge_lora_state(state, policy.peft_config["default"])
        base = policy.get_base_model()
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base.save_pretrained(tmp, safe_serialization=True, state_dict=state)
    if processor is not None:
        processor.save_pretrained(tmp)
    _fsync_tree(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def merge_lora_state(state: dict, lora_config) -> dict:
    """A peft model's state dict -> the base model's, each adapted weight merged: W + (B @ A) x scale."""
    import math

    scale = lora_config.lora_alpha / (math.sqrt(lora_config.r) if lora_config.use_rslora else lora_config.r)
    prefix = "base_model.model."
    merged = {}
    for name, tensor in state.items():
        if ".lora_" in name or "modules_to_save" in name:
            continue
        key = name[len(prefix):] if name.startswith(prefix) else name
        if ".base_layer." in name:
            stem = name.split(".base_layer.")[0]
            a, b = state.get(f"{stem}.lora_A.default.weight"), state.get(f"{stem}.lora_B.default.weight")
            if a is not None and b is not None and name.endswith(".base_layer.weight"):
                tensor = (tensor.float() + (b.float() @ a.float()) * scale).to(tensor.dtype)
            key = key.replace(".base_layer.", ".")
        merged[key] = tensor
    return merged


def load_model_weights(model, model_dir: str | Path) -> None:
    """Load a checkpoint's saved weights into ``model`` in place (full model, or a peft adapter)."""
    model_dir = Path(model_dir)
    adapter = model_dir / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(adapter)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{adapter}: unexpected adapter keys {result.unexpected_keys[:5]}")
        return
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    if not state:
        raise FileNotFoundError(f"{model_dir}: no safetensors weights")
    state = _to_module_names(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir}: weights do not match the model (missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]})")


def _to_module_names(model, state: dict) -> dict:
    """Saved names -> the model's own parameter names.

    transformers 5 saves some families under their original checkpoint names (Qwen2.5-VL:
    ``visual.*``, ``model.layers.*``) while the module holds ``model.visual.*``,
    ``model.language_model.layers.*``; ``from_pretrained`` renames on load. The inverse of that
    renaming is read off transformers' own save-time mapping, one parameter at a time.
    """
    own = model.state_dict()
    if set(state) <= set(own):
        return state
    from transformers.core_model_loading import revert_weight_conversion

    saved_to_own = {}
    for name, tensor in own.items():
        reverted = revert_weight_conversion(model, {name: tensor})
        if len(reverted) == 1:
            saved_to_own[next(iter(reverted))] = name
    return {saved_to_own.get(name, name): tensor for name, tensor in state.items()}


def load_checkpoint(path, model_param_loader, optimizer, rank: int = 0) -> dict:
    """Restore optimizer and RNG states; ``model_param_loader(model_dir)`` restores the weights.

    model_param_loader / optimizer None: restored elsewhere (a sharded run loads both from its
    shards). Each process restores its own RNG state (rank 0's where the run had fewer processes).
    """
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is damaged: {problem}")
    if model_param_loader is not None:
        model_param_loader(path / "model")
    if optimizer is not None:
        meta = json.loads((path / "optimizer.json").read_text())
        _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), meta)
    rng_file = path / _rng_name(rank)
    rng = load_file(str(rng_file if rng_file.exists() else path / _rng_name(0)))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if states:
            torch.cuda.set_rng_state_all(states)
    state = json.loads((path / "state.json").read_text())
    random.setstate(_tuplify(state["python_random"]))
    np.random.set_state(tuple(state["numpy_random"]))
    return state


def _py_random_state():
    return random.getstate()


def _np_random_state():
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
