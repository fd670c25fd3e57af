"""How the trainer runs on 1..N processes: one config key, ``distributed``, and the engine behind it.

    distributed: ddp | fsdp | zero2 | zero3 | zero3_offload

- ``ddp``: PyTorch DistributedDataParallel (on one process, the plain model).
- ``fsdp``: PyTorch FSDP2 (``fully_shard``) on every block the model family lists as unsplittable
  (Qwen2.5-VL: each decoder layer and each vision block), then on the root.
- ``zero2`` / ``zero3`` / ``zero3_offload``: DeepSpeed ZeRO (optimizer state and gradients sharded;
  ZeRO-3 also the weights; ``_offload`` keeps weights and optimizer state in CPU memory).

``tempsamp train RECIPE distributed=fsdp --num-processes N`` starts N processes with torchrun, on
GPUs (NCCL) and on a CPU (gloo) alike; several nodes: ``torchrun --nnodes ... -m tempsamp train``.

Why FSDP2 and DeepSpeed are driven here directly (as torchtune and verl do) rather than through
accelerate: accelerate 1.15 enables FSDP and DeepSpeed only on GPU-like devices, so on a CPU its
launcher silently ran one process, N independent processes, or plain DDP
(docs/scaling.md). Driven directly, the code the CPU tests run is the code a GPU run runs.

The loop talks to a ``Parallel`` only: ``prepare`` (wrap model and optimizer), ``micro_batch`` /
``backward`` / ``step`` (gradient accumulation over a process's groups, one optimizer step),
collectives on plain numbers and objects, and ``save`` / ``load`` of the sharded state.

Watchdog: every collective waits at most ``collective_timeout_s`` (the process group's timeout).
Each process writes a heartbeat (its step and phase) to the launcher's key-value store at every
phase of a step; a process whose collective times out (or whose peer vanished) reads them and ends
the run with one line naming the step, the processes that waited and those they waited for
(``collective_failure``), instead of hanging or printing a gloo/NCCL trace.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

MODES = ("ddp", "fsdp", "zero2", "zero3", "zero3_offload")
ZERO_STAGE = {"zero2": 2, "zero3": 3, "zero3_offload": 3}
# the phases of a training step, in order, as the heartbeats report them
PHASES = ("data", "rollout", "update", "log", "checkpoint")
_HEARTBEAT = "tempsamp/heartbeat/"
_active = None  # the Parallel of this process (collective_failure reads its heartbeats)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Parallel:
    """One process's view of the run: its rank, device, and the engine that shards the model."""

    def __init__(self, mode: str = "ddp", *, bf16: bool = False, timeout_s: float = 1800.0):
        if mode not in MODES:
            raise ValueError(f"distributed: {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.bf16 = bf16  # GPU mixed precision: bf16 compute, float32 master weights and reductions
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.backend = "nccl" if cuda else "gloo"
        if mode in ZERO_STAGE:
            os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
        # Sharding needs a process group even on one process (FSDP over 1 rank, ZeRO on 1 GPU).
        if (self.world > 1 or mode != "ddp") and not dist.is_initialized():
            for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            dist.init_process_group(self.backend, device_id=self.device if cuda else None, timeout=timedelta(seconds=timeout_s))
        self.timeout_s = timeout_s
        self.model = self.optimizer = self.engine = None
        self.current_step = None  # the step in progress (0-based), for the watchdog's line
        global _active
        _active = self

    # ------------------------------------------------------------------ who and where

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_initialized()

    @property
    def zero(self) -> bool:
        return self.mode in ZERO_STAGE

    def print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()

    @property
    def sharded_weights(self) -> bool:
        """Whether every forward is a collective (FSDP2, ZeRO-3 over several processes): then every
        process must run the same number of forwards, in generation and in the update alike."""
        return self.world > 1 and self.mode in ("fsdp", "zero3", "zero3_offload")

    # ------------------------------------------------------------------ watchdog

    def heartbeat(self, step: int, phase: str) -> None:
        """Record where this process is (a store write: no collective, nothing to wait for)."""
        self.current_step = step
        if self.world > 1 and self.distributed:
            beat = {"step": step, "phase": phase, "time": time.time()}
            dist.distributed_c10d._get_default_store().set(f"{_HEARTBEAT}{self.rank}", json.dumps(beat))

    def heartbeats(self) -> dict[int, dict]:
        """Every process's last heartbeat (those that wrote one)."""
        store = dist.distributed_c10d._get_default_store()
        beats = {}
        for rank in range(self.world):
            key = f"{_HEARTBEAT}{rank}"
            if store.check([key]):
                beats[rank] = json.loads(store.get(key))
        return beats

    # ------------------------------------------------------------------ collectives on plain values

    def sum(self, value: float) -> float:
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def gather_object(self, obj) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------ wrapping

    def prepare(self, model, make_optimizer, *, max_grad_norm: float):
        """Wrap ``model`` for this mode; ``make_optimizer(params)`` builds the torch optimizer.

        Returns the model to call forward on. ``self.policy`` is the model to generate with, to save
        and to read weights from (the peft or transformers model, not a wrapper).
        """
        self.max_grad_norm = max_grad_norm
        model.to(self.device)
        if self.mode == "fsdp":
            self._fully_shard(model, mixed=self.bf16)
            self.model = self.policy = model
            self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        elif self.zero:
            import deepspeed

            config = self.deepspeed_config(max_grad_norm)
            trainable = [p for p in model.parameters() if p.requires_grad]
            if self.mode == "zero3_offload":
                # ZeRO-Offload steps on the CPU with DeepSpeed's own Adam (a torch optimizer is refused).
                probe = make_optimizer([torch.nn.Parameter(torch.zeros(1))])
                group = probe.param_groups[0]
                config["optimizer"] = {"type": "AdamW", "params": {"lr": group["lr"], "betas": list(group["betas"]),
                                                                   "eps": group["eps"], "weight_decay": group["weight_decay"]}}
                self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
            else:
                self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(trainable), config=config)
            self.model, self.policy = self.engine, self.engine.module
        else:
            self.policy = model
            self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
            if self.world > 1:
                from torch.nn.parallel import DistributedDataParallel

                model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.model = model
        return self.model

    def prepare_reference(self, ref_model):
        """The frozen reference of full fine-tuning, sharded like the policy (a plain copy under DDP / ZeRO-2).

        Built from a copy taken *before* the policy was sharded: ``copy.deepcopy`` of a ZeRO-3
        model gives empty parameters. On a GPU its weights are bf16 (it is never updated).
        """
        ref_model.eval().requires_grad_(False)
        if self.device.type == "cuda" and self.bf16:
            ref_model.to(torch.bfloat16)
        ref_model.to(self.device)
        if self.mode == "fsdp":
            self._fully_shard(ref_model, mixed=False)
        elif self.mode in ("zero3", "zero3_offload"):
            import deepspeed

            config = self.deepspeed_config(0.0)
            config["zero_optimization"].pop("offload_optimizer", None)
            engine, *_ = deepspeed.initialize(model=ref_model, config=config)
            engine.eval()
            return engine.module
        return ref_model

    def _fully_shard(self, model, *, mixed: bool) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mesh = dist.device_mesh.init_device_mesh(self.device.type, (self.world,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else MixedPrecisionPolicy()
        blocks = set(getattr(_transformers_model(model), "_no_split_modules", None) or [])
        if not blocks:
            raise ValueError(f"fsdp: {type(model).__name__} lists no _no_split_modules to shard by")
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        # generate() reaches the embeddings and the vision tower outside FSDP's forward: without
        # this the root's parameters stay sharded there ("mixed torch.Tensor and DTensor").
        register_fsdp_forward_method(model, "generate")

    def deepspeed_config(self, max_grad_norm: float) -> dict:
        stage = ZERO_STAGE[self.mode]
        zero: dict = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
        if stage == 3:
            # the exported weights are gathered from the shards at save time
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        if self.mode == "zero3_offload":
            zero["offload_param"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
        return {
            # The loop accumulates over its groups itself (micro_batch sets the boundary) and steps
            # once per optimizer step; these two numbers only satisfy DeepSpeed's batch arithmetic.
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": float(max_grad_norm or 0.0),
            "bf16": {"enabled": bool(self.bf16)},
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    # ------------------------------------------------------------------ one optimizer step

    @contextlib.contextmanager
    def micro_batch(self, last: bool):
        """Gradient accumulation over a process's groups: gradients are exchanged on the last only."""
        if self.zero:
            self.engine.set_gradient_accumulation_boundary(last)
            yield
        elif self.mode == "fsdp":
            self.model.set_requires_gradient_sync(last)
            yield
        elif self.world > 1 and not last:
            with self.model.no_sync():
                yield
        else:
            yield

    def backward(self, loss) -> None:
        if self.zero:
            self.engine.backward(loss)
        else:
            loss.backward()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        if self.zero:
            self.engine.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss_finite: bool) -> bool:
        """Clip and apply the accumulated gradients unless they (or the loss) are not finite anywhere.

        The decision is collective, so all processes skip together. Under DeepSpeed the engine
        clips (``gradient_clipping``) and skips a step with a non-finite gradient norm itself;
        its verdict (``was_step_applied``) is the step's.
        """
        if self.zero:
            self.engine.step()
            applied = self.engine.was_step_applied()
            bad = self.sum(float(not (loss_finite and applied)))
            return bad == 0 and applied
        local_ok = loss_finite and all(bool(torch.isfinite(_local(p.grad)).all()) for p in self.model.parameters() if p.grad is not None)
        if self.sum(float(not local_ok)) > 0:
            self.zero_grad()
            return False
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], self.max_grad_norm)
        self.optimizer.step()
        return True

    def autocast(self):
        """bf16 compute for DDP / one GPU (FSDP and DeepSpeed cast by their own precision settings)."""
        if self.bf16 and self.mode == "ddp" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generation(self):
        """Around rollouts: ZeRO-3 gathers the whole model once per rollout (as TRL does by default)
        rather than each layer once per decoded token; the other modes need nothing."""
        if self.mode in ("zero3", "zero3_offload"):
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.policy.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ what actually ran

    def describe(self) -> dict:
        """The run's real layout, read off the wrapped model (not the config): world size, engine and
        the share of the trainable parameters (and optimizer state) this process holds."""
        trainable = [p for p in self.policy.parameters() if p.requires_grad] if self.policy is not None else []
        total = sum(_full_numel(p) for p in trainable)
        local = sum(_local_numel(p) for p in trainable)
        if self.zero:
            opt_local = _zero_optimizer_numel(self.optimizer)
        else:  # the elements this process's optimizer steps (and keeps Adam moments of)
            opt_local = sum(_local(p).numel() for g in self.optimizer.param_groups for p in g["params"])
        engine = {"ddp": "DistributedDataParallel" if self.world > 1 else "single process", "fsdp": "FSDP2 fully_shard"}.get(
            self.mode, f"DeepSpeed ZeRO-{ZERO_STAGE.get(self.mode)}")
        return {
            "world_size": dist.get_world_size() if self.distributed else 1,
            "rank": self.rank,
            "distributed": self.mode,
            "engine": engine + (" (CPU offload)" if self.mode == "zero3_offload" else ""),
            "backend": dist.get_backend() if self.distributed else None,
            "device": str(self.device),
            "trainable_params": total,
            "local_trainable_params": local,
            "local_optimizer_params": opt_local,
        }

    # ------------------------------------------------------------------ weights for a rollout engine

    def full_weights(self, skip_frozen_vision: bool = False):
        """The policy's whole weights one module at a time (``iter_full_weights``). Collective."""
        return iter_full_weights(self.policy, zero3=self.mode in ("zero3", "zero3_offload"),
                                 skip_frozen_vision=skip_frozen_vision)

    # ------------------------------------------------------------------ checkpoints

    def full_state_dict(self) -> dict | None:
        """The whole model's weights on the main process (CPU tensors), None elsewhere. Collective.

        A tied weight appears once (the output head tied to the embedding is left out), as
        ``save_pretrained`` writes it; gathered copies no longer share storage to show the tie.
        """
        state = self._gather_state_dict()
        if state is None:
            return None
        seen, tied = set(), set()
        for name, parameter in self.policy.named_parameters(remove_duplicate=False):
            if id(parameter) in seen:
                tied.add(name)
            seen.add(id(parameter))
        return {k: v for k, v in state.items() if k not in tied}

    def _gather_state_dict(self) -> dict | None:
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return state if self.is_main else None
        if self.mode in ("zero3", "zero3_offload"):
            state = self.engine._zero3_consolidated_16bit_state_dict()  # gathers one module at a time
            return {k: v.cpu() for k, v in state.items()} if self.is_main else None
        if not self.is_main:
            return None
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}

    def save_sharded(self, folder: Path) -> None:
        """Model and optimizer state as this mode holds them (each process writes its shard). Collective."""
        if self.mode == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder / "fsdp"))
        elif self.zero:
            self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)
        else:
            raise ValueError(f"save_sharded: {self.mode} keeps no sharded state")

    def load_sharded(self, folder: Path) -> None:
        if self.mode == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optim_state = get_state_dict(self.model, self.optimizer)
            state = {"model": model_state, "optimizer": optim_state}
            dcp.load(state, checkpoint_id=str(folder / "fsdp"))
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        elif self.zero:
            path, _ = self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state", load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"{folder / 'deepspeed'}: no DeepSpeed checkpoint")
        else:
            raise ValueError(f"load_sharded: {self.mode} keeps no sharded state")

    @property
    def sharded(self) -> bool:
        """Whether the optimizer state lives in shards (checkpoints then hold ``fsdp/`` or ``deepspeed/``)."""
        return self.mode != "ddp"


