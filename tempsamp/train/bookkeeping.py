"""Everything a training step leaves behind, apart from the step itself.

``Bookkeeping`` opens the run's records (config.yaml, layout.json, selection.json, the logs), and
after each step: gathers every process's report, adds up faults and skipped steps, feeds the online
filter, detects loss spikes, logs the scalars and the queries trained on, decides whether the run
stops (a signal, too many skipped steps, the generation budget spent) and writes checkpoints on
their cadence. Each decision is taken on gathered values, so every process takes it together.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tempsamp.advantages import shape_rewards
from tempsamp.errors import RunStopped
from tempsamp.loss import Mismatch
from tempsamp.train import guards, runlock
from tempsamp.train.checkpoint import begin_checkpoint, commit_checkpoint, export_model, latest_checkpoint, save_rng
from tempsamp.train.logger import RunLogger


@dataclass
class Counters:
    """Faults and totals carried across resumes (saved in state.json).

    Each process counts its own step's faults in a fresh Counters; they are summed over processes
    (``add``) into the run's totals, which are therefore the same on every process.
    """

    bad_videos: int = 0
    nan_rewards: int = 0
    empty_completions: int = 0
    parse_failures: int = 0
    skipped_steps: int = 0
    skipped_no_video: int = 0  # the two causes of skipped_steps
    skipped_non_finite: int = 0
    generated_tokens: int = 0  # sampled completion tokens so far, dropped groups included (max_generated_tokens)
    loss_spikes: int = 0
    losses: list = field(default_factory=list)  # recent losses, for spike detection

    FAULTS = ("bad_videos", "nan_rewards", "empty_completions", "parse_failures")

    def add(self, step_faults: list[dict]) -> None:
        for faults in step_faults:
            for name in self.FAULTS:
                setattr(self, name, getattr(self, name) + faults[name])

    def faults(self) -> dict:
        return {name: getattr(self, name) for name in self.FAULTS}

    def totals(self) -> dict:
        """The logged form: every total but the recent losses."""
        return {f"faults/{k}": v for k, v in vars(self).items() if k != "losses"}


class Bookkeeping:
    """The run's records, totals and stop/checkpoint decisions around the steps of ``run``."""

    def __init__(self, run, max_steps: int | None):
        from tqdm import tqdm

        self.run, self.cfg, self.parallel, self.counters = run, run.cfg, run.parallel, run.counters
        self.out = run.out
        self.logger = RunLogger(self.out) if self.parallel.is_main else None
        if self.parallel.is_main:
            self._write_run_records()
        self.end = self.cfg.total_steps if max_steps is None else min(self.cfg.total_steps, max_steps)
        if budget_spent(self.cfg, self.counters):  # a finished budget run, resumed: nothing left to do
            self.end = run.start
        self.stop, self.stopping = guards.GracefulStop().install(), None
        self.bar = tqdm(range(run.start, self.end), initial=run.start, total=self.cfg.total_steps, desc="train",
                        disable=not self.parallel.is_main)
        self.checkpoint_seconds = 0.0  # the previous step's save (logged with the next step)

    def steps(self):
        return self.bar

    def _write_run_records(self) -> None:
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict(), sort_keys=False))
        # What actually ran, read off the wrapped model on every process (tests check it).
        (out / "layout.json").write_text(json.dumps(self.run.layout, indent=1))
        # which queries the run trains on: the selection, then one line per step (queries.jsonl)
        (out / "selection.json").write_text(json.dumps({
            "select": cfg.select, "difficulty_file": cfg.difficulty_file, "n": len(self.run.examples),
            "qids": [ex.qid for ex in self.run.examples]}, indent=1) + "\n")
        trim_query_log(out / QUERY_LOG, self.run.start)

    # ------------------------------------------------------------------ after each step

    def after_step(self, step: int, result) -> bool:
        """Gather the step's reports, count, log, checkpoint on cadence; True when the run stops here."""
        self.parallel.heartbeat(step, "log")
        if result.skipped:
            self._record_skipped(step, result)
        else:
            self._record(step, result)
        self.stopping = guards.stop_reason(self.stop, self.counters, step + 1, self.end, self.cfg, self.parallel)
        spent = budget_spent(self.cfg, self.counters)
        self.parallel.heartbeat(step, "checkpoint")
        t_checkpoint = time.perf_counter()
        self.checkpoint_on_cadence(step + 1, force=self.stopping is not None or spent)
        self.checkpoint_seconds = time.perf_counter() - t_checkpoint
        if spent and self.stopping is None:
            self.parallel.print(f"generation budget spent after {step + 1} steps: {self.counters.generated_tokens} "
                                f"tokens generated (max_generated_tokens={self.cfg.max_generated_tokens})")
        return self.stopping is not None or spent

    def _record_skipped(self, step: int, result) -> None:
        """No usable group on any process: only the faults and events to count."""
        reports = self.parallel.gather_object({"faults": result.rollouts.faults.faults(), "events": result.rollouts.events})
        self.counters.add([r["faults"] for r in reports])
        self.counters.skipped_steps += 1
        self.counters.skipped_no_video += 1
        if self.logger:
            self._events(step, reports)
            self.logger.event(step, "skipped_step", f"no usable video on any of the {len(result.group_counts)} processes")
            self.logger.log(step + 1, self.counters.totals())
            log_queries(self.out / QUERY_LOG, step + 1, self.run.examples, result.rollouts.slot_index, [], [],
                        result.rollouts.skipped)

    def _record(self, step: int, result) -> None:
        rollouts, counters, logger = result.rollouts, self.counters, self.logger
        reports = self.parallel.gather_object(process_report(result))  # each group counted once
        trained = sorted(g["slot"] for r in reports for g in r["groups"])
        self._visit_online_filter(reports, rollouts.slot_index)
        if logger:
            dropped_slots = sorted(slot for r in reports for slot in r["dynamic"]["dropped"])
            log_queries(self.out / QUERY_LOG, step + 1, self.run.examples, rollouts.slot_index, trained, dropped_slots,
                        rollouts.skipped)
        counters.add([r["faults"] for r in reports])
        if logger:
            self._events(step, reports)
            if 0 in result.group_counts:
                idle = ", ".join(str(r) for r, n in enumerate(result.group_counts) if n == 0)
                logger.event(step, "idle_process", f"no usable video on process {idle}: it took part with a blank stand-in "
                             "of weight 0; the step is applied on the other processes' groups")
        if not result.applied:
            counters.skipped_steps += 1
            counters.skipped_non_finite += 1
            if logger:
                logger.event(step, "skipped_step", "non-finite loss or gradient: update not applied")
        scalars = step_scalars(self.cfg, reports, result.cot)
        # generation cost, dropped groups included (what equal-cost comparisons hold fixed)
        scalars["tokens/generated"] = sum(g["generated_tokens"] for r in reports for g in r["groups"]) + sum(
            r["dynamic"]["dropped_tokens"] for r in reports)
        scalars["data/skipped_by_filter"] = float(len(rollouts.skipped))
        counters.generated_tokens += int(scalars["tokens/generated"])
        if self.cfg.dynamic_sampling:
            scalars["dynamic/dropped_groups"] = float(sum(len(r["dynamic"]["dropped"]) for r in reports))
            scalars["dynamic/refill_rounds"] = float(reports[0]["dynamic"]["rounds"])
        self._watch_loss(step, scalars["loss/value"])
        if logger and step % self.cfg.log_every == 0:
            scalars.update({
                "speed/step_seconds": time.perf_counter() - result.started,
                "speed/checkpoint_seconds": self.checkpoint_seconds,  # the previous step's save (0: none)
                "memory/peak_gb": peak_memory_gb(),
                "lr": result.lr,
                **counters.totals(),
            })
            logger.log(step + 1, scalars)
            self.bar.set_postfix(reward=f"{scalars['reward/raw'] or 0:.3f}", top1=f"{scalars['iou/top1_onpolicy'] or 0:.3f}")

    def _events(self, step: int, reports: list[dict]) -> None:
        for kind, message in [e for r in reports for e in r["events"]]:
            self.logger.event(step, kind, message)

    def _visit_online_filter(self, reports: list[dict], slot_index: dict) -> None:
        """The same visits, in slot order, on every process: each group's on-policy IoUs."""
        if not self.run.online_filter.enabled:
            return
        for g in sorted((g for r in reports for g in r["groups"]), key=lambda g: g["slot"]):
            self.run.online_filter.visit(self.run.examples[slot_index[g["slot"]]].qid,
                                         [i for i, o in zip(g["iou"], g["offpolicy"]) if not o])

    def _watch_loss(self, step: int, loss_value) -> None:
        """A loss far above the running median of the last 50 is counted and logged as a spike."""
        recent = self.counters.losses[-50:]
        if loss_value is None or not math.isfinite(loss_value):
            return
        if recent and abs(loss_value) > self.cfg.spike_factor * max(1e-8, float(np.median(np.abs(recent)))):
            self.counters.loss_spikes += 1
            if self.logger:
                self.logger.event(step, "loss_spike", f"loss {loss_value:.4g} vs running median {np.median(np.abs(recent)):.4g}")
        self.counters.losses = (recent + [loss_value])[-50:]

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_on_cadence(self, done: int, force: bool = False) -> None:
        """Checkpoint every save_every steps, at the end and at --max-steps (skipped steps included), and
        when the run stops early (``force``), in step."""
        if force or done % self.cfg.save_every == 0 or done == self.cfg.total_steps or done == self.end:
            self.save(done)

    def save(self, done: int) -> None:
        """checkpoint-DONE: every process writes its shards and RNG; the main process the rest, then renames."""
        parallel, run = self.parallel, self.run
        full_state = parallel.full_state_dict() if parallel.mode != "ddp" else None  # collective
        tmp = begin_checkpoint(self.out, done) if parallel.is_main else None
        tmp = Path(parallel.gather_object(str(tmp) if tmp else None)[0])
        if parallel.sharded:
            parallel.save_sharded(tmp)
        save_rng(tmp, parallel.rank)
        parallel.barrier()
        if parallel.is_main:
            state = {"counters": vars(self.counters), "config": self.cfg.to_dict(), "world_size": parallel.world,
                     "data": {"cursor": run.stream.cursor, "filter": run.online_filter.state_dict()}}
            commit_checkpoint(tmp, done, run.policy, run.processor, None if parallel.sharded else parallel.optimizer, state,
                              self.cfg.keep_last, model_state=full_state)
        parallel.barrier()

    # ------------------------------------------------------------------ the end

    def finish(self) -> Path:
        """The final model (unless stopped early), the speed summary, the processes released; the last line."""
        parallel, run = self.parallel, self.run
        self.stop.restore()
        self.bar.close()
        if self.stopping is None:
            # A plain transformers checkpoint of the final policy (LoRA merged), beside the resumable ones.
            final_state = parallel.full_state_dict() if parallel.mode != "ddp" else None  # collective
            if parallel.is_main:
                export_model(self.out / "final-model", run.policy, run.processor, final_state)
        if self.logger:
            self.logger.close()
            write_speed_summary(self.out)
        parallel.barrier()
        run.engine.close()  # vLLM: before the process group goes (its shutdown destroys every group)
        parallel.close()
        if parallel.is_main:
            runlock.release(self.out)
        last = latest_checkpoint(self.out)
        done = int(last.name.split("-")[1]) if last else run.start
        line = guards.summary(self.counters, done, self.cfg.total_steps, last)
        if self.stopping:
            parallel.print(self.stopping)
            raise RunStopped(f"{line}; continue with --resume", exit_code=self.stop.exit_code if self.stop.signal else 1)
        parallel.print(line)
        return self.out


