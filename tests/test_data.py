"""Annotation readers, `tempsamp data check`, few-shot selection and video-disjoint splits.

Small fixtures are written into tmp_path; the real annotation files in ../shared/annotations are
only read (and their tests skip when the folder is absent).
"""

import json
from collections import Counter
from pathlib import Path

import pytest

import tempsamp.cli
from tempsamp.data.checks import check_annotations, summarize
from tempsamp.data.example import Example
from tempsamp.data.readers import detect_dataset, load_examples, load_examples_report, read_durations
from tempsamp.data.splits import few_shot, split_by_video

SHARED = Path(__file__).resolve().parents[2] / "shared" / "annotations"

CSV = "id,length\nAAA01,30.5\nBBB02,20.0\n"
CHARADES_TXT = "AAA01 1.0 5.5##person opens a door.\nAAA01 3.0 31.0##  person sits down.  \nBBB02 0 4##someone laughs.\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def write_jsonl(tmp_path: Path, name: str, rows) -> Path:
    return write(tmp_path, name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def charades(tmp_path, text=CHARADES_TXT, csv=CSV, **kw):
    return load_examples(write(tmp_path, "charades_sta_test.txt", text), "charades",
                         durations=write(tmp_path, "Charades_v1_test.csv", csv), **kw)


# ---------------------------------------------------------------- Charades-STA text


def test_charades_text_reads_every_field(tmp_path):
    examples = charades(tmp_path)
    assert [ex.qid for ex in examples] == ["AAA01#0", "AAA01#1", "BBB02#2"]
    first = examples[0]
    assert (first.video_id, first.duration, first.query, first.spans, first.task) == \
        ("AAA01", 30.5, "person opens a door.", ((1.0, 5.5),), "grounding")
    assert first.video_path is None and first.source == "charades_sta_test.txt:1"
    assert examples[1].query == "person sits down."
    assert examples[1].spans == ((3.0, 31.0),)  # past the 30.5-s duration: kept as annotated


def test_charades_text_needs_durations(tmp_path):
    path = write(tmp_path, "charades_sta_test.txt", CHARADES_TXT)
    with pytest.raises(ValueError, match="durations"):
        load_examples(path, "charades")


def test_full_charades_csv_with_quoted_commas(tmp_path):
    csv = 'id,subject,script,length\nAAA01,S1,"a person, then a door",30.5\nBBB02,S2,"x",20\n'
    assert read_durations(write(tmp_path, "full.csv", csv)) == {"AAA01": 30.5, "BBB02": 20.0}


@pytest.mark.parametrize("csv, where", [
    ("vid,length\nAAA01,30\n", "full.csv:1"),            # no id column
    ("id,length\nAAA01,thirty\n", "full.csv:2: field 'length'"),
    ("id,length\nAAA01,0\n", "full.csv:2: field 'length'"),
    ("id,length\nAAA01,30\nAAA01,31\n", "full.csv:3: field 'length'"),
])
def test_bad_durations_csv(tmp_path, csv, where):
    with pytest.raises(ValueError, match=where):
        read_durations(write(tmp_path, "full.csv", csv))


@pytest.mark.parametrize("line, field", [
    ("AAA01 1.0 5.5 person opens a door.", "line"),        # no ##
    ("AAA01 1.0##person opens a door.", "line"),           # two tokens before ##
    ("AAA01 one 5.5##person opens a door.", "start"),      # non-numeric time
    ("AAA01 1.0 nan##person opens a door.", "end"),        # not finite
    ("AAA01 1.0 5.5##   ", "sentence"),
    ("ZZZ99 1.0 5.5##person opens a door.", "duration"),   # video not in the CSV
])
def test_charades_malformed_line_names_file_line_field(tmp_path, line, field):
    text = CHARADES_TXT + line + "\n"
    with pytest.raises(ValueError, match=f"charades_sta_test.txt:4: field '{field}'"):
        charades(tmp_path, text)
    # lenient: the bad line is skipped and counted, the good ones keep their ids
    examples, problems = load_examples_report(tmp_path / "charades_sta_test.txt", "charades",
                                              durations=tmp_path / "Charades_v1_test.csv", lenient=True)
    assert [ex.qid for ex in examples] == ["AAA01#0", "AAA01#1", "BBB02#2"]
    assert [(p.source, p.field) for p in problems] == [("charades_sta_test.txt:4", field)]


def test_lenient_ids_do_not_shift(tmp_path):
    text = "AAA01 x 5.5##bad start.\n" + CHARADES_TXT
    examples = charades(tmp_path, text, lenient=True)
    assert [ex.qid for ex in examples] == ["AAA01#1", "AAA01#2", "BBB02#3"]


def test_video_paths_from_folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "BBB02.mkv").write_bytes(b"")
    examples = charades(tmp_path, videos=videos)
    assert examples[0].video_path == str(videos / "AAA01.mp4")  # missing: kept, reported later
    assert examples[2].video_path == str(videos / "BBB02.mkv")   # another extension found


