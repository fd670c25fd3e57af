"""`tempsamp eval` (a model on a benchmark) and `tempsamp predict` (a model on one video)."""

from __future__ import annotations

import json

from tempsamp.evaluation.inference import ENGINES, MODES, ORACLE_LABEL


def _video_args(p) -> None:
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--max-frames", type=int, default=None,
                   help="frame cap (default: 256 with exact sampling, qwen-vl-utils' 768 with --frame-sampling qwen)")
    p.add_argument("--frame-sampling", choices=["exact", "qwen"], default="exact",
                   help="exact: frames at k / fps s (default); qwen: qwen-vl-utils 0.0.14's frame count, indices and "
                        "sizes (docs/evaluation.md)")
    p.add_argument("--min-pixels", type=int, default=16 * 28 * 28)
    p.add_argument("--max-pixels", type=int, default=256 * 28 * 28)
    p.add_argument("--total-pixels", type=int, default=3584 * 28 * 28)
    p.add_argument("--frame-cache", default=None, help="folder for the on-disk frame cache")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _video_settings(args):
    from tempsamp.evaluation.inference import VideoSettings

    from tempsamp.video.sampling import QWEN_MAX_FRAMES

    max_frames = args.max_frames or (QWEN_MAX_FRAMES if args.frame_sampling == "qwen" else 256)
    return VideoSettings(fps=args.fps, max_frames=max_frames, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                         total_pixels=args.total_pixels, cache_dir=args.frame_cache, frame_sampling=args.frame_sampling)


def register(sub) -> None:
    p = sub.add_parser("eval", help="run a model on a benchmark: predictions, metrics, report (resumable)")
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--dataset", default=None, help="charades | activitynet | qvhighlights | jsonl (default: detect)")
    p.add_argument("--annotations", required=True)
    p.add_argument("--durations", default=None, help="Charades-STA: the CSV with video lengths")
    p.add_argument("--videos", default=None, help="folder of videos")
    p.add_argument("--mode", nargs="+", default=["answer"], choices=MODES,
                   help="one or more of answer, cot, mixed (deployable), mixed-oracle (upper bound: uses the GT)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N queries")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="queries per generate call, each with its own video (default: 8 on a GPU, 4 on a CPU); "
                        "greedy answers do not depend on it")
    p.add_argument("--engine", choices=ENGINES, default="transformers",
                   help="transformers (default) or vllm (needs vLLM installed and a CUDA GPU)")
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
    from tempsamp.evaluation.inference import check_vllm_available, evaluate

    if args.engine == "vllm":  # before reading anything: say at once what is missing
        try:
            check_vllm_available()
        except RuntimeError as err:
            raise SystemExit(f"tempsamp eval: {err}") from None
    examples = load_examples(args.annotations, args.dataset, durations=args.durations, videos=args.videos)
    if args.limit:
        examples = examples[: args.limit]
    results = evaluate(args.model, examples, args.out, args.mode, video=_video_settings(args),
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       batch_size=args.batch_size, engine=args.engine)
    for mode, metrics in results.items():
        print(f"== {ORACLE_LABEL if mode == 'mixed-oracle' else mode}")
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=1))
    print(f"predictions, metrics and report.md in {args.out}")
    return 0


def run_predict(args) -> int:
    from tempsamp.evaluation.inference import generate_answer
    from tempsamp.models import qwen_vl

    from tempsamp.video.cache import VideoDecodeError

    try:
        video = _video_settings(args).load(args.video)
    except (FileNotFoundError, VideoDecodeError) as err:
        raise SystemExit(f"tempsamp predict: {err}") from None
    model, processor = qwen_vl.load_policy(args.model)
    model.eval()
    duration = float(getattr(video, "duration", None) or len(video.frames) / video.fps)
    rec = generate_answer(model, processor, video, args.query, duration, args.mode, args.task,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    span = rec["span"]
    print(f"span: {span[0]:.1f} to {span[1]:.1f} s" if span else "span: (the answer did not contain a span)")
    print(f"answer: {rec['text']}")
    return 0
