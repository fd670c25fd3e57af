"""Recipes: every shipped recipe loads, inheritance and overrides work, bad keys are named."""

import dataclasses

import pytest

from tempsamp.train.config import RECIPES_DIR, TrainConfig, load_config
from tempsamp.train.schedule import sample_seed, shard, step_queries

SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads(name):
    cfg = load_config(name)
    assert cfg.total_steps > 0


def test_paper_defaults_in_the_main_recipes():
    for name in ("charades_tempsamp", "activitynet_tempsamp", "qvhighlights_tempsamp"):
        cfg = load_config(name)
        assert (cfg.num_generations, cfg.tau, cfg.alpha1, cfg.alpha2, cfg.lambda_off, cfg.fps) == (8, 0.8, 0.01, 1.0, 1.2, 2.0)
        assert cfg.strategy == "shaping" and [s["mode"] for s in cfg.stages] == ["answer", "cot"]
    assert load_config("charades_grpo").strategy == "grpo"
    assert {load_config(f"charades_ablation_{r}").strategy for r in ("reward_scaling", "anchor", "shaping")} == {"reward_scaling", "anchor", "shaping"}
    # the ablation rows follow the paper as written: its anchoring gives A_G = 0 in a tied group
    assert load_config("charades_ablation_anchor").anchor_tied == "literal"
    # the paper recipes show the model what VideoChat-R1 / TimeZero show theirs (docs/evaluation.md)
    paper = load_config("charades_tempsamp")
    assert (paper.input_preset, paper.frame_sampling, paper.total_pixels) == ("videochat_r1", "qwen", 3584 * 28 * 28)


