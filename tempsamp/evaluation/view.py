"""`tempsamp view EVAL_DIR [EVAL_DIR ...]`: one self-contained HTML page to look at predictions.

Per query: a strip of frames from the video (small JPEGs embedded as data: URIs, evenly spaced over
the video, each labelled with its time), a timeline with the ground-truth span and every mode's
predicted span (for several eval folders, side by side: one row per folder x mode), the answer text
and its IoU. The page sorts by the IoU of any row and filters to failures (IoU under a threshold) or
to unparsable / failed answers; the initial state can be put in the URL hash
(``#sort=iou-asc&col=0&filter=failures&thr=0.5``). No server and no network: everything (data,
frames, script, style) is inside the one file.

An eval folder holds ``queries.jsonl`` (written by ``tempsamp eval``: ground truth and video paths)
and ``predictions_<mode>.jsonl``; for an older folder pass the annotations with ``--gt``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path

import numpy as np

from tempsamp.spans import temporal_iou
from tempsamp.errors import nonnegative_int, positive_int

MODE_ORDER = ("answer", "cot", "mixed", "mixed-oracle")


def _read_jsonl(path: Path) -> list[dict]:
    from tempsamp.evaluation.score_cli import read_jsonl

    return read_jsonl(path)[0]


def folder_queries(folder: Path, gt=None, dataset=None, durations=None, videos=None) -> list[dict]:
    """The queries of an eval folder: its queries.jsonl, or the annotation file ``gt``."""
    if gt is not None:
        from tempsamp.data.readers import load_examples

        return [{"qid": ex.qid, "vid": ex.video_id, "video_path": ex.video_path, "duration": ex.duration,
                 "query": ex.query, "spans": [list(s) for s in ex.spans]}
                for ex in load_examples(gt, dataset, durations=durations, videos=videos)]
    path = folder / "queries.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (an eval folder written before queries.jsonl existed: pass --gt)")
    return _read_jsonl(path)


def folder_predictions(folder: Path) -> dict[str, dict[str, dict]]:
    """{mode: {qid: prediction line}} of every predictions_<mode>.jsonl in the folder, modes in the usual order."""
    files = sorted(folder.glob("predictions_*.jsonl"),
                   key=lambda p: (MODE_ORDER.index(p.stem[12:]) if p.stem[12:] in MODE_ORDER else 99, p.stem))
    if not files:
        raise FileNotFoundError(f"{folder}: no predictions_<mode>.jsonl (not an eval folder?)")
    return {p.stem[len("predictions_"):]: {str(line.get("qid")): line for line in _read_jsonl(p)} for p in files}


def _row(line: dict | None, spans: list) -> dict:
    """What one mode says about one query: span, answer, IoU (vs the first GT span; best GT window for highlights)."""
    if line is None:
        return {"status": "missing", "span": None, "answer": None, "iou": 0.0}
    if "pred_relevant_windows" in line:  # QVHighlights: the top-1 (first listed) window
        windows = line.get("pred_relevant_windows") or []
        span = list(windows[0][:2]) if windows else None
        answer = line.get("answer") or ", ".join(f"{w[0]:g}-{w[1]:g} ({w[2]:.2f})" for w in windows[:5])
        iou = float(np.max(temporal_iou(np.array(span)[None], np.array(spans)))) if span and spans else 0.0
    else:
        span, answer = line.get("pred_span"), line.get("answer")
        iou = float(temporal_iou(span, spans[0])) if span and spans else 0.0
    status = "ok" if span else ("failed" if answer is None or line.get("error") else "unparsed")
    return {"status": status, "span": span, "answer": answer, "iou": round(iou, 4)}


def thumbnails(video_path, duration: float, n: int, height: int = 64) -> list[list]:
    """[[time, data URI], ...]: n frames evenly spaced over the video, JPEG, about ``height`` px high."""
    from PIL import Image

    from tempsamp.video.sampling import decode

    rate = n / max(duration, 1e-3)
    budget = (height * 4 // 3) * height
    video = decode(video_path, fps=rate, max_frames=n, min_pixels=28 * 28, max_pixels=budget, total_pixels=budget * n)
    out = []
    for frame, t in zip(video.frames, video.timestamps):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=70)
        out.append([round(float(t), 2), "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()])
    return out


def _labels(folders: list[Path]) -> list[str]:
    names = [f.name for f in folders]
    if len(set(names)) == len(names):
        return names
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def collect(folders: list[Path], *, gt=None, dataset=None, durations=None, videos=None, frames: int = 8,
            limit: int | None = None) -> dict:
    """The page's data: columns (folder x mode), queries with GT, frames and one row per column."""
    labels = _labels(folders)
    queries: dict[str, dict] = {}
    columns, per_column = [], []
    for folder, label in zip(folders, labels):
        for q in folder_queries(folder, gt, dataset, durations, videos):
            queries.setdefault(str(q["qid"]), q)
        for mode, lines in folder_predictions(folder).items():
            columns.append(f"{label} · {mode}" if len(folders) > 1 else mode)
            per_column.append(lines)
    order = list(queries)[:limit] if limit else list(queries)
    frame_cache: dict[str, list] = {}
    items = []
    for qid in order:
        q = queries[qid]
        strip, note = [], None
        if frames and q.get("video_path"):
            key = str(q["video_path"])
            if key not in frame_cache:
                try:
                    frame_cache[key] = thumbnails(q["video_path"], float(q["duration"]), frames)
                except (FileNotFoundError, RuntimeError, ValueError) as err:
                    frame_cache[key] = f"frames unavailable: {err}"
            strip = frame_cache[key] if isinstance(frame_cache[key], list) else []
            note = None if isinstance(frame_cache[key], list) else frame_cache[key]
        elif frames:
            note = "no video path"
        items.append({"qid": qid, "vid": q.get("vid"), "query": q.get("query", ""), "duration": float(q["duration"]),
                      "gt": q.get("spans") or [], "frames": strip, "frames_note": note,
                      "rows": [_row(lines.get(qid), q.get("spans") or []) for lines in per_column]})
    means = [round(100 * float(np.mean([it["rows"][c]["iou"] for it in items])), 2) if items else None
             for c in range(len(columns))]
    return {"columns": columns, "mean_iou": means, "folders": [str(f) for f in folders], "queries": items}


