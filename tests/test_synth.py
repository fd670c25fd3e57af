"""The synthetic benchmark (tempsamp.data.synth): exact spans read back from 2-FPS frames, splits, determinism."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from tempsamp.data.synth import COLOURS, SynthConfig, add_synth_arguments, run_synth, synthesize  # noqa: E402
from tempsamp.video import sample_frames  # noqa: E402

BUDGET = dict(min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=56 * 56 * 512)  # what the demo samples


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scenes_of(out: Path) -> dict[str, dict]:
    return {s["video_id"]: s for s in read_jsonl(out / "scenes.jsonl")}


def all_rows(out: Path) -> dict[str, list[dict]]:
    return {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "val", "test")}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def lane_pixels(frame: np.ndarray, lane: int, n_lanes: int, rgb) -> np.ndarray:
    """Mask of the lane's pixels within a small distance of a named colour."""
    h = frame.shape[0]
    band = frame[int(lane * h / n_lanes):int((lane + 1) * h / n_lanes)].astype(int)
    return np.abs(band - np.asarray(rgb)).sum(-1) < 60


def object_mask(frame, scene, obj_index):
    """Pixels of the object in its lane, whatever colour it currently has."""
    obj, n = scene["objects"][obj_index], len(scene["objects"])
    colours = {obj["colour"]} | {e["param"] for e in scene["events"] if e["obj"] == obj_index and e["kind"] == "recolor"}
    return np.any([lane_pixels(frame, obj["lane"], n, COLOURS[c]) for c in colours], axis=0)


# ---------------------------------------------------------------- determinism and layout


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = digest(synthesize(tmp_path / "a", n=6, seed=3))
    b = digest(synthesize(tmp_path / "b", n=6, seed=3))
    c = digest(synthesize(tmp_path / "c", n=6, seed=4))
    assert a == b
    assert {k for k in a if k.startswith("videos/")} == {f"videos/synth{i:05d}.mp4" for i in range(6)}
    assert a["videos/synth00000.mp4"] != c["videos/synth00000.mp4"]
    assert a["train.jsonl"] != c["train.jsonl"]


def test_highlights_are_deterministic_too(tmp_path):
    assert digest(synthesize(tmp_path / "a", n=4, seed=1, task="highlights")) == \
        digest(synthesize(tmp_path / "b", n=4, seed=1, task="highlights"))


def test_splits_hold_disjoint_videos_and_every_video(tmp_path):
    out = synthesize(tmp_path / "s", n=20, seed=0)
    rows = all_rows(out)
    videos = {name: {r["video_id"] for r in split} for name, split in rows.items()}
    assert videos["train"] and videos["val"] and videos["test"]
    assert not (videos["train"] & videos["val"]) and not (videos["train"] & videos["test"]) and not (videos["val"] & videos["test"])
    assert set().union(*videos.values()) == {f"synth{i:05d}" for i in range(20)}
    assert (len(videos["train"]), len(videos["val"]), len(videos["test"])) == (14, 2, 4)
    for split in rows.values():
        for r in split:
            assert (out / r["video"]).is_file() and r["task"] == "grounding" and r["duration"] == 20.0
            assert len(r["spans"]) == 1 and 0 <= r["spans"][0][0] < r["spans"][0][1] <= r["duration"]
    qids = [r["qid"] for split in rows.values() for r in split]
    assert len(qids) == len(set(qids)) == 20 * 4


def test_rows_load_with_the_projects_jsonl_reader(tmp_path):
    readers = pytest.importorskip("tempsamp.data.readers")
    out = synthesize(tmp_path / "s", n=5, seed=0)
    examples = readers.load_examples(out / "train.jsonl", "jsonl")
    assert len(examples) == len(read_jsonl(out / "train.jsonl"))
    assert all(Path(ex.video_path).is_file() and ex.task == "grounding" for ex in examples)
    hl = synthesize(tmp_path / "h", n=5, seed=0, task="highlights")
    examples = readers.load_examples(hl / "train.jsonl", "jsonl")
    assert examples and all(ex.task == "highlights" and len(ex.clip_ids) == len(ex.saliency) for ex in examples)