# ---------------------------------------------------------------- {vid: {duration, timestamps, sentences}}

ANET = {
    "v_one": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
              "sentences": ["A woman dances.", " The girl dances around the room."]},
    "v_two": {"duration": 61.72, "timestamps": [[0, 2.78]], "sentences": [" A title logo."]},
}


def test_mllm_json_activitynet(tmp_path):
    path = write(tmp_path, "val_2.json", json.dumps(ANET, indent=1))
    assert detect_dataset(path) == "activitynet"
    examples = load_examples(path)
    assert [ex.qid for ex in examples] == ["v_one#0", "v_one#1", "v_two#2"]
    assert [ex.query for ex in examples] == ["A woman dances.", "The girl dances around the room.", "A title logo."]
    assert examples[2].spans == ((0.0, 2.78),) and examples[2].duration == 61.72
    assert examples[0].source == "val_2.json:2"
    lines = path.read_text().splitlines()
    assert lines[int(examples[2].source.split(":")[1]) - 1].strip().startswith('"v_two"')


def test_mllm_json_charades_detected_by_name(tmp_path):
    path = write(tmp_path, "charades_test.json", json.dumps({"3MSZA": {"duration": 30.96, "timestamps": [[24.3, 30.4]],
                                                                       "sentences": ["person turn a light on."]}}))
    assert detect_dataset(path) == "charades"
    assert load_examples(path)[0].qid == "3MSZA#0"


@pytest.mark.parametrize("entry, field", [
    ({"timestamps": [[0, 1]], "sentences": ["a"]}, "duration"),
    ({"duration": "61.7", "timestamps": [[0, 1]], "sentences": ["a"]}, "duration"),
    ({"duration": 61.7, "timestamps": [[0, 1], [1, 2]], "sentences": ["a"]}, "timestamps"),
    ({"duration": 61.7, "timestamps": [[0, 1, 2]], "sentences": ["a"]}, "timestamps"),
    ({"duration": 61.7, "timestamps": [[0, "1.5"]], "sentences": ["a"]}, "timestamps"),
    ({"duration": 61.7, "timestamps": [[0, 1]], "sentences": [""]}, "sentences"),
])
def test_mllm_json_malformed(tmp_path, entry, field):
    data = dict(ANET, v_bad=entry)
    path = write(tmp_path, "val_2.json", json.dumps(data, indent=1))
    with pytest.raises(ValueError, match=rf"val_2.json:\d+: field '{field}': video 'v_bad'"):
        load_examples(path)
    examples, problems = load_examples_report(path, lenient=True)
    assert len(examples) == 3 and len(problems) == 1 and problems[0].field == field


def test_mllm_json_lenient_counts_a_whole_skipped_video(tmp_path):
    data = dict(ANET, v_bad={"duration": -1, "timestamps": [[0, 1], [1, 2]], "sentences": ["a", "b"]})
    _, problems = load_examples_report(write(tmp_path, "val_2.json", json.dumps(data)), lenient=True)
    assert problems[0].skipped == 2