def page(data: dict, title: str = "tempsamp view") -> str:
    """The HTML page: data as JSON in the page, rendered by a small inline script."""
    payload = json.dumps(data).replace("</", "<\\/")
    return (PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload))


def write_view(folders, out, **kwargs) -> Path:
    folders = [Path(f) for f in folders]
    data = collect(folders, **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(data, title="tempsamp view: " + ", ".join(data["folders"])), encoding="utf-8")
    return out


def run(args) -> int:
    try:
        out = write_view(args.folders, args.out, gt=args.gt, dataset=args.dataset, durations=args.durations,
                         videos=args.videos, frames=args.frames, limit=args.limit)
    except (ValueError, FileNotFoundError) as err:
        print(f"tempsamp view: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser (works offline)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("view", help="one self-contained HTML page of an eval folder's predictions (or several side by side)")
    p.add_argument("folders", nargs="+", help="eval folders (tempsamp eval --out)")
    p.add_argument("--out", default="view.html", help="the page to write (default view.html)")
    p.add_argument("--frames", type=nonnegative_int, default=8, help="frames per query in the strip (0: none)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N queries")
    p.add_argument("--gt", default=None, help="annotations, for folders without queries.jsonl")
    p.add_argument("--dataset", default=None)
    p.add_argument("--durations", default=None)
    p.add_argument("--videos", default=None, help="folder of videos (with --gt)")
    p.set_defaults(func=run)


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
#bar { position: sticky; top: 0; background: #fafafa; padding: 8px 0; border-bottom: 1px solid #ccc; z-index: 2; }
#bar label { margin-right: 14px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 10px 0; padding: 10px; }
.head { font-weight: 600; margin-bottom: 6px; }
.head .qid { color: #777; font-weight: 400; margin-left: 8px; }
.strip { display: flex; gap: 3px; margin: 4px 0 8px; }
.strip figure { margin: 0; text-align: center; font-size: 11px; color: #666; }
.strip img { display: block; height: 64px; }
.track { position: relative; height: 16px; background: #eee; margin: 3px 0; border-radius: 3px; }
.span { position: absolute; top: 2px; height: 12px; border-radius: 2px; }
.gt { background: #1a9850; }
.pred { background: #3366cc; opacity: .85; }
.pred.bad { background: #d73027; }
.row { display: grid; grid-template-columns: 200px 1fr 90px; gap: 8px; align-items: center; }
.row .lab { font-size: 12px; color: #444; overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.row .iou { font-variant-numeric: tabular-nums; text-align: right; }
.answer { white-space: pre-wrap; font: 12px ui-monospace, monospace; color: #333; background: #f4f4f4;
          padding: 4px 6px; margin: 2px 0 6px 208px; border-radius: 3px; max-height: 8em; overflow: auto; }
.status { color: #d73027; font-weight: 600; }
#errors { color: #d73027; }
</style></head>
<body>
<div id="bar">
  <label>sort <select id="sort"><option value="file">file order</option><option value="iou-asc">IoU, lowest first</option>
    <option value="iou-desc">IoU, highest first</option></select></label>
  <label>by <select id="col"></select></label>
  <label>show <select id="filter"><option value="all">all</option><option value="failures">failures (IoU &lt; threshold)</option>
    <option value="unparsable">unparsable or failed answers</option></select></label>
  <label>threshold <input id="thr" type="number" min="0" max="1" step="0.05" value="0.5" style="width:4em"></label>
  <span id="count"></span>
  <div id="means"></div>
</div>
<div id="errors"></div>
<div id="list"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
window.addEventListener("error", function (e) {
  var box = document.getElementById("errors");
  if (box) { box.textContent += "script error: " + e.message + "\n"; }
});
var DATA = JSON.parse(document.getElementById("data").textContent);

function el(tag, cls, text) {
  var node = document.createElement(tag);
  if (cls) { node.className = cls; }
  if (text !== undefined && text !== null) { node.textContent = text; }
  return node;
}

function fmt(x) { return (Math.round(x * 100) / 100).toString(); }

function bar(span, duration, cls) {
  var track = el("div", "track");
  if (span) {
    var a = Math.max(0, Math.min(span[0], span[1])), b = Math.min(duration, Math.max(span[0], span[1]));
    var piece = el("div", "span " + cls);
    piece.style.left = (100 * a / duration) + "%";
    piece.style.width = Math.max(0.5, 100 * (b - a) / duration) + "%";
    piece.title = fmt(span[0]) + " to " + fmt(span[1]) + " s";
    track.appendChild(piece);
  }
  return track;
}

function card(q, thr) {
  var box = el("div", "card");
  box.setAttribute("data-qid", q.qid);
  var head = el("div", "head", q.query);
  head.appendChild(el("span", "qid", q.qid + " \u00b7 " + fmt(q.duration) + " s"));
  box.appendChild(head);
  if (q.frames.length) {
    var strip = el("div", "strip");
    q.frames.forEach(function (f) {
      var fig = el("figure"), img = el("img");
      img.src = f[1]; img.alt = "frame at " + f[0] + " s";
      fig.appendChild(img); fig.appendChild(el("figcaption", null, fmt(f[0]) + " s"));
      strip.appendChild(fig);
    });
    box.appendChild(strip);
  } else if (q.frames_note) {
    box.appendChild(el("div", "status", q.frames_note));
  }
  var gtRow = el("div", "row");
  gtRow.appendChild(el("div", "lab", "ground truth"));
  gtRow.appendChild(bar(q.gt[0], q.duration, "gt"));
  gtRow.appendChild(el("div", "iou", q.gt.length ? q.gt.map(function (s) { return fmt(s[0]) + "-" + fmt(s[1]); }).join(", ") : "none"));
  box.appendChild(gtRow);
  q.rows.forEach(function (r, c) {
    var row = el("div", "row");
    var lab = el("div", "lab", DATA.columns[c]);
    lab.title = DATA.columns[c];
    row.appendChild(lab);
    row.appendChild(bar(r.span, q.duration, "pred" + (r.iou < thr ? " bad" : "")));
    var iou = el("div", "iou", r.status === "ok" ? "IoU " + r.iou.toFixed(2) : "");
    if (r.status !== "ok") { iou.appendChild(el("span", "status", r.status)); }
    row.appendChild(iou);
    box.appendChild(row);
    box.appendChild(el("div", "answer", r.answer === null ? "(no answer)" : r.answer));
  });
  return box;
}

function render() {
  var sort = document.getElementById("sort").value, col = +document.getElementById("col").value;
  var filter = document.getElementById("filter").value, thr = +document.getElementById("thr").value;
  var shown = DATA.queries.filter(function (q) {
    var r = q.rows[col];
    if (!r) { return filter === "all"; }
    if (filter === "failures") { return r.iou < thr; }
    if (filter === "unparsable") { return r.status !== "ok"; }
    return true;
  });
  if (sort !== "file") {
    var sign = sort === "iou-asc" ? 1 : -1;
    shown = shown.slice().sort(function (a, b) { return sign * ((a.rows[col] || {iou: 0}).iou - (b.rows[col] || {iou: 0}).iou); });
  }
  var list = document.getElementById("list");
  list.textContent = "";
  shown.forEach(function (q) { list.appendChild(card(q, thr)); });
  document.getElementById("count").textContent = shown.length + " of " + DATA.queries.length + " queries";
  location.replace("#sort=" + sort + "&col=" + col + "&filter=" + filter + "&thr=" + thr);
  console.log("tempsamp view: " + shown.length + " of " + DATA.queries.length + " queries shown");
}

(function init() {
  var colSelect = document.getElementById("col");
  DATA.columns.forEach(function (name, c) { var o = el("option", null, name); o.value = c; colSelect.appendChild(o); });
  document.getElementById("means").textContent = "mean IoU: " + DATA.columns.map(function (name, c) {
    return name + " " + (DATA.mean_iou[c] === null ? "-" : DATA.mean_iou[c].toFixed(2));
  }).join(" \u00b7 ");
  location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
    var kv = pair.split("="), node = document.getElementById(kv[0]);
    if (node && kv.length === 2) { node.value = decodeURIComponent(kv[1]); }
  });
  ["sort", "col", "filter", "thr"].forEach(function (id) { document.getElementById(id).addEventListener("change", render); });
  render();
})();
</script>
</body></html>
"""