# how gloo and NCCL word a collective that timed out or lost its peer (gloo raises a plain RuntimeError)
_TIMEOUT_MARKERS = ("Timed out waiting", "collective operation timeout")
_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


def _is_collective_failure(err: BaseException) -> bool:
    """A collective that timed out, or whose peer went away."""
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _TIMEOUT_MARKERS + _PEER_MARKERS)


def collective_failure(err: BaseException, output_dir=None):
    """A RunStopped naming the step and the processes when ``err`` is a collective timeout (or a
    vanished peer) in a multi-process run, else None.

    Processes that wait time out together; the first to claim it in the store says the line, the
    others end quietly (an empty message), so a run ends with ONE line. Which processes waited and
    which were missing comes from the heartbeats: those that reached the furthest (step, phase)
    waited; the others are behind (stalled, or dead).
    """
    from tempsamp.errors import RunStopped

    parallel = _active
    if parallel is None or parallel.world < 2 or not _is_collective_failure(err):
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        first = store.add("tempsamp/watchdog", 1) == 1
        beats = parallel.heartbeats()
    except Exception:  # noqa: BLE001 - the launcher's store is gone too: say what this process knows
        first, beats = True, {}
    if not first:
        return RunStopped("", exit_code=1)

    def where(beat):
        return (beat["step"], PHASES.index(beat["phase"]) if beat["phase"] in PHASES else -1)

    now = time.time()
    furthest = max((where(b) for b in beats.values()), default=None)
    behind = {r: b for r, b in beats.items() if where(b) != furthest}
    silent = [r for r in range(parallel.world) if r not in beats]
    waited = sorted({parallel.rank, *(r for r in beats if r not in behind)})
    timed_out = any(m in str(err) for m in _TIMEOUT_MARKERS)
    # steps counted from 1, as metrics.jsonl and the checkpoints count them
    when = f"in step {parallel.current_step + 1}" if parallel.current_step is not None else "before step 1"
    how = f"waited over {parallel.timeout_s:g} s (collective_timeout_s)" if timed_out else "lost a peer"
    plural = "es" if len(waited) > 1 else ""
    line = f"collective {'timeout' if timed_out else 'failure'} {when}: process{plural} {', '.join(map(str, waited))} {how}"
    missing = [f"process {r} (last seen in step {b['step'] + 1}, {b['phase']}, {now - b['time']:.0f} s ago)"
               for r, b in sorted(behind.items())] + [f"process {r} (never reported)" for r in silent]
    if missing:
        line += f" for {', '.join(missing)}: stalled or dead"
    else:
        line += " in the same phase as every other process (a stall inside a collective phase)"
    if output_dir is not None:
        from tempsamp.train.checkpoint import latest_checkpoint

        last = latest_checkpoint(output_dir)
        line += f"; the run ends, {'continue from ' + last.name + ' with --resume' if last else 'no checkpoint yet'}"
    return RunStopped(line, exit_code=1)


