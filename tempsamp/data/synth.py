"""A synthetic temporal-grounding benchmark with exact answers: ``tempsamp data synth``.

Each video is a small dark canvas (56x56 by default, 4 fps, libx264 in mp4) with a few objects,
each a named colour and shape ("blue circle") in its own horizontal lane, so objects never hide each
other. Objects take part in events, each over a span [start, end) on a time grid (0.5 s for
grounding, the 2-s clip grid for highlights):

    appear   the object is on screen only during the span     "when is the red square visible?"
    move     it slides left or right during the span           "when does the blue circle move left?"
    grow     it is drawn 1.6x larger during the span           "when is the green triangle enlarged?"
    recolor  it is drawn in another colour during the span     "when is the yellow diamond shown in white?"

Grounding: every (object, kind, direction/colour) happens at most once per video, so each event's
span is the exact answer to its query; ``queries_per_video`` events are asked about and
``distractors`` more happen unasked (other objects, other kinds, the other direction), so reading the
query *and* the video is needed. Spans are placed uniformly at random in the video, so the text alone
does not give them away. Video frame j is the scene at j / fps; spans lie on the 0.5-s grid, so a
frame sampled at 2 FPS at time t shows an event exactly when start <= t < end.

Highlights (QVHighlights format): the query names an object ("the red square is on screen"); its
relevant windows are the object's on-screen spans (one or two, on the 2-s clip grid); every 2-s clip
inside them is relevant, with 3 annotator scores 0-4: 4 while the object is enlarged (the
highlight), 2 otherwise, each annotator's score moved by +-1 with probability 0.15 (clipped to 1-4).

Files in ``out_dir``: ``videos/*.mp4``; ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` in the
project's generic JSONL format (``video`` relative to the file's folder, ``duration``, ``query``,
``spans``, ``qid``, ``video_id``, ``task``, and for highlights ``clip_ids``/``saliency``);
``scenes.jsonl`` (every object and event of every video, with the qid that asks about it: the
answer key in full); ``synth.json`` (the parameters, written last: when it matches the request, a
second call returns at once). Splits hold disjoint videos. Same parameters and seed, same bytes
(libx264 with one thread and fixed options, mp4 muxed bit-exact; checked by the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tempsamp.errors import nonnegative_int, positive_int

SYNTH_VERSION = 1
KINDS = ("appear", "move", "grow", "recolor")
COLOURS = {  # name -> RGB: corners of the RGB cube, far apart after yuv420 compression and resizing
    "red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 70, 250), "yellow": (235, 225, 30),
    "magenta": (230, 40, 230), "cyan": (30, 220, 230), "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUND = (16, 16, 16)
GROW = 1.6
TEMPLATES = {
    "appear": ("when is the {obj} visible?", "when can the {obj} be seen?", "when is the {obj} on screen?"),
    "move": ("when does the {obj} move {param}?", "when does the {obj} slide to the {param}?"),
    "grow": ("when is the {obj} enlarged?", "when does the {obj} look bigger?"),
    "recolor": ("when is the {obj} shown in {param}?", "when is the {obj} coloured {param}?"),
}
HIGHLIGHT_TEMPLATES = ("the {obj} is on screen", "a {obj} is visible", "the {obj} shows up")


@dataclass
class SynthConfig:
    """Knobs of the benchmark. Ranges are (low, high) in seconds, drawn uniformly per video / event."""

    task: str = "grounding"
    duration: tuple[float, float] = (20.0, 20.0)
    event_length: tuple[float, float] = (2.0, 6.0)
    objects: int = 3
    distractors: int = 2  # grounding: events nobody asks about (highlights: every unasked object is one)
    queries_per_video: int | None = None  # None: 4 for grounding, one per object for highlights
    kinds: tuple[str, ...] = KINDS
    size: int = 56
    fps: int = 4
    splits: tuple[float, float, float] = (0.7, 0.1, 0.2)
    crf: int = 18
    gop: int = 8  # frames between keyframes (2 s at 4 fps)

    def validate(self) -> "SynthConfig":
        if self.queries_per_video is None:
            return replace(self, queries_per_video=4 if self.task == "grounding" else self.objects).validate()
        if self.task not in ("grounding", "highlights"):
            raise ValueError(f"task must be 'grounding' or 'highlights', got {self.task!r}")
        for name in ("duration", "event_length"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name}: need 0 < low <= high, got {low}, {high}")
        if self.event_length[0] >= self.duration[0]:
            raise ValueError(f"event_length {self.event_length} must be shorter than the duration {self.duration}")
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if not 1 <= self.objects <= min(len(SHAPES) * 2, len(COLOURS) - 2):
            raise ValueError(f"objects must be 1..{len(COLOURS) - 2}, got {self.objects}")
        if self.size // self.objects < 10:
            raise ValueError(f"{self.objects} lanes do not fit a {self.size}-px frame (need >= 10 px each)")
        if self.queries_per_video < 1 or self.distractors < 0:
            raise ValueError("queries_per_video must be >= 1 and distractors >= 0")
        if self.task == "highlights" and self.queries_per_video > self.objects:
            raise ValueError(f"highlights: queries_per_video ({self.queries_per_video}) > objects ({self.objects})")
        if len(self.splits) != 3 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-6:
            raise ValueError(f"splits must be three fractions summing to 1, got {self.splits}")
        if self.size % 2 or self.size < 16 or self.fps < 2 or self.fps % 2:
            raise ValueError("size must be even and >= 16; fps even and >= 2 (frames on the 0.5-s grid)")
        return self

    @property
    def grid(self) -> float:
        return 2.0 if self.task == "highlights" else 0.5


# ---------------------------------------------------------------- scenes (pure, seeded)


@dataclass
class Obj:
    name: str  # "blue circle"
    colour: str
    shape: str
    lane: int
    x0: float = 0.0  # centre x before any move


@dataclass
class Event:
    obj: int
    kind: str
    start: float
    end: float
    param: str = ""  # move: left/right; recolor: colour name
    distance: float = 0.0  # move: pixels
    qid: str | None = None


@dataclass
class Scene:
    video_id: str
    duration: float
    objects: list[Obj]
    events: list[Event] = field(default_factory=list)
    queries: list[dict] = field(default_factory=list)


def _grid_values(rng, low: float, high: float, grid: float) -> float:
    return max(grid, round(rng.uniform(low, high) / grid) * grid)


def _place(rng, length: float, lo: float, hi: float, busy: list[tuple[float, float]], grid: float, gap: float):
    """A start on the grid with [start, start + length) inside [lo, hi) and `gap` away from busy spans."""
    starts = np.arange(round(lo / grid), round((hi - length) / grid) + 1) * grid
    free = [s for s in starts if all(s + length + gap <= b0 or s >= b1 + gap for b0, b1 in busy)]
    return float(free[rng.integers(len(free))]) if free else None


def _presence(scene: Scene, i: int) -> list[tuple[float, float]]:
    windows = [(e.start, e.end) for e in scene.events if e.obj == i and e.kind == "appear"]
    return windows or [(0.0, scene.duration)]


def make_objects(rng, cfg: SynthConfig) -> list[Obj]:
    colours = rng.permutation(list(COLOURS))[: cfg.objects]
    shapes = rng.permutation(np.resize(SHAPES, cfg.objects * 2))[: cfg.objects]
    return [Obj(f"{c} {s}", str(c), str(s), lane) for lane, (c, s) in enumerate(zip(colours, shapes))]


def grounding_scene(rng, cfg: SynthConfig, video_id: str, attempts: int = 50) -> Scene:
    """A scene whose events all fit; draws again (same rng stream, so still deterministic) when not."""
    duration = _grid_values(rng, *cfg.duration, cfg.grid)
    n_events = cfg.queries_per_video + cfg.distractors
    for _ in range(attempts):
        scene = Scene(video_id, duration, make_objects(rng, cfg))
        if _fill_events(rng, cfg, scene, n_events):
            break
    else:
        raise ValueError(f"cannot fit {n_events} events into a {duration:g}-s video with {cfg.objects} objects "
                         f"(event length {cfg.event_length}, kinds {cfg.kinds}): lower distractors/queries, "
                         "raise duration/objects, or add kinds")
    asked = [e for e in scene.events if e.qid is not None]
    for q, event in enumerate(asked):
        event.qid = f"{video_id}#{q}"
        template = TEMPLATES[event.kind][rng.integers(len(TEMPLATES[event.kind]))]
        scene.queries.append({"qid": event.qid, "query": template.format(obj=scene.objects[event.obj].name, param=event.param),
                              "spans": [[event.start, event.end]]})
    return scene


def _fill_events(rng, cfg: SynthConfig, scene: Scene, n_events: int) -> bool:
    """Draw n_events events, the first queries_per_video of the draw asked about; False when they do not fit.

    An object with an `appear` event is on screen only during it and takes part in nothing else
    (so every event keeps a length from event_length); the other objects are on screen throughout
    and carry the move / grow / recolor events, never overlapping on one object. An asked event's
    (object, kind, direction/colour) happens nowhere else in the video, so its span is the only
    answer; distractors may repeat among themselves.
    """
    draws = [(str(k), i < cfg.queries_per_video) for i, k in enumerate(rng.choice(cfg.kinds, size=n_events))]
    others = [k for k in cfg.kinds if k != "appear"]
    max_appear = cfg.objects - 1 if others else cfg.objects  # keep a host for the other kinds
    appear = [d for d in draws if d[0] == "appear"]
    if len(appear) > max_appear and not others:
        return False
    # appear draws beyond max_appear become other kinds (asked ones first keep their slot)
    appear = sorted(appear, key=lambda d: not d[1])
    rest = [d for d in draws if d[0] != "appear"] + [(str(rng.choice(others)), a) for _, a in appear[max_appear:]]
    appear = appear[:max_appear]
    order = [int(i) for i in rng.permutation(cfg.objects)]
    for i, (_, is_asked) in zip(order, appear):
        length = min(_grid_values(rng, *cfg.event_length, cfg.grid), scene.duration)
        start = _place(rng, length, 0.0, scene.duration, [], cfg.grid, 0.0)
        scene.events.append(Event(i, "appear", start, start + length, qid="?" if is_asked else None))
    hosts = order[len(appear):]
    colours = [c for c in COLOURS if c not in {o.colour for o in scene.objects}]
    rest.sort(key=lambda d: not d[1])  # asked first: distractors then avoid their (object, kind, param)
    for kind, is_asked in rest:
        if not _add_event(rng, cfg, scene, kind, hosts, colours, is_asked):
            return False
    return _assign_moves(rng, cfg, scene)


def _add_event(rng, cfg: SynthConfig, scene: Scene, kind: str, hosts: list[int], colours: list[str], asked: bool) -> bool:
    """Place one event of `kind` on one of `hosts`; False if none fits."""
    length = _grid_values(rng, *cfg.event_length, cfg.grid)
    for i in rng.permutation(hosts):
        i = int(i)
        # an asked event must be unique; a distractor must not repeat an asked one
        blocked = {e.param for e in scene.events if e.obj == i and e.kind == kind and (asked or e.qid is not None)}
        params = [p for p in {"move": ["left", "right"], "grow": [""], "recolor": colours}[kind] if p not in blocked]
        if not params:
            continue
        busy = [(e.start, e.end) for e in scene.events if e.obj == i]
        start = _place(rng, length, 0.0, scene.duration, busy, cfg.grid, cfg.grid)
        if start is not None:
            param = str(params[rng.integers(len(params))])
            scene.events.append(Event(i, kind, start, start + length, param, qid="?" if asked else None))
            return True
    return False


def _lane_geometry(cfg: SynthConfig, lane: int) -> tuple[float, int, int]:
    """(centre y, base size, grown size) of a lane."""
    lane_h = cfg.size / cfg.objects
    base = max(6, int(lane_h * 0.58))
    return (lane + 0.5) * lane_h, base, min(int(lane_h), int(round(base * GROW)))


def _assign_moves(rng, cfg: SynthConfig, scene: Scene, tries: int = 20) -> bool:
    """Start positions, distances and distractor directions so every object stays on the canvas.

    In time order from a random start: an asked move keeps its direction and needs room for at
    least min(5 px/s, 60% of the lane) of travel (so consecutive 2-FPS frames differ by >= 2.5 px for
    events up to ~5 s); a distractor move takes the allowed direction with more room. False if no
    start position works (the caller draws the scene again).
    """
    for i, obj in enumerate(scene.objects):
        _, _, grown = _lane_geometry(cfg, obj.lane)
        lo_x, hi_x = grown / 2, cfg.size - grown / 2  # the centre's range
        moves = sorted((e for e in scene.events if e.obj == i and e.kind == "move"), key=lambda e: e.start)
        if not moves:
            obj.x0 = float(rng.uniform(lo_x, hi_x))
            continue
        asked_dirs = {e.param for e in moves if e.qid is not None}
        free_dirs = [d for d in ("left", "right") if d not in asked_dirs] or ["left", "right"]
        for _ in range(tries):
            x = x0 = float(rng.uniform(lo_x, hi_x))
            plan = []
            for e in moves:
                length = e.end - e.start
                low, high = min(5.0 * length, 0.6 * (hi_x - lo_x)), 12.0 * length
                room = {"left": x - lo_x, "right": hi_x - x}
                direction = e.param if e.qid is not None else max(free_dirs, key=lambda d: room[d])
                need = low if e.qid is not None else min(low, 2.0 * length)  # distractors: >= 1 px per 0.5 s
                if room[direction] < need:
                    break
                distance = float(rng.uniform(need, max(need, min(high, room[direction]))))
                plan.append((direction, distance))
                x += distance if direction == "right" else -distance
            else:
                obj.x0 = x0
                for e, (direction, distance) in zip(moves, plan):
                    e.param, e.distance = direction, distance
                break
        else:
            return False
    return True


def highlights_scene(rng, cfg: SynthConfig, video_id: str) -> Scene:
    grid = cfg.grid
    scene = Scene(video_id, _grid_values(rng, *cfg.duration, grid), make_objects(rng, cfg))
    for i in range(cfg.objects):
        windows = 2 if rng.random() < 1 / 3 else 1
        busy: list[tuple[float, float]] = []
        for _ in range(windows):
            length = min(_grid_values(rng, *cfg.event_length, grid), scene.duration)
            start = _place(rng, length, 0.0, scene.duration, busy, grid, grid)
            if start is None:
                break
            busy.append((start, start + length))
            scene.events.append(Event(i, "appear", start, start + length))
            if length >= 3 * grid and rng.random() < 0.6:  # the highlight: enlarged for part of the window
                g_len = grid * int(rng.integers(1, int(length / grid) - 1))
                g_start = _place(rng, g_len, start + grid, start + length - grid, [], grid, 0.0)
                if g_start is not None:
                    scene.events.append(Event(i, "grow", g_start, g_start + g_len))
    _assign_moves(rng, cfg, scene)  # no moves here: random positions
    for q, i in enumerate(sorted(int(i) for i in rng.permutation(cfg.objects)[: cfg.queries_per_video])):
        obj = scene.objects[i]
        windows = sorted(_presence(scene, i))
        grow = [(e.start, e.end) for e in scene.events if e.obj == i and e.kind == "grow"]
        clip_ids, saliency = [], []
        for lo, hi in windows:
            for c in range(int(round(lo / 2)), int(round(hi / 2))):
                base = 4 if any(g0 <= 2 * c < g1 for g0, g1 in grow) else 2
                noise = rng.choice([-1, 0, 1], size=3, p=[0.15, 0.7, 0.15])
                clip_ids.append(c)
                saliency.append([int(s) for s in np.clip(base + noise, 1, 4)])
        qid = f"{video_id}#{q}"
        for e in scene.events:
            if e.obj == i and e.kind == "appear":
                e.qid = qid
        template = HIGHLIGHT_TEMPLATES[rng.integers(len(HIGHLIGHT_TEMPLATES))]
        scene.queries.append({"qid": qid, "query": template.format(obj=obj.name), "spans": [list(w) for w in windows],
                              "clip_ids": clip_ids, "saliency": saliency})
    return scene


# ---------------------------------------------------------------- rendering and encoding


def _mask(shape: str, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    c, r = size / 2, size / 2
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= r * r
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "diamond":
        return np.abs(x - c) + np.abs(y - c) <= r
    return (y >= size * 0.05) & (np.abs(x - c) <= (y / size) * r)  # triangle, apex up


def object_state(scene: Scene, i: int, t: float) -> tuple[bool, float, bool, str]:
    """(visible, centre x, enlarged, colour name) of object i at time t."""
    obj = scene.objects[i]
    visible = any(lo <= t < hi for lo, hi in _presence(scene, i))
    x, grown, colour = obj.x0, False, obj.colour
    for e in scene.events:
        if e.obj != i:
            continue
        if e.kind == "move":
            x += (-1 if e.param == "left" else 1) * e.distance * min(1.0, max(0.0, (t - e.start) / (e.end - e.start)))
        elif e.kind == "grow" and e.start <= t < e.end:
            grown = True
        elif e.kind == "recolor" and e.start <= t < e.end:
            colour = e.param
    return visible, x, grown, colour


def render(scene: Scene, cfg: SynthConfig) -> np.ndarray:
    """uint8 [frames, size, size, 3]: frame j is the scene at j / fps."""
    n = int(round(scene.duration * cfg.fps))
    frames = np.empty((n, cfg.size, cfg.size, 3), np.uint8)
    frames[:] = BACKGROUND
    masks = {}
    for i, obj in enumerate(scene.objects):
        cy, base, grown_size = _lane_geometry(cfg, obj.lane)
        for j in range(n):
            visible, x, grown, colour = object_state(scene, i, j / cfg.fps)
            if not visible:
                continue
            size = grown_size if grown else base
            key = (obj.shape, size)
            if key not in masks:
                masks[key] = _mask(obj.shape, size)
            top, left = int(round(cy - size / 2)), int(round(x - size / 2))
            top, left = min(max(top, 0), cfg.size - size), min(max(left, 0), cfg.size - size)
            frames[j, top:top + size, left:left + size][masks[key]] = COLOURS[colour]
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int, crf: int = 18, gop: int = 8) -> None:
    """libx264 yuv420p mp4, deterministic: one thread, fixed options, bit-exact muxing, atomic rename."""
    import av

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with av.open(str(tmp), "w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "crf": str(crf), "preset": "veryfast", "g": str(gop), "x264-params": "threads=1:scenecut=0"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for j, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = j
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


# ---------------------------------------------------------------- the benchmark


def split_videos(n: int, seed: int, fractions) -> list[str]:
    """Split name of each video index; seeded, disjoint, every split non-empty when n >= 3."""
    names = ("train", "val", "test")
    counts = [int(math.floor(f * n)) for f in fractions]
    for k in range(3):
        if fractions[k] > 0 and counts[k] == 0 and n >= 3:
            counts[k] = 1
    counts[0] = n - counts[1] - counts[2]
    if any(f > 0 and c < 1 for f, c in zip(fractions, counts)):
        raise ValueError(f"n = {n} is too small for splits {fractions}: every split needs a video")
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    labels = [""] * n
    for rank, index in enumerate(order):
        labels[index] = names[0] if rank < counts[0] else names[1] if rank < counts[0] + counts[1] else names[2]
    return labels


def synthesize(out_dir, n: int, seed: int, *, task: str = "grounding", progress=None, **knobs) -> Path:
    """Write the benchmark (n videos) into out_dir; returns out_dir. Knobs: the SynthConfig fields.

    Reuses out_dir when its synth.json records the same n, seed and knobs (written last, so a
    crash mid-way regenerates).
    """
    cfg = SynthConfig(task=task, **{k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()}).validate()
    out = Path(out_dir)
    manifest = {"version": SYNTH_VERSION, "n": int(n), "seed": int(seed), "config": asdict(cfg)}
    manifest = json.loads(json.dumps(manifest))  # tuples -> lists, as read back
    manifest_path = out / "synth.json"
    if manifest_path.exists():
        try:
            if json.loads(manifest_path.read_text()) == manifest:
                return out
        except ValueError:
            pass
        manifest_path.unlink()
    labels = split_videos(int(n), seed, cfg.splits)  # validates n first: nothing is removed for a bad request
    _clear_stale(out, int(n))
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "val": [], "test": []}
    scenes = []
    for index in range(int(n)):
        rng = np.random.default_rng([seed, index])
        video_id = f"synth{index:05d}"
        scene = (highlights_scene if cfg.task == "highlights" else grounding_scene)(rng, cfg, video_id)
        write_mp4(out / "videos" / f"{video_id}.mp4", render(scene, cfg), cfg.fps, cfg.crf, cfg.gop)
        for q in scene.queries:
            row = {"qid": q["qid"], "video_id": video_id, "video": f"videos/{video_id}.mp4", "duration": scene.duration,
                   "query": q["query"], "spans": q["spans"], "task": cfg.task}
            if cfg.task == "highlights":
                row.update(clip_ids=q["clip_ids"], saliency=q["saliency"])
            rows[labels[index]].append(row)
        scenes.append({"video_id": video_id, "split": labels[index], "duration": scene.duration,
                       "objects": [asdict(o) for o in scene.objects], "events": [asdict(e) for e in scene.events]})
        if progress:
            progress(index + 1, n)
    for name, split_rows in rows.items():
        _write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in split_rows))
    _write_text(out / "scenes.jsonl", "".join(json.dumps(s) + "\n" for s in scenes))
    _write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return out


OWN_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "scenes.jsonl", "synth.json")


def _clear_stale(out: Path, n: int) -> None:
    """Make ``out`` hold only this call's benchmark: an earlier synth's extra videos are removed.

    Refuses (ValueError) a folder holding files data synth does not write, so nothing else is lost.
    """
    import re

    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; choose another --out")
    if not out.is_dir():
        return
    foreign = [p for p in out.iterdir() if p.name not in OWN_FILES and p.name != "videos" and not p.name.startswith(".")]
    videos = out / "videos"
    own_video = re.compile(r"synth(\d{5,})\.mp4")
    if videos.is_dir():
        foreign += [p for p in videos.iterdir() if not own_video.fullmatch(p.name) and not p.name.startswith(".")]
    if foreign:
        raise ValueError(f"{out}: holds files data synth did not write ({', '.join(str(p) for p in foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new --out")
    if videos.is_dir():
        for p in videos.iterdir():
            match = own_video.fullmatch(p.name)
            if match and int(match.group(1)) >= n:  # a video of an earlier, larger benchmark
                p.unlink()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- CLI (registered by tempsamp.data.cli)


def _range(text: str) -> tuple[float, float]:
    """'20' -> (20, 20); '10:180' -> (10, 180)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW:HIGH, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW:HIGH, got {text!r}")
    return (parts[0], parts[-1])


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="output folder (videos/, train/val/test.jsonl, scenes.jsonl)")
    parser.add_argument("--n", type=positive_int, required=True, help="number of videos")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--task", choices=("grounding", "highlights"), default="grounding")
    parser.add_argument("--duration", type=_range, default=d.duration, help="video length in s, or LOW:HIGH (default 20)")
    parser.add_argument("--event-length", type=_range, default=d.event_length, help="event length in s, LOW:HIGH (default 2:6)")
    parser.add_argument("--objects", type=positive_int, default=d.objects, help="objects per video, 1-5 (default 3)")
    parser.add_argument("--distractors", type=nonnegative_int, default=d.distractors, help="unasked events per video (grounding; default 2)")
    parser.add_argument("--queries-per-video", type=positive_int, default=d.queries_per_video, help="default: 4 (grounding), one per object (highlights)")
    parser.add_argument("--kinds", default=",".join(d.kinds), help=f"event kinds, comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--size", type=positive_int, default=d.size, help="frame side in pixels (default 56)")
    parser.add_argument("--fps", type=positive_int, default=d.fps, help="video frame rate (default 4)")


def run_synth(args) -> int:
    t0 = time.perf_counter()
    knobs = dict(duration=args.duration, event_length=args.event_length, objects=args.objects, distractors=args.distractors,
                 queries_per_video=args.queries_per_video, kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
                 size=args.size, fps=args.fps)
    try:
        out = synthesize(args.out, args.n, args.seed, task=args.task, **knobs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {name: sum(1 for _ in open(out / f"{name}.jsonl")) for name in ("train", "val", "test")}
    print(f"{args.n} videos, queries: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" -> {out} ({time.perf_counter() - t0:.1f} s)")
    return 0