# ---------------------------------------------------------------- what one process reports for a step


def process_report(result) -> dict:
    """This process's step, as plain values (cheap to gather): faults, events, the update's
    statistics, timings, per-group logs and what dynamic sampling dropped."""
    r = result.rollouts
    fmt_scores = np.stack([s.format for s in result.scores]) if result.scores else np.zeros((0, result.num_generations))
    return {
        "faults": r.faults.faults(), "events": r.events, "update": result.update_log, "rollout_seconds": r.rollout_seconds,
        "data_seconds": r.data_seconds,
        "groups": group_logs(r.slots, r.groups, result.task, fmt_scores, result.scores, result.adv),
        "dynamic": r.dynamic,
    }


def group_logs(slots, groups: list, task, fmt_scores, scores, adv) -> list[dict]:
    """Per group: what the logs need, as plain lists (cheap to gather across processes)."""
    out = []
    for i, (slot, g) in enumerate(zip(slots, groups)):
        out.append({
            "slot": slot,
            "offpolicy": list(g.offpolicy),
            "task": task[i].tolist(),
            "format": fmt_scores[i].tolist(),
            "parsed": scores[i].parsed.tolist(),
            "iou": np.asarray(scores[i].iou, dtype=float).tolist(),
            "adv": adv[i].tolist(),
            "lengths": [len(ids) for ids in g.completion_ids],
            "generated_tokens": g.generated_tokens,
        })
    return out