def test_not_json_is_unreadable(tmp_path):
    with pytest.raises(ValueError, match="val_2.json:2: not valid JSON"):
        load_examples(write(tmp_path, "val_2.json", '{"v_one":\n {"duration": }'), lenient=True)


# ---------------------------------------------------------------- QVHighlights

QVH_ROW = {"qid": 2579, "query": "A girl cooks. ", "duration": 150, "vid": "NUsG9BgSes0_210.0_360.0",
           "relevant_clip_ids": [41, 42, 44], "saliency_scores": [[1, 1, 2], [4, 4, 3], [0, 2, 4]],
           "relevant_windows": [[82, 86], [88, 90]]}


def test_qvhighlights(tmp_path):
    path = write_jsonl(tmp_path, "highlight_val_release.jsonl", [QVH_ROW])
    assert detect_dataset(path) == "qvhighlights"
    (ex,) = load_examples(path, videos=tmp_path)
    assert (ex.qid, ex.video_id, ex.duration, ex.query, ex.task) == ("2579", QVH_ROW["vid"], 150.0, "A girl cooks.", "highlights")
    assert ex.spans == ((82.0, 86.0), (88.0, 90.0))
    assert ex.clip_ids == (41, 42, 44) and ex.saliency == ((1, 1, 2), (4, 4, 3), (0, 2, 4))
    assert ex.extra["raw"] == QVH_ROW
    assert ex.video_path == str(tmp_path / f"{QVH_ROW['vid']}.mp4")


def test_qvhighlights_unlabelled_test_split(tmp_path):
    row = {k: QVH_ROW[k] for k in ("qid", "query", "duration", "vid")}
    (ex,) = load_examples(write_jsonl(tmp_path, "highlight_test_release.jsonl", [row]), "qvhighlights")
    assert ex.spans == () and ex.clip_ids == () and ex.extra.get("unlabelled") is True
    report = summarize([ex])
    assert report["unlabelled_queries"] == 1


@pytest.mark.parametrize("change, field", [
    ({"qid": None}, "qid"),
    ({"duration": "150"}, "duration"),
    ({"relevant_windows": [[82, "x"]]}, "relevant_windows"),
    ({"relevant_windows": []}, "relevant_windows"),
    ({"saliency_scores": [[1, 1, 2]]}, "saliency_scores"),        # 1 score row for 3 clips
    ({"saliency_scores": [[1, 1], [1, 2, 3], [0, 0, 0]]}, "saliency_scores"),  # ragged
    ({"relevant_clip_ids": [41, -1, 44]}, "relevant_clip_ids"),
    ({"relevant_clip_ids": None}, "relevant_clip_ids"),
])
def test_qvhighlights_malformed(tmp_path, change, field):
    bad = {**QVH_ROW, **change, "qid": change.get("qid", 7)}
    path = write_jsonl(tmp_path, "highlight_val_release.jsonl", [QVH_ROW, bad])
    with pytest.raises(ValueError, match=f"highlight_val_release.jsonl:2: field '{field}'"):
        load_examples(path)
    examples, problems = load_examples_report(path, lenient=True)
    assert len(examples) == 1 and [p.field for p in problems] == [field]


def test_jsonl_bad_line_and_missing_field(tmp_path):
    missing = {k: v for k, v in QVH_ROW.items() if k != "query"}
    path = write_jsonl(tmp_path, "highlight_val_release.jsonl", [QVH_ROW, "{not json", missing, "", "[1, 2]"])
    with pytest.raises(ValueError, match="highlight_val_release.jsonl:2: field 'line': not valid JSON"):
        load_examples(path, "qvhighlights")
    _, problems = load_examples_report(path, "qvhighlights", lenient=True)
    assert [str(p).split(": field ")[0] for p in problems] == [
        "highlight_val_release.jsonl:2", "highlight_val_release.jsonl:3", "highlight_val_release.jsonl:5"]
    assert [p.field for p in problems] == ["line", "query", "line"]