def test_query_text_does_not_give_the_span_away(tmp_path):
    out = synthesize(tmp_path / "s", n=30, seed=0)
    spans_by_query = defaultdict(set)
    for split in all_rows(out).values():
        for r in split:
            spans_by_query[r["query"]].add(tuple(r["spans"][0]))
    repeated = [q for q, spans in spans_by_query.items() if len(spans) > 1]
    assert len(repeated) >= 5  # the same question has different answers in different videos
    starts = [r["spans"][0][0] for split in all_rows(out).values() for r in split]
    assert np.std(starts) > 3.0  # spread over the 20-s videos, not parked at one place


def test_reuses_a_finished_folder_and_regenerates_on_other_parameters(tmp_path):
    out = synthesize(tmp_path / "s", n=4, seed=0)
    before = (out / "videos" / "synth00000.mp4").stat().st_mtime_ns
    synthesize(tmp_path / "s", n=4, seed=0)
    assert (out / "videos" / "synth00000.mp4").stat().st_mtime_ns == before
    synthesize(tmp_path / "s", n=4, seed=0, duration=(12.0, 12.0))
    assert all(r["duration"] == 12.0 for r in read_jsonl(out / "train.jsonl"))


# ---------------------------------------------------------------- spans are exact in the sampled frames


@pytest.mark.parametrize("kind", ["appear", "move", "grow", "recolor"])
def test_each_event_is_visible_exactly_inside_its_span_at_2_fps(tmp_path, kind):
    out = synthesize(tmp_path / kind, n=6, seed=11, kinds=(kind,), queries_per_video=2, distractors=1)
    scenes = scenes_of(out)
    checked = 0
    for split in all_rows(out).values():
        for row in split:
            scene = scenes[row["video_id"]]
            event = next(e for e in scene["events"] if e["qid"] == row["qid"])
            assert event["kind"] == kind and [event["start"], event["end"]] == row["spans"][0]
            video = sample_frames(out / row["video"], fps=2.0, **BUDGET)
            assert video.frames.shape[1:] == (56, 56, 3)
            t = np.arange(len(video)) / video.fps
            np.testing.assert_allclose(video.timestamps, t, atol=1e-6)
            inside = (event["start"] <= t) & (t < event["end"])
            obj = scene["objects"][event["obj"]]
            if kind == "appear":
                seen = np.array([object_mask(f, scene, event["obj"]).sum() > 15 for f in video.frames])
                assert np.array_equal(seen, inside), (row, seen.astype(int), inside.astype(int))
            elif kind == "recolor":
                target = np.array([lane_pixels(f, obj["lane"], len(scene["objects"]), COLOURS[event["param"]]).sum() > 15
                                   for f in video.frames])
                assert np.array_equal(target, inside), (row, target.astype(int), inside.astype(int))
            elif kind == "grow":
                area = np.array([object_mask(f, scene, event["obj"]).sum() for f in video.frames])
                big = area > (area.min() + area.max()) / 2
                assert np.array_equal(big, inside), (row, area, inside.astype(int))
            else:  # move: the object's centre shifts between consecutive samples exactly while inside
                xs = np.array([np.nonzero(object_mask(f, scene, event["obj"]))[1].mean() for f in video.frames])
                step = np.diff(xs)
                moving = (event["start"] <= t[:-1]) & (t[1:] <= event["end"])
                sign = -1 if event["param"] == "left" else 1
                own = np.abs(step) > 1.0
                assert np.all(sign * step[moving] > 1.0), (row, step)
                # outside this move the object may only move in its other (distractor) move
                other = [e for e in scene["events"] if e["obj"] == event["obj"] and e["kind"] == "move" and e is not event]
                for i in np.nonzero(own & ~moving)[0]:
                    assert any(e["start"] <= t[i] and t[i + 1] <= e["end"] for e in other), (row, i, step)
            checked += 1
    assert checked == 12