def step_scalars(cfg, reports: list[dict], cot: bool) -> dict:
    """The step's logged scalars from every process's report; each group counted once, in slot order.

    On-policy averages exclude the GT row (its reward is ``reward/offpolicy``).
    """
    groups = sorted((g for r in reports for g in r["groups"]), key=lambda g: g["slot"])
    on = np.array([not o for g in groups for o in g["offpolicy"]])
    off = ~on
    task = np.array([v for g in groups for v in g["task"]])
    iou = np.array([v for g in groups for v in g["iou"]])
    adv = np.array([v for g in groups for v in g["adv"]])
    fmt = np.array([v for g in groups for v in g["format"]])
    parsed = np.array([v for g in groups for v in g["parsed"]], dtype=bool)
    lengths = np.array([v for g in groups for v in g["lengths"]])
    top1 = [max(i for i, o in zip(g["iou"], g["offpolicy"]) if not o) for g in groups if not all(g["offpolicy"])]
    rollout_seconds = max(r["rollout_seconds"] for r in reports)  # processes sample in parallel
    generated = sum(g["generated_tokens"] for g in groups)

    def mean(values):
        values = [v for r in reports for v in values(r)]
        return float(np.mean(values)) if values else None

    losses = [r["update"].losses for r in reports]
    passes = min(len(x) for x in losses)
    return {
        "reward/raw": float(task[on].mean()) if on.any() else None,
        "reward/shaped": float(shape_rewards(torch.tensor(task[on]), cfg.tau, cfg.alpha1, cfg.alpha2).mean()) if on.any() else None,
        "reward/offpolicy": float(task[off].mean()) if off.any() else None,
        "iou/top1_onpolicy": float(np.mean(top1)) if top1 else None,
        "iou/mean_onpolicy": float(iou[on].mean()) if on.any() else None,
        "adv/offpolicy": float(adv[off].mean()) if off.any() else None,
        "adv/frac_onpolicy_negative": float((adv[on] < 0).mean()) if on.any() else None,
        # groups whose GT row teaches nothing (anchoring's tied groups, tied groups under any strategy)
        "adv/frac_offpolicy_zero": float((adv[off] == 0).mean()) if off.any() else None,
        "format/rate": float(fmt[on].mean()) if cot and on.any() else None,
        "parse/failure_rate": float(1 - parsed[on].mean()) if on.any() else None,
        "loss/value": float(np.mean([sum(x[k] for x in losses) for k in range(passes)])) if passes else None,
        "loss/kl": mean(lambda r: r["update"].kl),  # on-policy rows only
        "loss/kl_offpolicy": mean(lambda r: r["update"].kl_offpolicy),
        "loss/clip_fraction": mean(lambda r: r["update"].clip_fraction),
        "policy/entropy": mean(lambda r: r["update"].entropy),
        **mismatch_scalars([r["update"].mismatch for r in reports]),
        "completion/length": float(lengths[on].mean()) if on.any() else 0.0,
        "speed/rollout_seconds": rollout_seconds,
        "speed/tokens_per_second": generated / max(rollout_seconds, 1e-9),
        # the slowest process's time per phase (they wait for each other at the gradient exchange)
        "speed/data_seconds": max(r.get("data_seconds", 0.0) for r in reports),
        **{f"speed/{phase}_seconds": max(r["update"].seconds[phase] for r in reports)
           for phase in ("reference", "policy", "optimizer", "push")},
        "groups": float(len(groups)),
    }


