"""`tempsamp demo`: the verdict logic on made-up numbers, and the whole pipeline at a very small size."""

import json

import pytest

from tempsamp.demo import STRATEGIES, DemoSize, run_demo, verdict


def fake(miou_by_strategy: dict, top1_by_strategy: dict):
    runs = {s: [{"mIoU": m, "R1@0.3": m, "R1@0.5": m, "R1@0.7": m} for m in ms] for s, ms in miou_by_strategy.items()}
    curves = {s: [[{"iou/top1_onpolicy": first}] * 5 + [{"iou/top1_onpolicy": last}] * 5 for first, last in pairs]
              for s, pairs in top1_by_strategy.items()}
    return runs, curves


def test_verdict_reads_the_paper_claims_off_the_numbers():
    runs, curves = fake(
        {"grpo": [40, 42], "reward_scaling": [50, 52], "anchor": [55, 57], "shaping": [60, 62]},
        {"grpo": [(0.3, 0.35)] * 2, "reward_scaling": [(0.3, 0.65)] * 2, "anchor": [(0.3, 0.7)] * 2, "shaping": [(0.3, 0.8)] * 2},
    )
    v = verdict(runs, curves)
    assert v["order_holds"] and v["order_resolved"] and v["guided_beats_grpo"]
    assert v["observed_order"] == ["shaping", "anchor", "reward_scaling", "grpo"]
    assert v["guided_top1_above_0.6"] and v["grpo_top1_below_0.6"]
    assert v["top1_first_last"]["shaping"] == pytest.approx((0.3, 0.8))
    assert v["largest_std"] == pytest.approx(1.0)


def test_verdict_does_not_call_noise_an_ordering():
    runs, curves = fake(
        {"grpo": [50, 58], "reward_scaling": [52, 56], "anchor": [51, 58], "shaping": [55, 56]},
        {s: [(0.5, 0.7)] * 2 for s in STRATEGIES},
    )
    v = verdict(runs, curves)
    assert v["order_holds"]  # 55.5 >= 54.5 >= 54 >= 54 ...
    assert not v["order_resolved"]  # ... but every gap is inside a 4-point seed spread
    assert not v["grpo_top1_below_0.6"]


@pytest.mark.slow
def test_demo_end_to_end_at_a_tiny_size(tmp_path):
    size = DemoSize(n_videos=10, seeds=1, sft_steps=2, rl_steps=1, cot_steps=1, eval_queries=2,
                    queries_per_step=1, num_generations=3, max_new_tokens=8, cot_max_new_tokens=8)
    out = run_demo(tmp_path / "report", work_dir=tmp_path / "work", size=size)
    report = (out / "report.md").read_text()
    for strategy in STRATEGIES:
        assert f"| {strategy} |" in report
    assert "mixed-oracle (UPPER BOUND, uses GT)" in report and "Does the paper's claim hold here?" in report
    assert (out / "reward.png").stat().st_size > 0 and (out / "top1_iou.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == set(STRATEGIES) and len(results["cot"]) == 1
    assert set(results["verdict"]) >= {"order_holds", "guided_beats_grpo", "top1_first_last"}
    # a second run reuses the data, the start model and the finished runs
    marker = (tmp_path / "work" / "start-model" / "tempsamp_sft.json").stat().st_mtime_ns
    run_demo(tmp_path / "report", work_dir=tmp_path / "work", size=size)
    assert (tmp_path / "work" / "start-model" / "tempsamp_sft.json").stat().st_mtime_ns == marker