# ---------------------------------------------------------------- the project's JSONL


def test_generic_jsonl_paths_ids_and_defaults(tmp_path):
    rows = [{"video": "v0.mp4", "duration": 16.0, "query": "when is the red square visible?", "spans": [[2.0, 6.0]]},
            {"video": "sub/v1.webm", "duration": 20, "query": "q", "spans": [[1, 2], [5, 6]], "qid": "mine"},
            {"video": str(tmp_path / "abs.mp4"), "video_id": "abs", "duration": 10, "query": "q", "spans": [],
             "clip_ids": [0, 1], "saliency": [[4, 4, 4], [2, 2, 2]]}]
    path = write_jsonl(tmp_path, "train.jsonl", rows)
    assert detect_dataset(path) == "jsonl"
    a, b, c = load_examples(path)
    assert (a.qid, a.video_id, a.video_path, a.task) == ("v0#0", "v0", str(tmp_path / "v0.mp4"), "grounding")
    assert (b.qid, b.video_id, b.video_path, b.spans) == ("mine", "v1", str(tmp_path / "sub/v1.webm"), ((1.0, 2.0), (5.0, 6.0)))
    assert (c.video_id, c.video_path, c.task, c.clip_ids) == ("abs", str(tmp_path / "abs.mp4"), "highlights", (0, 1))
    assert c.extra["raw"]["saliency_scores"] == [[4, 4, 4], [2, 2, 2]]
    # with a videos folder, relative paths resolve against it instead
    assert load_examples(path, videos="/data/vids")[0].video_path == "/data/vids/v0.mp4"


@pytest.mark.parametrize("change, field", [
    ({"spans": None}, "spans"),
    ({"video": None}, "video"),
    ({"duration": "16"}, "duration"),
    ({"duration": 0}, "duration"),
    ({"spans": [[2.0]]}, "spans"),
    ({"task": "captioning"}, "task"),
])
def test_generic_jsonl_malformed(tmp_path, change, field):
    row = {"video": "v0.mp4", "duration": 16.0, "query": "q", "spans": [[2.0, 6.0]], **change}
    if change.get(field, 0) is None:
        del row[field]  # None in the table means "missing"
    path = write_jsonl(tmp_path, "train.jsonl", [row])
    with pytest.raises(ValueError, match=f"train.jsonl:1: field '{field}'"):
        load_examples(path, "jsonl")


def test_detection_failures(tmp_path):
    with pytest.raises(ValueError, match="cannot detect"):
        detect_dataset(write(tmp_path, "notes.txt", "hello\n"))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_examples(write(tmp_path, "a.jsonl", "{}\n"), "kinetics")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "absent.json")


# ---------------------------------------------------------------- check


def test_summarize_reports_every_problem_class(tmp_path):
    (tmp_path / "here.mp4").write_bytes(b"")
    rows = [{"video": "here.mp4", "duration": 10, "query": "a", "spans": [[2, 12]]},          # end past duration
            {"video": "here.mp4", "duration": 10, "query": "b", "spans": [[5, 5]]},           # start >= end
            {"video": "gone.mp4", "duration": 8, "query": "c", "spans": [[-1, 3]], "qid": "x"},  # negative start
            {"video": "gone.mp4", "duration": 9, "query": "d", "spans": [[9, 9.5]], "qid": "x"},  # dup qid, other duration
            "not json"]
    report = check_annotations(write_jsonl(tmp_path, "mine.jsonl", rows))
    assert (report["queries"], report["videos"], report["spans"]) == (4, 2, 4)
    assert report["ends_past_duration"]["count"] == 2          # rows 1 and 4
    assert report["starts_past_duration"]["count"] == 1        # row 4: starts at its own 9-s duration
    assert report["start_ge_end"]["count"] == 1
    assert report["start_ge_end"]["examples"] == ["mine.jsonl:2 (here#1)"]
    assert report["negative_starts"]["count"] == 1
    assert report["inconsistent_durations"] == {"count": 1, "examples": ["gone"]}
    assert report["duplicate_qids"] == {"count": 1, "examples": ["x"]}
    assert report["malformed"]["count"] == 1 and report["malformed"]["problems"][0].startswith("mine.jsonl:5: field 'line'")
    assert report["missing_videos"] == {"checked": True, "count": 1, "examples": [str(tmp_path / "gone.mp4")]}
    assert report["duration_s"] == {"min": 8.0, "median": 9.0, "mean": 9.0, "max": 10.0}