def iter_full_weights(model, *, zero3: bool = False, skip_frozen_vision: bool = False):
    """A model's weights, whole, one module at a time: ``(name, tensor)`` under the base model's
    names, LoRA merged into its base weight, adapters left out. With sharded weights this is
    collective: every process iterates it to the end, in the same order.

    What one step holds beyond the sharded model is one module's weights (a LoRA layer: its base
    weight, the adapters and the merged result): FSDP2 gathers each parameter with
    ``full_tensor()``; ZeRO-3 (``zero3``) gathers one module's own parameters with
    ``GatheredParameters``; DDP and ZeRO-2 hold whole weights already (no copy, except LoRA's merged
    weight). vLLM's in-place reload keeps the inputs of one of its layers until the layer is
    complete (q, k and v for its fused qkv projection), then copies them in: the push's extra
    memory is about one such layer, never the model.
    ``skip_frozen_vision``: leave out a vision tower that does not train (it never changes; vLLM
    then keeps its own copy, but warns about every layer the reload left out).
    """
    from torch.distributed.tensor import DTensor

    def whole(t):
        return (t.full_tensor() if isinstance(t, DTensor) else t).detach()

    model = getattr(model, "module", model)  # under DDP
    prefix = "base_model.model."  # peft's wrapping
    merged: set[str] = set()
    for module_name, module in model.named_modules():
        if "lora_" in module_name or any(module_name.startswith(m + ".") for m in merged):
            continue  # the adapters themselves, and a LoRA layer's parts (done with their layer)
        lora = hasattr(module, "lora_A") and hasattr(module, "base_layer")
        owner = module.base_layer if lora else module
        params = dict(owner.named_parameters(recurse=False))
        if lora:
            merged.add(module_name)
            (adapter,) = module.active_adapters
            adapters = [module.lora_A[adapter].weight, module.lora_B[adapter].weight]
        else:
            adapters = []
        if not params:
            continue
        base = module_name[len(prefix):] if module_name.startswith(prefix) else module_name
        if skip_frozen_vision and "visual" in base.split(".") and not any(p.requires_grad for p in params.values()):
            continue
        gathered = contextlib.nullcontext()
        if zero3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(params.values()) + adapters, modifier_rank=None)
        with gathered, torch.no_grad():
            for name, param in params.items():
                tensor = whole(param)
                if adapters and name == "weight":
                    a, b = whole(adapters[0]), whole(adapters[1])
                    tensor = tensor + (b @ a).to(tensor.dtype) * module.scaling[adapter]
                elif zero3:
                    # The consumer may hold the tensor past this module (vLLM keeps a fused layer's
                    # inputs, e.g. q, k and v, until all have arrived); ZeRO-3 frees the gathered
                    # storage when the module is left, so hand out a copy.
                    tensor = tensor.clone()
                yield (f"{base}.{name}" if base else name), tensor


def _transformers_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _full_numel(p) -> int:
    return int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel()  # ZeRO-3 partitions to numel 0


def _local_numel(p) -> int:
    if hasattr(p, "ds_tensor"):  # ZeRO-3: this process's partition
        return int(p.ds_tensor.numel())
    return _local(p).numel()


def _zero_optimizer_numel(optimizer) -> int:
    """Elements of float32 master weights this process's ZeRO optimizer holds (its partition)."""
    groups = getattr(optimizer, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
    if groups is None:
        groups = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    return int(sum(t.numel() for t in groups or []))