def mismatch_scalars(parts: list[Mismatch]) -> dict:
    """The sampler/learner log-prob mismatch over every process's on-policy completion tokens (absent:
    the engine gave no log-probs, i.e. transformers, which samples with the policy itself)."""
    total = Mismatch()
    for part in parts:
        total = total.add(part)
    if not total.tokens:
        return {}
    return {"rollout/logprob_abs_diff": total.abs_sum / total.tokens, "rollout/logprob_abs_diff_max": total.max,
            "rollout/logprob_diff_frac_gt_0.1": total.over_0_1 / total.tokens}


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def budget_spent(cfg, counters: Counters) -> bool:
    return bool(cfg.max_generated_tokens) and counters.generated_tokens >= cfg.max_generated_tokens


QUERY_LOG = "queries.jsonl"


def log_queries(path: Path, step: int, examples, slot_index: dict, trained: list, dropped: list, skipped: list) -> None:
    """One line per step: the qids trained on, dropped as tied (dynamic sampling), passed over by the filter."""
    line = {"step": step, "trained": [examples[slot_index[s]].qid for s in trained],
            "dropped_tied": [examples[slot_index[s]].qid for s in dropped],
            "skipped_by_filter": [examples[i].qid for i in skipped]}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def trim_query_log(path: Path, start: int) -> None:
    """A resumed run redoes the steps after its checkpoint: their lines go (they are written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= start]
    path.write_text("".join(line + "\n" for line in keep))


SPEED_KEYS = ("step", "data", "rollout", "reference", "policy", "optimizer", "push", "checkpoint")


def write_speed_summary(out: Path) -> dict:
    """``speed.json``: the run's per-phase seconds per step (median over logged steps) and generated tokens/s."""
    from tempsamp.train.logger import read_metrics

    rows = read_metrics(out)
    summary = {"steps": len(rows)}
    for key in [f"speed/{k}_seconds" for k in SPEED_KEYS] + ["speed/tokens_per_second"]:
        values = [r[key] for r in rows if r.get(key) is not None]
        summary[key.removeprefix("speed/")] = float(np.median(values)) if values else None
    (out / "speed.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