def test_missing_videos_not_checked_without_paths(tmp_path):
    report = summarize(charades(tmp_path))
    assert report["missing_videos"]["checked"] is False
    assert report["ends_past_duration"]["count"] == 1


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch, capsys):
    """tempsamp.cli.main with only the data commands registered (other commands are not under test)."""
    monkeypatch.setattr(tempsamp.cli, "COMMAND_MODULES", ["tempsamp.data.cli"])

    def run(*argv):
        code = tempsamp.cli.main(["data", *map(str, argv)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_check_text_and_json(tmp_path, cli):
    path = write(tmp_path, "charades_sta_test.txt", CHARADES_TXT)
    csv = write(tmp_path, "durations.csv", CSV)
    code, out, _ = cli("check", "--dataset", "charades", "--annotations", path, "--durations", csv)
    assert code == 0
    assert "queries                     3" in out and "videos                      2" in out
    assert "ends past the duration      1" in out
    code, out, _ = cli("check", "--annotations", path, "--durations", csv, "--json", "--videos", tmp_path)
    report = json.loads(out)
    assert code == 0 and report["queries"] == 3 and report["missing_videos"]["count"] == 2


def test_cli_check_exit_codes(tmp_path, cli):
    path = write(tmp_path, "charades_sta_test.txt", CHARADES_TXT + "AAA01 x 2##bad.\n")
    csv = write(tmp_path, "durations.csv", CSV)
    code, out, err = cli("check", "--annotations", path, "--durations", csv)
    assert code == 1 and "charades_sta_test.txt:4: field 'start'" in out and "--lenient" in err
    code, _, _ = cli("check", "--annotations", path, "--durations", csv, "--lenient")
    assert code == 0
    code, _, err = cli("check", "--annotations", tmp_path / "absent.txt", "--durations", csv)
    assert code == 2 and "not found" in err
    code, _, err = cli("check", "--annotations", path)  # Charades text without durations
    assert code == 2 and "durations" in err


def test_cli_data_without_subcommand_prints_help(cli):
    code, out, _ = cli()
    assert code == 2 and "check" in out


# ---------------------------------------------------------------- splits


def make_examples(sizes) -> list[Example]:
    """sizes[v] queries for video v, interleaved as a real file may be."""
    out = []
    for i in range(max(sizes)):
        for v, n in enumerate(sizes):
            if i < n:
                out.append(Example(qid=f"v{v}#{i}", video_id=f"v{v}", video_path=None, duration=30.0,
                                   query=f"q{i}", spans=((0.0, 1.0),)))
    return out


def test_few_shot_is_seeded_exact_and_keeps_order():
    examples = make_examples([1, 2, 3, 5, 8, 13, 2, 1, 4] * 20)
    subset = few_shot(examples, 0.1, seed=3)
    assert subset == few_shot(examples, 0.1, seed=3)
    assert subset != few_shot(examples, 0.1, seed=4)
    assert len(subset) == round(0.1 * len(examples))
    positions = [examples.index(ex) for ex in subset]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_few_shot_is_stratified_by_video():
    sizes = [1, 2, 3, 5, 8, 13, 2, 1, 4] * 20
    examples = make_examples(sizes)
    taken = Counter(ex.video_id for ex in few_shot(examples, 0.25, seed=0))
    for v, n in enumerate(sizes):  # each video gives floor or ceil of its share
        assert taken.get(f"v{v}", 0) in (int(0.25 * n), -(-n // 4))
    even = make_examples([10] * 30)
    assert set(Counter(ex.video_id for ex in few_shot(even, 0.1, seed=1)).values()) == {1}
    assert len(Counter(ex.video_id for ex in few_shot(even, 0.1, seed=1))) == 30


def test_few_shot_whole_videos_and_edge_cases():
    examples = make_examples([3, 1, 4, 1, 5, 9, 2, 6] * 5)
    per_video = Counter(ex.video_id for ex in examples)
    subset = few_shot(examples, 0.2, seed=0, unit="video")
    assert all(per_video[v] == n for v, n in Counter(ex.video_id for ex in subset).items())
    assert len(subset) >= round(0.2 * len(examples))
    assert few_shot(examples, 1.0, seed=0) == examples
    assert len(few_shot(examples[:3], 0.01, seed=0)) == 1  # never empty
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            few_shot(examples, bad, seed=0)


def test_split_by_video_is_disjoint_complete_and_seeded():
    examples = make_examples([1, 2, 3, 4] * 25)
    train, val, test = split_by_video(examples, (0.8, 0.1, 0.1), seed=0)
    videos = [set(ex.video_id for ex in part) for part in (train, val, test)]
    assert not (videos[0] & videos[1] or videos[0] & videos[2] or videos[1] & videos[2])
    assert [len(v) for v in videos] == [80, 10, 10]
    assert sorted(ex.qid for part in (train, val, test) for ex in part) == sorted(ex.qid for ex in examples)
    assert split_by_video(examples, seed=0) == (train, val, test)
    assert split_by_video(examples, seed=1) != (train, val, test)
    tiny = split_by_video(make_examples([2, 2, 2]), (0.8, 0.1, 0.1), seed=0)
    assert [len({ex.video_id for ex in part}) for part in tiny] == [1, 1, 1]
    with pytest.raises(ValueError):
        split_by_video(examples, (0.5, 0.2))


# ---------------------------------------------------------------- the real files (../shared/annotations)

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/annotations not present")


@needs_shared
def test_shared_charades_sta_test(cli):
    d = SHARED / "charades_sta"
    report = check_annotations(d / "charades_sta_test.txt", "charades", durations=d / "Charades_v1_test.id_length.csv")
    assert (report["queries"], report["videos"], report["ends_past_duration"]["count"]) == (3720, 1334, 562)
    assert report["malformed"]["count"] == 0
    # the TimeZero JSON holds the same queries, durations and spans, line for line
    text = load_examples(d / "charades_sta_test.txt", durations=d / "Charades_v1_test.id_length.csv")
    as_json = load_examples(d / "charades_test.timezero.json")
    key = lambda ex: (ex.qid, ex.video_id, ex.duration, ex.query, ex.spans)  # noqa: E731
    assert [key(ex) for ex in text] == [key(ex) for ex in as_json]
    code, out, _ = cli("check", "--dataset", "charades", "--annotations", d / "charades_sta_test.txt",
                       "--durations", d / "Charades_v1_test.id_length.csv", "--json")
    assert code == 0 and json.loads(out)["ends_past_duration"]["count"] == 562


@needs_shared
def test_shared_activitynet_val_2():
    report = check_annotations(SHARED / "activitynet_captions" / "val_2.json", "activitynet")
    assert (report["queries"], report["videos"], report["malformed"]["count"]) == (17031, 4885, 0)
    examples = load_examples(SHARED / "activitynet_captions" / "train.first3videos.json")
    assert len({ex.video_id for ex in examples}) == 3
    assert all(ex.query == ex.query.strip() for ex in examples)


@needs_shared
def test_shared_qvhighlights():
    report = check_annotations(SHARED / "qvhighlights" / "highlight_val_release.jsonl", "qvhighlights")
    assert (report["queries"], report["malformed"]["count"], report["tasks"]) == (1550, 0, {"highlights": 1550})
    assert check_annotations(SHARED / "qvhighlights" / "highlight_test_with_gt.jsonl")["queries"] == 1542