def test_highlight_rows_are_valid_qvhighlights_rows(tmp_path):
    out = synthesize(tmp_path / "h", n=12, seed=5, task="highlights", duration=(30.0, 30.0))
    scenes = scenes_of(out)
    multi = 0
    for split in all_rows(out).values():
        for row in split:
            assert row["task"] == "highlights" and row["duration"] == 30.0
            spans = row["spans"]
            multi += len(spans) > 1
            assert all(s % 2 == 0 and e % 2 == 0 and 0 <= s < e <= 30 for s, e in spans)
            expected_clips = [c for s, e in spans for c in range(int(s) // 2, int(e) // 2)]
            assert row["clip_ids"] == expected_clips
            assert len(row["saliency"]) == len(row["clip_ids"])
            assert all(len(s) == 3 and all(isinstance(v, int) and 0 <= v <= 4 for v in s) for s in row["saliency"])
            # the object is on screen exactly in the relevant windows (2-FPS frames)
            scene = scenes[row["video_id"]]
            obj_index = next(e["obj"] for e in scene["events"] if e["qid"] == row["qid"])
            video = sample_frames(out / row["video"], fps=2.0, **BUDGET)
            t = np.arange(len(video)) / video.fps
            inside = np.any([(s <= t) & (t < e) for s, e in spans], axis=0)
            seen = np.array([object_mask(f, scene, obj_index).sum() > 15 for f in video.frames])
            assert np.array_equal(seen, inside), row["qid"]
            # saliency: clips where the object is enlarged score highest
            grow = [(e["start"], e["end"]) for e in scene["events"] if e["obj"] == obj_index and e["kind"] == "grow"]
            for clip, scores in zip(row["clip_ids"], row["saliency"]):
                enlarged = any(g0 <= 2 * clip < g1 for g0, g1 in grow)
                assert (min(scores) >= 3) if enlarged else (max(scores) <= 3)
    assert multi >= 1  # some queries have more than one window, as in QVHighlights


# ---------------------------------------------------------------- knobs and CLI


def test_long_videos_and_many_distractors(tmp_path):
    out = synthesize(tmp_path / "long", n=3, seed=0, duration=(120.0, 180.0), event_length=(2.0, 4.0),
                     objects=4, distractors=12, queries_per_video=4)
    for scene in scenes_of(out).values():
        assert 120 <= scene["duration"] <= 180 and len(scene["events"]) == 16
        assert sum(e["qid"] is not None for e in scene["events"]) == 4
        for e in scene["events"]:
            assert 2.0 <= e["end"] - e["start"] <= 4.0


def test_impossible_requests_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="cannot fit"):
        synthesize(tmp_path / "x", n=3, seed=0, duration=(10.0, 10.0), event_length=(8.0, 9.0), objects=1,
                   distractors=5, kinds=("move",))
    with pytest.raises(ValueError, match="kinds"):
        SynthConfig(kinds=("explode",)).validate()
    with pytest.raises(ValueError, match="too small"):
        synthesize(tmp_path / "y", n=1, seed=0)


def test_cli_writes_the_benchmark(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "cli"), "--n", "4", "--seed", "2", "--duration", "10:14",
                              "--event-length", "1:3", "--kinds", "appear,move", "--objects", "4"])
    assert run_synth(args) == 0
    rows = all_rows(tmp_path / "cli")
    assert sum(len(r) for r in rows.values()) == 16
    assert all(10 <= r["duration"] <= 14 for split in rows.values() for r in split)
    assert "4 videos" in capsys.readouterr().out
    bad = parser.parse_args(["--out", str(tmp_path / "bad"), "--n", "4", "--kinds", "nope"])
    assert run_synth(bad) == 2
