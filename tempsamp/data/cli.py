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
