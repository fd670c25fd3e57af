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


def test_report_states_which_strategy_differences_are_significant(tmp_path):
    from tempsamp.data.readers import load_examples
    from tempsamp.demo import QUICK, strategy_significance, write_report

    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"video": f"v{i}.mp4", "duration": 20.0, "query": "q", "spans": [[4, 8]]}) + "\n"
                          for i in range(40)))
    examples = load_examples(gt, "jsonl")
    exact = {"shaping": (35, 36), "anchor": (34, 35), "reward_scaling": (20, 21), "grpo": (5, 6)}  # per seed
    predictions = {}
    for strategy, per_seed in exact.items():
        predictions[strategy] = []
        for seed, good in enumerate(per_seed):
            path = tmp_path / f"{strategy}-{seed}.jsonl"
            path.write_text("".join(json.dumps({"qid": ex.qid, "pred_span": [4, 8] if i < good else [12, 16]}) + "\n"
                                    for i, ex in enumerate(examples)))
            predictions[strategy].append(path)
    hybrid = {"answer": predictions["anchor"], "cot": predictions["grpo"], "mixed": predictions["shaping"]}
    significance = strategy_significance(predictions, examples, n_boot=2000, hybrid=hybrid)
    by_pair = {tuple(e["pair"]): e["metrics"]["mIoU"] for e in significance}
    assert by_pair[("shaping", "anchor")]["diff"] == pytest.approx(100 * 2 / 80)
    assert not by_pair[("shaping", "anchor")]["significant"]
    assert by_pair[("anchor", "reward_scaling")]["significant"] and by_pair[("reward_scaling", "grpo")]["significant"]

    runs, curves = fake({s: [100 * g / 40 for g in exact[s]] for s in STRATEGIES}, {s: [(0.5, 0.7)] * 2 for s in STRATEGIES})
    cot = [{m: runs["shaping"][0] for m in ("answer", "cot", "mixed", "mixed-oracle")}]
    v = write_report(tmp_path, QUICK, runs["grpo"][0], runs, curves, "shaping", cot, 1.0, {}, significance=significance)
    assert v["order_holds"] and not v["order_resolved"]  # shaping > anchor by 2.5 points, inside the interval
    assert v["guided_beats_grpo_significantly"]
    report = (tmp_path / "report.md").read_text()
    assert "## Which differences are significant?" in report
    assert "| shaping - anchor | +2.5 [" in report and "| reward_scaling - grpo | **+" in report
    assert "not every gap in the paper's order is significant" in report
    assert "| hybrid cot - hybrid answer | **-" in report and "| hybrid mixed - hybrid answer | +2.5 [" in report


@pytest.mark.slow
def test_curation_comparison_end_to_end_at_a_tiny_size(tmp_path):
    """`tempsamp demo --compare-curation` at a very small size: every arm trains until the same
    generation budget, the selected arms on the selected half, and the report has every arm and pair."""
    from tempsamp.curation_demo import PAIRS, TEMPSAMP_STRATEGY, arms, run_curation_demo

    size = DemoSize(n_videos=10, seeds=1, sft_steps=2, rl_steps=1, cot_steps=1, eval_queries=3,
                    queries_per_step=2, num_generations=3, max_new_tokens=8, cot_max_new_tokens=8)
    out = run_curation_demo(tmp_path / "report", work_dir=tmp_path / "work", size=size)
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == set(arms(TEMPSAMP_STRATEGY))
    for name in arms(TEMPSAMP_STRATEGY):
        assert f"| {name} |" in report
        (run,) = results["results"][name]
        assert run["tokens"] >= results["budget"] and run["steps"] >= 1  # each stopped by the budget
    assert [entry["pair"] for entry in results["significance"]] == [list(pair) for pair in PAIRS]
    assert all(0.0 <= entry["metrics"]["mIoU"]["p"] <= 1.0 for entry in results["significance"])
    runs = {p.name.split("-seed")[0]: p for p in (tmp_path / "work" / "curation").iterdir() if "-seed" in p.name}
    n_train = len(json.loads((runs["grpo"] / "selection.json").read_text())["qids"])
    for name in ("grpo+selected", "tempsamp+selected"):
        assert len(json.loads((runs[name] / "selection.json").read_text())["qids"]) == n_train // 2


def test_compare_curation_flag_runs_the_comparison(monkeypatch, tmp_path):
    import tempsamp.curation_demo as curation_demo
    from tempsamp.cli import main

    calls = []
    monkeypatch.setattr(curation_demo, "run_curation_demo", lambda *a, **k: calls.append((a, k)))
    assert main(["demo", "--compare-curation", "--out", str(tmp_path / "c"), "--threads", "2"]) == 0
    (args, kwargs), = calls
    assert args[0] == str(tmp_path / "c") and kwargs["threads"] == 2
