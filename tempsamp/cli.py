"""The `tempsamp` command line: a thin layer over the library.

Each subcommand lives in the module that owns its work and exposes
``register(subparsers)``; modules keep heavy imports (torch, transformers)
inside their handlers so ``tempsamp --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register subcommands, in the order --help lists them.
COMMAND_MODULES = [
    "tempsamp.data.cli",
    "tempsamp.train.cli",
    "tempsamp.evaluation.run_cli",
    "tempsamp.evaluation.score_cli",
    "tempsamp.evaluation.compare",
    "tempsamp.evaluation.view",
    "tempsamp.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempsamp",
        description="TempSamp-R1: mixed-policy RL fine-tuning of video LLMs for temporal grounding.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: `tempsamp train ... --debug` works too
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "overrides", None) is not None and all(_is_override(a) for a in extra):
        args.overrides = [*args.overrides, *extra]  # `train RECIPE --max-steps 1 key=value`: overrides anywhere
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    if debug:
        return int(args.func(args) or 0)
    return run_reporting_errors(args)


def _is_override(arg: str) -> bool:
    key, sep, _ = arg.partition("=")
    return bool(sep) and not arg.startswith("-") and key.strip().isidentifier()


def run_reporting_errors(args) -> int:
    """Run a command; bad input and stops become one line on stderr and a non-zero exit.

    Exit codes: 2 bad input (UserError, and ValueError/OSError raised while reading input),
    1 a run that stopped on purpose after saving its work (RunStopped), 130 interrupted.
    Other exceptions are bugs and keep their traceback.
    """
    import signal

    from tempsamp.errors import RunStopped, UserError

    name = f"tempsamp {args.command}"
    previous = _sigterm_as_interrupt(signal)
    try:
        return int(args.func(args) or 0)
    except RunStopped as err:
        if str(err):  # empty: another process of the run says why (the collective watchdog)
            _report(f"{name}: {err}")
        return err.exit_code
    except UserError as err:
        _report(f"{name}: error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _report(f"{name}: interrupted; what was finished is saved (rerun the same command to continue)")
        return 130
    except (ValueError, OSError) as err:
        _report(f"{name}: error: {_one_line(err)} (--debug shows the traceback)")
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _report(line: str) -> None:
    """The line that ends a command: on stderr, or, in a trainer under `tempsamp train --num-processes`,
    to its launcher, which prints one process's line once (tempsamp.train.launch)."""
    import os

    from tempsamp.train.launch import report_path

    path = report_path(os.environ["RANK"]) if "RANK" in os.environ else None
    if path is None:
        print(line, file=sys.stderr)
        return
    try:
        path.write_text(line + "\n")
    except OSError:
        print(line, file=sys.stderr)


def _sigterm_as_interrupt(signal):
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, so files are closed and the stop is reported."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _one_line(err: BaseException) -> str:
    """An exception as one line; OSErrors say which file."""
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(err.args[-1]):
        return f"{err.filename}: {err.strerror or err}"
    text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
