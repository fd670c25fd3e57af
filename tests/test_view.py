"""`tempsamp view`: the page's data, and the page itself in a real headless Chromium (Debian's `chromium`).

The browser tests skip when chromium is absent, except under CI (.ci/run installs it and sets
TEMPSAMP_CI=1), where a missing browser fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tempsamp.evaluation.view import collect, write_view
from video_files import write_video

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GREEN = (26, 152, 80)  # the ground-truth bar (#1a9850)


@pytest.fixture(scope="module")
def eval_folders(tmp_path_factory):
    """Two eval folders (as `tempsamp eval` writes them) over the same 5 queries: 2 modes and 1 mode."""
    root = tmp_path_factory.mktemp("view")
    queries = []
    for i in range(5):
        video = root / f"v{i}.mp4"
        write_video(video, 8.0, (2.0 + i * 0.5, 4.0 + i * 0.5), fps=4)
        queries.append({"qid": f"v{i}#{i}", "vid": f"v{i}", "video_path": str(video), "duration": 8.0,
                        "query": f"when is the square on screen? <b>{i}</b>", "spans": [[2.0 + i * 0.5, 4.0 + i * 0.5]]})
    # answer mode: exact, unparsable ("</script>" must not end the page's script), 1/3, inference failed, 0
    answer = [([2.0, 4.0], "<answer>2 to 4</answer>"), (None, "</script><script>alert(1)</script>"),
              ([2.0, 4.0], "2 to 4"), (None, None), ([2.0, 4.0], "2 to 4")]
    folders = []
    for name, modes in (("run-a", {"answer": answer, "cot": [([q["spans"][0][0], q["spans"][0][1]], "ok") for q in queries]}),
                        ("run-b", {"answer": [([0.0, 8.0], "all of it")] * 5})):
        folder = root / name / "eval"
        folder.mkdir(parents=True)
        (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
        for mode, rows in modes.items():
            lines = [{"qid": q["qid"], "vid": q["vid"], "pred_span": span, "answer": text} for q, (span, text) in zip(queries, rows)]
            (folder / f"predictions_{mode}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        folders.append(folder)
    page = write_view(folders, root / "page.html", frames=6)
    return folders, page


def test_page_data(eval_folders):
    folders, page = eval_folders
    data = collect(folders, frames=0)
    assert data["columns"] == ["run-a/eval · answer", "run-a/eval · cot", "run-b/eval · answer"]
    assert len(data["queries"]) == 5
    rows = [q["rows"][0] for q in data["queries"]]
    assert [r["status"] for r in rows] == ["ok", "unparsed", "ok", "failed", "ok"]
    assert [r["iou"] for r in rows] == [1.0, 0.0, pytest.approx(1 / 3, abs=1e-4), 0.0, 0.0]
    assert data["mean_iou"] == [26.67, 100.0, 25.0]
    text = page.read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", text)  # nothing fetched from anywhere
    assert text.count("data:image/jpeg;base64,") == 5 * 6
    assert "</script><script>alert(1)" not in text


def _chromium(*args, timeout=90):
    if CHROMIUM is None:
        if os.environ.get("TEMPSAMP_CI"):
            pytest.fail("chromium is missing under CI (.ci/run installs it with apt-get)")
        pytest.skip("chromium not installed (apt-get install -y chromium); the page is then not checked in a browser")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
                              capture_output=True, text=True, timeout=timeout)
    console = re.findall(r':CONSOLE[:(]\d*\)?\] "(.*)", source:', proc.stderr)
    return proc, console


def _dom(page: Path, hash_: str = ""):
    proc, console = _chromium("--dump-dom", page.as_uri() + hash_)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, console


def test_page_loads_without_console_errors_and_shows_every_query(eval_folders):
    _, page = eval_folders
    dom, console = _dom(page)
    assert console == ["tempsamp view: 5 of 5 queries shown"]  # any error or warning would be another message
    assert dom.count('class="card"') == 5
    assert re.search(r'<div id="errors">\s*</div>', dom)
    assert dom.count('class="row"') == 5 * 4  # ground truth + 3 columns per query
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in dom  # answer text shown as text


def test_filters_and_sorting_in_the_browser(eval_folders):
    _, page = eval_folders
    dom, console = _dom(page, "#filter=unparsable")
    assert dom.count('class="card"') == 2 and console == ["tempsamp view: 2 of 5 queries shown"]
    dom, _ = _dom(page, "#filter=failures&thr=0.5")
    assert dom.count('class="card"') == 4  # IoU 0, 1/3, 0 (failed), 0
    dom, _ = _dom(page, "#sort=iou-desc&col=0")
    order = re.findall(r'class="card" data-qid="([^"]+)"', dom)
    assert order[:2] == ["v0#0", "v2#2"]  # IoU 1, then 1/3; the zeros keep file order (stable sort)
    dom, _ = _dom(page, "#filter=failures&col=1")
    assert dom.count('class="card"') == 0  # the cot column is exact everywhere


def _looks_rendered(png: Path) -> bool:
    """Not a blank page: many colours, the ground-truth bars and the red squares of the frame strips."""
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    colours = len(np.unique(pixels[::7], axis=0))
    green = int((np.abs(pixels - GREEN).sum(axis=1) < 30).sum())
    red = int(((pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).sum())
    return colours > 50 and green > 500 and red > 500


def test_screenshot_is_not_blank(eval_folders, tmp_path):
    _, page = eval_folders
    shot = tmp_path / "shot.png"
    proc, _ = _chromium("--window-size=1200,1400", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert _looks_rendered(shot)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    empty_shot = tmp_path / "blank.png"
    _chromium("--window-size=1200,1400", f"--screenshot={empty_shot}", blank.as_uri())
    assert empty_shot.is_file() and not _looks_rendered(empty_shot)  # the check fails on a blank page


def test_rows_of_highlight_predictions_use_the_top_window():
    from tempsamp.evaluation.view import _row

    row = _row({"qid": 1, "pred_relevant_windows": [[20, 30, 0.4], [0, 10, 0.9]]}, [[0, 10], [20, 30]])
    assert (row["status"], row["span"], row["iou"]) == ("ok", [20, 30], 1.0)  # first listed, best GT window
    assert _row({"qid": 1, "pred_relevant_windows": []}, [[0, 10]])["status"] == "unparsed"
    assert _row(None, [[0, 10]])["status"] == "missing"
