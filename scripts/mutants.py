"""`make mutants`: break the algorithm core and the loop's wiring on purpose, one mutation at a time,
and check that the tests notice.

Each mutation is a source-text replacement applied to a scratch copy of the repository (the
checkout itself is never touched); the tests that should catch it run there (one thread, -x). A
mutation whose tests still pass "survives" and the script fails. A mutation whose text no longer
occurs exactly once is an error too (the list has gone stale: update it). The unmutated tests are
run first: they must pass.

    python scripts/mutants.py            # all, prints the kill count
    python scripts/mutants.py -k luffy   # only mutations whose name contains "luffy"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # a mutated module and its restored original may share an mtime: never a stale .pyc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
W = "tests/test_wiring.py"
L = "tests/test_loss.py"
A = "tests/test_advantages.py"
R = "tests/test_rewards.py"
ADV, LOSS, REW, LOOP, CONF, SCORE = ("tempsamp/advantages.py", "tempsamp/loss.py", "tempsamp/rewards.py",
                                     "tempsamp/train/loop.py", "tempsamp/train/config.py", "tempsamp/train/scoring.py")

# (name, file, original text, mutated text, tests: [path, -k expression or None])
MUTATIONS = [
    # ---- advantages
    ("std: population -> always n-1", ADV, 'dof = (n - 1) if std == "sample" else n', "dof = n - 1", (A, "std")),
    ("shaping: no log compression", ADV, "high = tau + alpha1 * torch.log1p(torch.clamp(r - tau, min=0.0))",
     "high = tau + alpha1 * torch.clamp(r - tau, min=0.0)", (A, "shaping")),
    ("shaping: alpha2 ignored", ADV, "torch.expm1(alpha2 * torch.clamp(tau - r, min=0.0)) / math.expm1(alpha2)",
     "torch.expm1(torch.clamp(tau - r, min=0.0)) / math.expm1(1.0)", (W, "config")),
    ("anchor: lambda_off fixed", ADV, "gt_adv = lambda_off * best_on", "gt_adv = 1.2 * best_on", (W, "config")),
    ("anchor: no fallback for tied groups", ADV, "gt_adv = torch.where(on_tied & on.any(-1, keepdim=True), joint, gt_adv)",
     "gt_adv = gt_adv", (A, "anchor_tied")),
    ("anchor: fallback may push away from the GT", ADV, "joint = _normalise(r, torch.ones_like(off), std, eps).clamp(min=0.0)",
     "joint = _normalise(r, torch.ones_like(off), std, eps)", (A, "anchor_tied")),
    ("reward scaling: scale fixed", ADV, "torch.where(off, r * offpolicy_scale, r)", "torch.where(off, r * 0.8, r)", (W, "config")),
    ("bonus shaped with the task reward", ADV, "r = shape_rewards(r, tau, alpha1, alpha2)",
     "r = shape_rewards(r + extra, tau, alpha1, alpha2) - extra", (A, "bonus")),
    ("eps fixed", ADV, "adv = (r - mean) / (sd + eps)", "adv = (r - mean) / (sd + 1e-6)", (W, "config")),
    # ---- loss
    ("KL without gradient", LOSS, "delta = ref_logp - logp\n", "delta = ref_logp - logp.detach()\n", (L, "kl_term")),
    ("clip: max instead of min", LOSS, "surrogate = torch.minimum(unclipped, clipped)", "surrogate = torch.maximum(unclipped, clipped)",
     (L, "clipping")),
    ("clip: low and high eps swapped", LOSS, "torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)", "torch.clamp(ratio, 1.0 - high, 1.0 + clip_eps)",
     (L, "clipping_hand")),
    ("token mean counts padding", LOSS, "(normalizer or mask.sum().clamp(min=1.0))", "(normalizer or float(mask.numel()))",
     (L, "token_mean or padding")),
    ("LUFFY rows clipped", LOSS, "surrogate = torch.where(off_tok, shaped * adv, surrogate)",
     "surrogate = torch.where(off_tok, torch.minimum(shaped * adv, clipped), surrogate)", (L, "luffy")),
    ("LUFFY gamma 0 still shapes", LOSS, "if luffy_gamma > 0 else p\n", "if luffy_gamma > 0 else p / (p + 0.1)\n", (L, "luffy")),
    ("KL statistic mixes the GT row", LOSS, "kl=float((kl * on_mask).sum() / on_mask.sum().clamp(min=1.0))",
     "kl=float((kl * mask).sum() / n)", (L, "split")),
    # ---- rewards and scoring
    ("F2 weights precision", REW, "        denom = beta**2 * precision + recall", "        denom = precision + beta**2 * recall",
     (R, "precision_differs")),
    ("empty highlight answer scores", REW, "return np.where(pred_mask.any(-1), reward, 0.0)", "return reward",
     (R, "unparsable or shortcuts")),
    ("format: placeholder think earns", REW, "if _WORD_RE.search(thinking) and", "if thinking.strip() and", (R, "placeholder")),
    ("highlight F2 reading ignored", SCORE, "f2=f2, lambda_rec=lambda_rec", "f2=None, lambda_rec=lambda_rec", (W, "highlight_f2")),
    # ---- loop: advantages and scores
    ("config: alpha1/alpha2 crossed", LOOP, "alpha1=cfg.alpha1, alpha2=cfg.alpha2, anchor_tied", "alpha1=cfg.alpha2, alpha2=cfg.alpha1, anchor_tied",
     (W, "config")),
    ("config: tau dropped", LOOP, "tau=cfg.tau, alpha1=cfg.alpha1, alpha2=cfg.alpha2, anchor_tied",
     "alpha1=cfg.alpha1, alpha2=cfg.alpha2, anchor_tied", (W, "config")),
    ("config: std dropped", LOOP, "std=cfg.adv_std,", 'std="population",', (W, "config")),
    ("config: eps dropped", LOOP, "eps=cfg.adv_eps,", "eps=1e-6,", (W, "config")),
    ("config: lambda_off dropped", LOOP, "lambda_off=cfg.lambda_off,", "lambda_off=1.2,", (W, "config")),
    ("config: offpolicy_scale dropped", LOOP, "offpolicy_scale=cfg.offpolicy_scale,", "offpolicy_scale=0.8,", (W, "config")),
    ("config: anchor_tied dropped", LOOP, "anchor_tied=cfg.anchor_tied,", 'anchor_tied="joint",', (W, "config")),
    ("config: strategy fixed", LOOP, "task, off, cfg.strategy, bonus=fmt", 'task, off, "shaping", bonus=fmt', (W, "config")),
    ("format bonus dropped", LOOP, "bonus=fmt,", "bonus=None,", (W, "format")),
    ("format weight ignored", LOOP, "* (cfg.format_weight if cot else 0.0)", "* (1.0 if cot else 0.0)", (W, "format")),
    ("GT found by position", LOOP, "off = torch.tensor([g.offpolicy for g in groups])",
     "off = torch.tensor([[False] * (len(g.offpolicy) - 1) + [True] for g in groups])", (W, "flag")),
    # ---- loop: rollout
    ("CoT stage asks the answer prompt", LOOP, "text = prompt_text(example.query, mode,", 'text = prompt_text(example.query, "answer",',
     (W, "rollout")),
    ("GT think mask dropped", LOOP, "loss_masks.append(gt_loss_mask(cfg, processor, gt_text, mode))", "loss_masks.append(None)",
     (W, "rollout")),
    # ---- loop: update
    ("reference at T = 1", LOOP, "reference_logprobs(ref_model, model, b, cfg.temperature)", "reference_logprobs(ref_model, model, b)",
     (W, "kl_is_zero or temperature")),
    ("old log-probs at T = 1", LOOP, "old = per_group(lambda b: qwen_vl.completion_logprobs(model, b, temperature=cfg.temperature))",
     "old = per_group(lambda b: qwen_vl.completion_logprobs(model, b))", (W, "temperature")),
    ("normaliser counts padding", LOOP, "local_count = float(sum(m.sum() for m in masks))",
     'local_count = float(sum(b["completion_mask"].numel() for b in batches))', (W, "normaliser")),
    ("GT loss mask ignored", LOOP, "masks = [loss_mask(m, g) for m, g in zip(completion_masks, groups)]",
     'masks = completion_masks', (W, "normaliser or gradient")),
    ("advantages on the wrong rows", LOOP, "logp, adv[i].to(logp.device), masks[i]", "logp, adv[i].flip(0).to(logp.device), masks[i]",
     (W, "gradient")),
    ("off-policy flags not passed", LOOP, "offpolicy=offpolicy, offpolicy_loss", "offpolicy=None, offpolicy_loss", (W, "logged_kl")),
    ("truncated IS weights not passed", LOOP, "is_weights=weights,", "is_weights=None,", (W, "truncated_is")),
    ("mismatch against the sampler's own log-probs", LOOP, "logprob_mismatch(learner_old, sampler,",
     "logprob_mismatch(sampler, sampler,", (W, "mismatch")),
    ("LUFFY setting not passed", LOOP, "offpolicy_loss=cfg.offpolicy_loss,", 'offpolicy_loss="ratio",', (W, "offpolicy_loss_settings")),
    ("aggregation not passed", LOOP, "aggregation=cfg.aggregation, normalizer", 'aggregation="token_mean", normalizer', (W, "normaliser")),
    ("logged KL includes the GT row", LOOP, "log.kl.append(stats.kl)\n", "log.kl.append(stats.kl_offpolicy or stats.kl)\n", (W, "logged_kl")),
    ("zero-GT fraction over on-policy rows", "tempsamp/train/bookkeeping.py", "float((adv[off] == 0).mean())", "float((adv[on] == 0).mean())", (W, "step_scalars")),
    ("packed groups' time steps misordered", "tempsamp/models/qwen_vl/batching.py", '    batch["completion_mask"] = torch.cat(\n        [torch.nn.functional.pad(',
     '    batch["second_per_grid_ts"] = batch["second_per_grid_ts"].flip(0)\n    batch["completion_mask"] = torch.cat(\n        [torch.nn.functional.pad(',
     ("tests/test_models.py", "packed")),
    ("packed prompts right-padded", "tempsamp/models/qwen_vl/batching.py", "rows.append(torch.cat([left, value, right], dim=1))",
     "rows.append(torch.cat([value, left, right], dim=1))", ("tests/test_models.py", "packed")),
    ("packed advantages on the wrong group", LOOP, "for i, logp, entropy in zip(f, qwen_vl.split_groups(logp_b, b)",
     "for i, logp, entropy in zip(f[::-1], qwen_vl.split_groups(logp_b, b)", (W, "packed")),
    # ---- config and recipes
    ("several updates with a GT row allowed", CONF, 'if self.updates_per_rollout > 1 and self.uses_offpolicy and self.offpolicy_loss == "ratio":',
     "if False:", (W, "refused")),
    ("paper recipes back to token mean", "tempsamp/recipes/charades_tempsamp.yaml", "aggregation: sequence_mean\n", "", (W, "recipes")),
    # ---- the recipe loop itself (slow: one tiny training run)
    ("stage mode not passed to rollout", LOOP, "examples[index], mode, sample_seed", 'examples[index], "answer", sample_seed',
     ("tests/test_train.py", "stages_reach")),
]


def run_tests(root: Path, tests: tuple) -> int:
    """pytest in this process (torch and transformers are imported once, not once per mutation):
    every tempsamp and test module is dropped first, so the mutated source is what gets imported."""
    import contextlib
    import io

    import pytest

    for name in list(sys.modules):
        if name.split(".")[0] in ("tempsamp", "conftest", "video_files") or name.split(".")[0].startswith("test_"):
            del sys.modules[name]
    path, expr = tests
    args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", str(root / path)] + (["-k", expr] if expr else [])
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return int(pytest.main(args))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m[0]]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tempsamp-mutants-") as tmp:
        root = Path(tmp) / "repo"
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.split()
        for name in files:
            if (REPO / name).is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, root / name)
        # the scratch copy's code wins; the tiny model is reused from the checkout's cache; one thread
        os.environ.setdefault("TEMPSAMP_CACHE_DIR", str(REPO / ".cache"))
        os.environ["OMP_NUM_THREADS"] = "1"
        sys.path.insert(0, str(root))
        os.chdir(root)
        import torch

        torch.set_num_threads(1)

        stale = [m[0] for m in chosen if (root / m[1]).read_text().count(m[2]) != 1]
        if stale:
            print(f"stale mutations (their text does not occur exactly once): {stale}")
            return 2
        for tests in sorted({m[4] for m in chosen}, key=str):
            if run_tests(root, tests) != 0:
                print(f"the unmutated tests fail: {tests}; fix them first")
                return 2

        survivors = []
        for i, (name, path, old, new, tests) in enumerate(chosen, 1):
            original = (root / path).read_text()
            (root / path).write_text(original.replace(old, new))
            try:
                code = run_tests(root, tests)
            finally:
                (root / path).write_text(original)
            killed = code not in (0, 5)  # 5: no test selected, which is not a kill
            print(f"[{i:2d}/{len(chosen)}] {'killed  ' if killed else 'SURVIVED'} {name}  ({path}; {tests[0]} -k {tests[1]!r})",
                  flush=True)
            if not killed:
                survivors.append(name)
        # a kill must come from the mutation, not from state left by earlier in-process runs
        for tests in sorted({m[4] for m in chosen}, key=str):
            if run_tests(root, tests) != 0:
                print(f"the unmutated tests fail after the mutants ran ({tests}): the kills above cannot be trusted")
                return 2
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutations killed in {time.perf_counter() - t0:.0f} s")
    if survivors:
        print("survivors: " + "; ".join(survivors))
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
