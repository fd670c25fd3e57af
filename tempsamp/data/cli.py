"""`tempsamp data check` (what an annotation file holds, what is wrong) and `tempsamp data synth`.

Exit codes of `check`: 0 the file was read (with --lenient, malformed rows skipped and counted);
1 it has malformed rows and --lenient was not given (training and evaluation read strictly and
would refuse it; every problem is still listed); 2 it cannot be read at all.
"""

from __future__ import annotations

import importlib
import json
import sys

from tempsamp.data.readers import DATASETS


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="annotation files: check them, make the synthetic benchmark")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: _usage(data))

    check = sub.add_parser("check", help="count queries and videos, list problems in an annotation file")
    check.add_argument("--dataset", default=None, choices=DATASETS, help="format (default: detect from the file)")
    check.add_argument("--annotations", required=True, help="the annotation file")
    check.add_argument("--durations", default=None, help="Charades-STA text: the Charades_v1 CSV (id, length)")
    check.add_argument("--videos", default=None, help="folder of videos: also report missing video files")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--lenient", action="store_true", help="exit 0 even if some rows are malformed")
    check.set_defaults(func=run_check)

    _register_synth(sub)
    _register_difficulty(sub)


def _register_difficulty(sub) -> None:
    from tempsamp.errors import nonnegative_int, positive_float, positive_int
    from tempsamp.evaluation.inference import ENGINES
    from tempsamp.evaluation.run_cli import _video_args

    p = sub.add_parser("difficulty", help="sample K answers per query with a model: per-query IoU mean, max, pass "
                                          "rate (resumable; the input of the difficulty selections)")
    p.add_argument("--model", required=True, help="model folder, training run folder, checkpoint folder, or hub id")
    p.add_argument("--annotations", required=True)
    p.add_argument("--dataset", default=None, choices=DATASETS, help="format (default: detect from the file)")
    p.add_argument("--durations", default=None, help="Charades-STA: the CSV with video lengths")
    p.add_argument("--videos", default=None, help="folder of videos")
    p.add_argument("--samples", type=positive_int, default=8, help="answers sampled per query (default 8)")
    p.add_argument("--mode", choices=["answer", "cot", "timelens"], default="answer",
                   help="prompt mode, as in training (default answer; timelens: TimeLens' prompt)")
    p.add_argument("--temperature", type=positive_float, default=None,
                   help="sampling temperature (default: the trained run's, else 1.0, the training temperature)")
    p.add_argument("--top-p", type=positive_float, default=1.0, help="nucleus sampling's mass, in (0, 1] (default 1)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="each query's samples are a function of (seed, qid)")
    p.add_argument("--out", required=True, help="the difficulty file (JSONL), resumable")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N queries")
    p.add_argument("--batch-size", type=positive_int, default=4, help="queries per generate call (default 4)")
    p.add_argument("--engine", choices=ENGINES, default="transformers")
    p.add_argument("--overwrite", action="store_true", help="replace a file made with another model or settings")
    _video_args(p, temperature=False)
    p.set_defaults(func=run_difficulty)


def run_difficulty(args) -> int:
    from tempsamp.data.difficulty import sample_difficulty, summary
    from tempsamp.data.readers import load_examples
    from tempsamp.errors import UserError
    from tempsamp.evaluation.run_cli import _say, _video_settings, resolve_model, resolve_settings

    if args.engine == "vllm":
        from tempsamp.evaluation.inference import check_vllm_available

        try:
            check_vllm_available()
        except RuntimeError as err:
            raise UserError(str(err)) from None
    if args.temperature is not None and args.temperature <= 0:
        raise UserError(f"--temperature {args.temperature}: difficulty needs sampled answers (> 0); greedy is "
                        "`tempsamp eval`")
    model, trained = resolve_model(args.model, _say)
    settings = resolve_settings(args, trained, _say)
    temperature = args.temperature if args.temperature is not None else float((trained or {}).get("temperature", 1.0))
    examples = load_examples(args.annotations, args.dataset, durations=args.durations, videos=args.videos)
    if not examples:
        raise UserError(f"{args.annotations}: no queries in the file")
    if args.limit:
        examples = examples[: args.limit]
    records = sample_difficulty(model, examples, args.out, samples=args.samples, mode=args.mode, temperature=temperature,
                                top_p=args.top_p, video=_video_settings(settings, args.frame_cache),
                                max_new_tokens=settings["max_new_tokens"], engine=args.engine,
                                batch_size=args.batch_size, seed=args.seed, overwrite=args.overwrite, say=_say)
    print(summary(records))
    print(f"per-query figures in {args.out}")
    return 0


def _register_synth(sub) -> None:
    # synth.py is written separately; `tempsamp --help` must keep working if it is absent.
    try:
        synth = importlib.import_module("tempsamp.data.synth")
    except ModuleNotFoundError as err:
        if err.name != "tempsamp.data.synth":
            raise  # a dependency of synth.py is missing: a real error, not an absent module
        return
    p = sub.add_parser("synth", help="write the synthetic benchmark (mp4 files and annotations)")
    synth.add_synth_arguments(p)
    p.set_defaults(func=synth.run_synth)


def _usage(parser) -> int:
    parser.print_help()
    return 2


def run_check(args) -> int:
    from tempsamp.data.checks import check_annotations, format_report

    try:
        report = check_annotations(args.annotations, args.dataset, durations=args.durations, videos=args.videos)
    except (OSError, ValueError) as err:  # missing file, not JSON, unknown format, unreadable CSV
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if report["malformed"]["count"] and not args.lenient:
        print(f"{report['malformed']['count']} malformed rows: reading this file strictly fails; "
              "fix them, or pass --lenient (here, and lenient_annotations=true to train) to skip them",
              file=sys.stderr)
        return 1
    return 0