def test_overrides_and_inheritance():
    cfg = load_config("charades_grpo", ["learning_rate=2e-6", "stages=[{mode: cot, steps: 3}]", "clip_eps_high=0.28"])
    assert cfg.learning_rate == 2e-6 and cfg.total_steps == 3 and cfg.clip_eps_high == 0.28
    assert cfg.dataset == "charades"  # inherited from charades_tempsamp


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="unknown config key.*learning_rat"):
        load_config("tiny_cpu", ["learning_rat=1"])
    with pytest.raises(ValueError, match="strategy"):
        load_config("tiny_cpu", ["strategy=ppo"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("tiny_cpu", ["strategy"])
    with pytest.raises(FileNotFoundError, match="shipped recipes"):
        load_config("no_such_recipe")


def test_stage_at_follows_the_schedule():
    cfg = TrainConfig(stages=[{"mode": "answer", "steps": 2}, {"mode": "cot", "steps": 1}])
    assert [cfg.stage_at(s)["mode"] for s in range(3)] == ["answer", "answer", "cot"]


def test_step_queries_cover_each_epoch_once_and_are_deterministic():
    n, q = 10, 3
    seen = [i for step in range(10) for i in step_queries(n, step, q, seed=1)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert step_queries(n, 4, q, seed=1) == step_queries(n, 4, q, seed=1)
    assert step_queries(n, 4, q, seed=1) != step_queries(n, 4, q, seed=2)


def test_sharding_keeps_groups_whole_and_disjoint():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    assert sample_seed(0, 5, 2) == sample_seed(0, 5, 2) != sample_seed(0, 5, 3)


def test_values_take_their_field_type():
    cfg = load_config("tiny_cpu", ["learning_rate=3e-5", "clip_eps_high=none", "num_generations=6"])
    assert cfg.learning_rate == 3e-5 and cfg.clip_eps_high is None and cfg.num_generations == 6
    with pytest.raises(ValueError, match="learning_rate"):
        load_config("tiny_cpu", ["learning_rate=fast"])


def test_weight_dtype_keeps_float32_master_weights_for_full_fine_tuning():
    import torch

    from tempsamp.train.loop import weight_dtype

    cfg = TrainConfig()
    assert weight_dtype(cfg, "cpu") == torch.float32
    assert weight_dtype(cfg, "cuda") == torch.float32  # full FT: lr 1e-6 is below bf16 resolution
    assert weight_dtype(TrainConfig(distributed="fsdp"), "cuda") == torch.float32  # FSDP computes in bf16 from fp32 shards
    for zero in ("zero2", "zero3", "zero3_offload"):  # DeepSpeed keeps its own fp32 master
        assert weight_dtype(TrainConfig(distributed=zero), "cuda") == torch.bfloat16
        assert weight_dtype(TrainConfig(distributed=zero), "cpu") == torch.float32
    assert weight_dtype(TrainConfig(lora=True), "cuda") == torch.bfloat16  # frozen base
    assert weight_dtype(TrainConfig(dtype="bfloat16"), "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="distributed"):
        TrainConfig(distributed="fsdp1").validate()
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp8").validate()


def test_collective_timeout_must_be_a_positive_finite_number_of_seconds():
    assert load_config("tiny_cpu", ["collective_timeout_s=30"]).collective_timeout_s == 30
    for bad in ("0", "-5", "inf"):
        with pytest.raises(ValueError, match="collective_timeout_s"):
            load_config("tiny_cpu", [f"collective_timeout_s={bad}"])


def _out_of_range(key: str):
    """A value just outside ``key``'s range (RANGES), found by probing the range's own tests."""
    from tempsamp.train.config import RANGES

    low, high, _ = RANGES[key]
    is_int = "int" in {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}[key]
    for value in (-1, 0, -0.5) if low else ():
        if not low(value):
            return value
    for value in (2**32, 1.5, 2) if high else ():
        if not high(value) and (not is_int or float(value).is_integer()):
            return value
    raise AssertionError(f"{key}: no value found outside its range")


def test_every_numeric_setting_has_a_range_and_the_cli_refuses_values_outside_it(capsys):
    """Each int and float TrainConfig key is in RANGES; through `tempsamp train`, a value outside its range
    (and NaN) is one line naming the key, exit 2."""
    from tempsamp.cli import main
    from tempsamp.train.config import RANGES

    numeric = [f.name for f in dataclasses.fields(TrainConfig) if "int" in str(f.type) or "float" in str(f.type)]
    assert sorted(numeric) == sorted(RANGES)
    for key in numeric:
        value = _out_of_range(key)
        for given in (value, ".nan"):
            code = main(["train", "tiny_cpu", "--print-config", f"{key}={given}"])
            err = capsys.readouterr().err
            assert code == 2 and "Traceback" not in err, (key, err)
            last = err.strip().splitlines()[-1]
            assert last.startswith("tempsamp train: error: ") and f" {key}: " in last, (key, given, err)
            if given == value or "float" in str(TrainConfig.__dataclass_fields__[key].type):
                assert "is out of range: must be" in last, (key, given, last)
            else:  # NaN for an integer key
                assert "is not an integer" in last, (key, last)
    # the examples, as a user types them
    for override, needle in (("beta=-0.5", "beta: -0.5 is out of range: must be >= 0"),
                             ("few_shot_fraction=2", "few_shot_fraction: 2.0 is out of range: must be a fraction in (0, 1]"),
                             ("save_every=0", "save_every: 0 is out of range: must be >= 1 step"),
                             ("max_pixels=100", "max_pixels: 100 is below min_pixels (3136)")):
        assert main(["train", "tiny_cpu", "--print-config", override]) == 2
        assert needle in capsys.readouterr().err


def test_every_numeric_flag_of_the_cli_checks_its_range(capsys):
    """Every int/float option of every subcommand uses a range-checking type; the issue's cases say why."""
    import argparse

    from tempsamp.cli import build_parser, main
    from tempsamp.errors import RANGE_TYPES

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
            elif action.type in (int, float):
                yield path, action.option_strings
            elif action.type is not None and getattr(action.type, "__module__", "") == "tempsamp.errors":
                assert action.type in RANGE_TYPES, (path, action.option_strings)

    assert list(walk(build_parser(), [])) == []  # no bare int/float left
    for argv, needle in ((["train", "tiny_cpu", "--num-processes", "0"], "argument --num-processes: must be >= 1, got 0"),
                         (["view", "x", "--frames", "-3"], "argument --frames: must be >= 0, got -3"),
                         (["eval", "--model", "m", "--annotations", "a", "--out", "o", "--temperature", "-1"],
                          "argument --temperature: must be a number >= 0, got -1"),
                         (["compare", "a", "b", "--n-boot", "-5"], "argument --n-boot: must be >= 1, got -5")):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.strip().splitlines()[-1].endswith(needle), err


def test_overrides_are_accepted_after_options(capsys):
    from tempsamp.cli import main

    assert main(["train", "tiny_cpu", "--print-config", "output_dir=after", "beta=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "output_dir: after" in printed and "beta: 0.5" in printed
    with pytest.raises(SystemExit):
        main(["train", "tiny_cpu", "--print-config", "--nonsense"])
    assert "unrecognized arguments: --nonsense" in capsys.readouterr().err


def test_threads_never_exceed_the_cores_shared_among_the_local_processes(monkeypatch):
    import os

    import torch

    from tempsamp.threads import choose_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)  # torch's default on a bigger machine than this process may use
        assert choose_threads(0) == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two trainers on this machine: two cores each
        assert choose_threads(0) == 2
        torch.set_num_threads(1)  # OMP_NUM_THREADS=1 (torchrun's default for its workers): kept
        assert choose_threads(0) == 1
        assert choose_threads(3) == 3  # threads=3: as asked
    finally:
        torch.set_num_threads(before)
