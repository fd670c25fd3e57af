"""The wires from the training loop to the algorithm core: each test here fails when the
loop hands the core the wrong thing (a config value, the format bonus, the rows' advantages, the
temperature, the token count, the GT's loss mask). A unigram fake policy stands in for the model
where the wire, not the network, is under test; `make mutants` checks that every listed mutation
is caught."""

import copy
import math

import numpy as np
import pytest
import torch

from tempsamp.advantages import group_advantages
from tempsamp.data.example import Example
from tempsamp.models import qwen_vl
from tempsamp.prompts import COT, GT_THINK, build_offpolicy_completion
from tempsamp.train import loop
from tempsamp.train.config import TrainConfig

VOCAB = 16


class FakePolicy(torch.nn.Module):
    """A unigram policy: every position's logits are the same learnable vector ``w``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)))


def unigram_logprobs(w, targets, temperature):
    return torch.log_softmax(w / temperature, -1)[targets]


class FakeAdapter:
    """Stands in for qwen_vl.completion_logprobs; records the temperature of every call."""

    def __init__(self):
        self.temperatures = []

    def __call__(self, model, batch, *, temperature=1.0, with_entropy=False):
        self.temperatures.append(temperature)
        mask = batch["completion_mask"]
        targets = batch["input_ids"][:, -mask.shape[1]:]
        logp = unigram_logprobs(model.w, targets, temperature).masked_fill(mask == 0, 0.0)
        return (logp, torch.zeros_like(logp).detach()) if with_entropy else logp


def fake_groups():
    """Two groups of different lengths; the GT row is flagged, once in the middle, once last."""
    prompt = {"input_ids": torch.tensor([[1, 2, 3]])}
    return [
        loop.Group(None, prompt, [[4, 5, 6, 7], [8, 9], [10]], ["a", "b", "c"], [False, True, False], loss_masks=[None] * 3),
        loop.Group(None, prompt, [[11, 12], [13, 14, 15], [4, 4, 4, 4, 4]], ["d", "e", "f"], [False, False, True],
                   loss_masks=[None, None, [1.0, 0.0, 0.0, 1.0, 1.0]]),
    ]


@pytest.fixture
def fake(monkeypatch):
    adapter = FakeAdapter()
    monkeypatch.setattr(qwen_vl, "completion_logprobs", adapter)
    calls = []
    real = loop.grpo_loss

    def spy(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "stats": stats})
        return loss, stats

    monkeypatch.setattr(loop, "grpo_loss", spy)
    return adapter, calls


def run_update(cfg, model, ref=None, adv=None, lr=0.0):
    from tempsamp.train.parallel import Parallel

    groups = fake_groups()
    adv = torch.tensor([[0.5, 2.0, -1.0], [1.0, -0.5, 1.5]], dtype=torch.float64) if adv is None else adv
    par = Parallel("ddp")  # one process: no process group, plain backward and optimizer step
    par.model, par.optimizer, par.max_grad_norm = model, torch.optim.SGD(model.parameters(), lr=lr), cfg.max_grad_norm
    log, applied = loop.update(cfg, model, ref, groups, adv, par, pad_id=0)
    return groups, adv, log, applied


# ---------------------------------------------------------------- temperature, KL, normaliser, rows


def test_kl_is_zero_for_an_exact_copy_at_temperature_0_7(fake):
    _, calls = fake
    model = FakePolicy()
    cfg = TrainConfig(temperature=0.7, beta=0.04, max_grad_norm=0.0)
    _, _, log, _ = run_update(cfg, model, ref=copy.deepcopy(model))
    assert [c["stats"].kl for c in calls] == [0.0, 0.0] and log.kl == [0.0, 0.0]
    assert log.kl_offpolicy == [0.0, 0.0]
    # hand case: the reference at T = 1 against the policy at T = 0.7 is not zero
    w = model.w.detach()
    d = unigram_logprobs(w, torch.tensor([4]), 1.0) - unigram_logprobs(w, torch.tensor([4]), 0.7)
    assert float(torch.exp(d) - d - 1) > 1e-4


def test_temperature_reaches_every_logprob(fake):
    adapter, _ = fake
    cfg = TrainConfig(temperature=0.7, beta=0.04, updates_per_rollout=2, offpolicy_loss="luffy", max_grad_norm=0.0)
    model = FakePolicy()
    run_update(cfg, model, ref=copy.deepcopy(model), lr=0.1)
    # per group: reference + old (no grad) + one per update pass
    assert len(adapter.temperatures) == 2 * (1 + 1 + 2)
    assert set(adapter.temperatures) == {0.7}


def test_token_mean_normaliser_counts_real_unmasked_tokens(fake):
    _, calls = fake
    run_update(TrainConfig(beta=0.0, max_grad_norm=0.0), FakePolicy())
    real_tokens = (4 + 2 + 1) + (2 + 3 + 5) - 2  # padding never counts; the GT row's two masked tokens neither
    assert [c["kwargs"]["normalizer"] for c in calls] == [real_tokens, real_tokens]
    calls.clear()
    run_update(TrainConfig(beta=0.0, aggregation="sequence_mean", max_grad_norm=0.0), FakePolicy())
    assert [c["kwargs"]["normalizer"] for c in calls] == [6, 6]
    assert {c["kwargs"]["aggregation"] for c in calls} == {"sequence_mean"}


def test_offpolicy_loss_settings_reach_the_loss(fake):
    _, calls = fake
    run_update(TrainConfig(beta=0.0, offpolicy_loss="luffy", luffy_gamma=0.3, clip_eps=0.1, clip_eps_high=0.3, max_grad_norm=0.0),
               FakePolicy())
    for c in calls:
        assert (c["kwargs"]["offpolicy_loss"], c["kwargs"]["luffy_gamma"]) == ("luffy", 0.3)
        assert (c["kwargs"]["clip_eps"], c["kwargs"]["clip_eps_high"]) == (0.1, 0.3)


def test_update_gradient_is_each_rows_advantage_times_its_likelihood(fake):
    """The whole wire at once: rows, advantages, flags, masks and normaliser, against a hand-written loss."""
    model = FakePolicy()
    groups, adv, _, _ = run_update(TrainConfig(beta=0.0, max_grad_norm=0.0), model)
    got = model.w.grad.clone()

    w = model.w.detach().clone().requires_grad_(True)
    total, n = 0.0, 0
    for g, a in zip(groups, adv):
        for row, ids in enumerate(g.completion_ids):
            keep = g.loss_masks[row] or [1.0] * len(ids)
            logp = unigram_logprobs(w, torch.tensor(ids), 1.0)
            total = total - float(a[row]) * (logp * torch.tensor(keep)).sum()
            n += sum(keep)
    (total / n).backward()
    torch.testing.assert_close(got, w.grad)
    # the spy agrees: each group's advantages and flags go in row order
    _, calls = fake
    for c, g, a in zip(calls, groups, adv):
        assert torch.equal(c["args"][1], a) and c["kwargs"]["offpolicy"].tolist() == g.offpolicy


def test_packed_groups_give_the_same_update_and_per_group_logs(fake):
    """rows_per_forward packing two groups into one forward: the same gradient, normaliser and
    per-group statistics as one group per forward, in fewer forwards."""
    adapter, calls = fake
    logs, grads, normalizers = [], [], []
    for rows in (0, 6):
        adapter.temperatures.clear()
        calls.clear()
        model = FakePolicy()
        cfg = TrainConfig(beta=0.04, temperature=0.7, rows_per_forward=rows, max_grad_norm=0.0)
        _, _, log, _ = run_update(cfg, model, ref=FakePolicy(1))
        logs.append(log)
        grads.append(model.w.grad.clone())
        normalizers.append([c["kwargs"]["normalizer"] for c in calls])
        forwards = len(adapter.temperatures)
        assert forwards == (4 if rows == 0 else 2)  # reference + policy, per group or per packed pair
    torch.testing.assert_close(grads[1], grads[0])
    assert normalizers[0] == normalizers[1] and len(normalizers[1]) == 2  # the loss is still per group
    for key in ("kl", "kl_offpolicy", "clip_fraction", "entropy"):
        assert len(getattr(logs[1], key)) == 2, key
        np.testing.assert_allclose(getattr(logs[1], key), getattr(logs[0], key), rtol=1e-6)
    np.testing.assert_allclose(logs[1].losses, logs[0].losses, rtol=1e-6)


def test_pack_groups_keeps_groups_whole():
    groups = [loop.Group(None, {}, [[1]] * n, [""] * n, [False] * n) for n in (4, 4, 3, 8, 1)]
    assert loop.pack_groups(groups, 0) == [[0], [1], [2], [3], [4]]
    assert loop.pack_groups(groups, 8) == [[0, 1], [2], [3], [4]]
    assert loop.pack_groups(groups, 11) == [[0, 1, 2], [3, 4]]
    assert loop.pack_groups(groups, 2) == [[0], [1], [2], [3], [4]]  # a group larger than the budget goes alone
    with pytest.raises(ValueError, match="rows_per_forward"):
        TrainConfig(rows_per_forward=-1).validate()


def test_logged_kl_separates_the_gt_row(fake):
    model, ref = FakePolicy(0), FakePolicy(1)
    _, _, log, _ = run_update(TrainConfig(beta=0.04, max_grad_norm=0.0), model, ref=ref)
    assert len(log.kl) == len(log.kl_offpolicy) == 2
    assert all(a != b for a, b in zip(log.kl, log.kl_offpolicy))


def test_several_updates_with_a_gt_row_are_refused_unless_luffy():
    with pytest.raises(ValueError, match="offpolicy_loss=luffy"):
        TrainConfig(updates_per_rollout=2, strategy="shaping").validate()
    TrainConfig(updates_per_rollout=2, strategy="shaping", offpolicy_loss="luffy").validate()
    TrainConfig(updates_per_rollout=2, strategy="grpo").validate()


# ---------------------------------------------------------------- config -> group_advantages


TASK = torch.tensor([[0.1, 0.9, 0.3, 1.0], [0.0, 0.0, 0.0, 0.95]], dtype=torch.float64)
OFF = torch.tensor([[False, False, False, True], [False, False, False, True]])


@pytest.mark.parametrize("key,value,strategy", [
    ("tau", 0.5, "shaping"),
    ("alpha1", 0.5, "shaping"),
    ("alpha2", 3.0, "shaping"),
    ("lambda_off", 2.0, "anchor"),
    ("offpolicy_scale", 0.5, "reward_scaling"),
    ("adv_std", "sample", "mixed"),
    ("adv_eps", 0.5, "mixed"),
    ("anchor_tied", "literal", "anchor"),
    ("strategy", "mixed", None),
])
def test_each_config_value_reaches_group_advantages(key, value, strategy):
    base = TrainConfig(strategy=strategy or "shaping")
    names = {"adv_std": "std", "adv_eps": "eps"}
    got = loop.advantages(TrainConfig(**{**vars(base), key: value}), TASK, torch.zeros_like(TASK), OFF)
    kwargs = {names.get(key, key): value} if key != "strategy" else {}
    want = group_advantages(TASK, OFF, value if key == "strategy" else base.strategy, **kwargs)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, loop.advantages(base, TASK, torch.zeros_like(TASK), OFF))  # the value matters here


def example(span=(2.0, 5.0)):
    return Example(qid="q", video_id="v", video_path=None, duration=8.0, query="q", spans=(span,))


def group_of(texts, offpolicy):
    return loop.Group(example(), {}, [[1]] * len(texts), texts, offpolicy, loss_masks=[None] * len(texts))


def test_format_bonus_reaches_the_advantages_in_cot_stages_only():
    texts = ["<think>red square</think><answer> 2 to 5 </answer>", "<answer> 2 to 5 </answer>",
             "<think>x</think><answer> 1 to 4 </answer>", build_offpolicy_completion((2.0, 5.0), COT)]
    groups = [group_of(texts, [False, False, False, True])]
    cfg = TrainConfig(format_weight=0.5)
    task, fmt, off, _ = loop.score(cfg, groups, True, loop.Counters())
    assert fmt.tolist() == [[0.5, 0.0, 0.5, 0.5]]
    with_bonus = loop.advantages(cfg, task, fmt, off)
    assert not torch.allclose(with_bonus, loop.advantages(cfg, task, torch.zeros_like(fmt), off))
    # rows 0 and 1 have the same IoU; only the format separates them
    assert with_bonus[0, 0] > with_bonus[0, 1]
    _, fmt_answer, _, _ = loop.score(cfg, groups, False, loop.Counters())
    assert fmt_answer.abs().sum() == 0


def test_gt_row_is_found_by_its_flag_not_its_position():
    texts = ["<answer> 0 to 1 </answer>", "<answer> 2.0 to 5.0 </answer>", "<answer> 3 to 7 </answer>", "<answer> 2 to 4 </answer>"]
    task, fmt, off, _ = loop.score(TrainConfig(), [group_of(texts, [False, True, False, False])], False, loop.Counters())
    assert off.tolist() == [[False, True, False, False]]
    adv = loop.advantages(TrainConfig(strategy="anchor"), task, fmt, off)
    on = adv[0, [0, 2, 3]]
    assert float(adv[0, 1]) == pytest.approx(1.2 * float(on.max()))
    assert float(on.sum()) == pytest.approx(0.0, abs=1e-9)


def test_highlight_f2_reading_reaches_the_reward():
    hl = Example(qid="h", video_id="v", video_path=None, duration=40.0, query="q", spans=((4.0, 10.0), (24.0, 30.0)),
                 task="highlights", clip_ids=(2, 3, 4, 12, 13, 14), saliency=((4, 4, 4),) * 3 + ((2, 2, 2),) * 3)
    texts = ["<answer> 0.0 to 40.0 (score 4) </answer>", "<answer> 4.0 to 10.0 (score 4) </answer>", "nothing"]
    g = loop.Group(hl, {}, [[1]] * 3, texts, [False] * 3, loss_masks=[None] * 3)
    windows, _, _, _ = loop.score(TrainConfig(), [g], False, loop.Counters())
    clips, _, _, _ = loop.score(TrainConfig(highlight_f2="clips"), [g], False, loop.Counters())
    assert windows[0, 0] < clips[0, 0] and windows[0, 0] < windows[0, 1]
    assert windows[0, 2] == clips[0, 2] == 0.0


# ---------------------------------------------------------------- rollout: the prompt and the GT row


class FakeEngine:
    def sample(self, prompt, frames, fps, text, *, num_samples, seed):
        return [[5, 6]] * num_samples, ["<answer> 1 to 2 </answer>"] * num_samples

    def sample_batch(self, requests):  # the loop's call: the whole step at once
        return [self.sample(r.prompt_inputs, r.frames, r.fps, r.text, num_samples=r.num_samples, seed=r.seed) for r in requests]


class FakeVideo:
    frames, fps = np.zeros((2, 4, 4, 3), np.uint8), 2.0

    def source_frames(self):  # as tempsamp.video's Video without the source's frame indices
        return None


@pytest.mark.parametrize("mode", ["answer", "cot"])
def test_rollout_asks_with_the_stage_prompt_and_appends_the_gt(mode, monkeypatch):
    asked = []
    monkeypatch.setattr(qwen_vl, "build_prompt", lambda processor, text, *a, **k: asked.append(text) or {"text": text})
    monkeypatch.setattr(qwen_vl, "completion_ids", lambda processor, text: [7] * 3)
    monkeypatch.setattr(qwen_vl, "completion_loss_mask", lambda processor, text, span: [1.0, 0.0, 1.0])
    cfg = TrainConfig(num_generations=4)
    g = loop.rollout(cfg, FakeEngine(), None, "cpu", example(), mode, 0, lambda ex: FakeVideo())
    assert ("<think>" in asked[0]) == (mode == "cot")
    assert g.offpolicy == [False, False, False, True] and g.texts[-1].startswith("<think>") == (mode == "cot")
    assert g.loss_masks == [None, None, None, [1.0, 0.0, 1.0] if mode == "cot" else None]
    g_train = loop.rollout(TrainConfig(num_generations=4, gt_think_loss="train"), FakeEngine(), None, "cpu", example(), mode,
                           0, lambda ex: FakeVideo())
    assert g_train.loss_masks[-1] is None


def test_gt_think_sentence_is_masked_token_exactly(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = build_offpolicy_completion((12.5, 17.8), COT)
    ids = qwen_vl.completion_ids(tokenizer, text)
    mask = loop.gt_loss_mask(TrainConfig(gt_think_loss="mask"), tokenizer, text, COT)
    assert len(mask) == len(ids) and mask[-1] == 1.0
    masked = [i for i, m in zip(ids, mask) if m == 0.0]
    kept = tokenizer.decode([i for i, m in zip(ids[:-1], mask) if m == 1.0])
    assert tokenizer.decode(masked).strip() == GT_THINK
    assert kept.replace(" ", "") == "<think></think><answer>12.5to17.8</answer>"


# ---------------------------------------------------------------- what is logged


def test_step_scalars_log_onpolicy_kl_and_the_zero_gt_advantage_fraction():
    upd = loop.UpdateLog(losses=[0.1], kl=[0.01, 0.03], kl_offpolicy=[0.5, 0.7], clip_fraction=[0.0, 0.0], entropy=[1.0, 1.0])
    groups = [{"slot": s, "offpolicy": [False, False, True], "task": [0.1, 0.2, 1.0], "format": [0, 0, 0],
               "parsed": [True, True, True], "iou": [0.1, 0.2, 1.0], "adv": adv, "lengths": [3, 3, 3], "generated_tokens": 6}
              for s, adv in enumerate(([-1.0, 1.0, 1.2], [0.5, -0.5, 0.0]))]
    scalars = loop.step_scalars(TrainConfig(), [{"groups": groups, "update": upd, "rollout_seconds": 1.0}], cot=False)
    assert scalars["loss/kl"] == pytest.approx(0.02) and scalars["loss/kl_offpolicy"] == pytest.approx(0.6)
    assert scalars["adv/frac_offpolicy_zero"] == pytest.approx(0.5)


def test_paper_recipes_average_per_sequence():
    from tempsamp.train.config import RECIPES_DIR, load_config

    for recipe in sorted(RECIPES_DIR.glob("*.yaml")):
        if recipe.stem != "tiny_cpu":
            assert load_config(recipe.stem).aggregation == "sequence_mean", recipe.stem


def test_anchor_tied_group_still_teaches_the_gt():
    r = torch.tensor([[0.0] * 7 + [1.0]], dtype=torch.float64)
    off = torch.tensor([[False] * 7 + [True]])
    literal = group_advantages(r, off, "anchor", anchor_tied="literal")
    joint = group_advantages(r, off, "anchor", anchor_tied="joint")
    assert literal.abs().sum() == 0
    assert float(joint[0, 7]) == pytest.approx(math.sqrt(7), rel=1e-5) and joint[0, :7].abs().sum() == 0


# ---------------------------------------------------------------- sampler log-probs: mismatch and truncated IS


def groups_with_sampler_logprobs(model, shift: float):
    """fake_groups with a sampler whose log-prob of every drawn token is the learner's + shift (+ row index / 10);
    the GT rows have none, as with vLLM."""
    groups = fake_groups()
    for g in groups:
        g.sampler_logprobs = [
            None if off else (unigram_logprobs(model.w.detach(), torch.tensor(ids), 1.0) + shift + row / 10).tolist()
            for row, (ids, off) in enumerate(zip(g.completion_ids, g.offpolicy))
        ]
    return groups


@pytest.mark.parametrize("tis_cap", [None, 1.05])
def test_sampler_logprobs_give_the_mismatch_and_the_truncated_is_weights(fake, tis_cap):
    from tempsamp.train.parallel import Parallel

    model = FakePolicy()
    groups = groups_with_sampler_logprobs(model, shift=-0.05)
    adv = torch.tensor([[0.5, 2.0, -1.0], [1.0, -0.5, 1.5]], dtype=torch.float64)
    par = Parallel("ddp")
    par.model, par.optimizer, par.max_grad_norm = model, torch.optim.SGD(model.parameters(), lr=0.0), 0.0
    cfg = TrainConfig(beta=0.0, max_grad_norm=0.0, tis_cap=tis_cap, rollout_engine="vllm")
    log, _ = loop.update(cfg, model, None, groups, adv, par, pad_id=0)

    # learner - sampler = 0.05 - row / 10 on every token of the on-policy rows; the GT rows are left out
    diffs = [abs(0.05 - row / 10) for g in groups for row, (ids, off) in enumerate(zip(g.completion_ids, g.offpolicy))
             if not off for _ in ids]
    assert log.mismatch.tokens == len(diffs) == 4 + 1 + 2 + 3
    assert log.mismatch.abs_sum == pytest.approx(sum(diffs)) and log.mismatch.max == pytest.approx(max(diffs))
    assert log.mismatch.over_0_1 == sum(d > 0.1 for d in diffs)
    scalars = loop.mismatch_scalars([log.mismatch])
    assert scalars["rollout/logprob_abs_diff"] == pytest.approx(sum(diffs) / len(diffs))
    assert scalars["rollout/logprob_diff_frac_gt_0.1"] == pytest.approx(sum(d > 0.1 for d in diffs) / len(diffs))

    # the gradient: each on-policy token weighted by min(exp(learner - sampler), cap); GT tokens by 1
    w = model.w.detach().clone().requires_grad_(True)
    total, n = 0.0, 0
    for g, a in zip(groups, adv):
        for row, ids in enumerate(g.completion_ids):
            keep = torch.tensor(g.loss_masks[row] or [1.0] * len(ids))
            weight = 1.0 if g.offpolicy[row] or tis_cap is None else min(math.exp(0.05 - row / 10), tis_cap)
            logp = unigram_logprobs(w, torch.tensor(ids), 1.0)
            total = total - float(a[row]) * weight * (logp * keep).sum()
            n += float(keep.sum())
    (total / n).backward()
    torch.testing.assert_close(model.w.grad, w.grad)


def test_no_sampler_logprobs_no_mismatch_scalars(fake):
    _, _, log, _ = run_update(TrainConfig(beta=0.0), FakePolicy())
    assert log.mismatch.tokens == 0 and loop.mismatch_scalars([log.mismatch]) == {}


def test_tis_cap_needs_a_separate_sampler():
    with pytest.raises(ValueError, match="tis_cap"):
        TrainConfig(tis_cap=2.0).validate()
    with pytest.raises(ValueError, match="tis_cap"):
        TrainConfig(tis_cap=0.0, rollout_engine="vllm").validate()
    TrainConfig(tis_cap=2.0, rollout_engine="vllm").validate()
