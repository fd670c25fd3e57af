"""torchrun, run in this process, that reports what stopped the trainers in one line.

`tempsamp train --num-processes N` execs ``python -m tempsamp.train.launch TORCHRUN_ARGS``: the
same process (its PID, its lock of output_dir, the signals a scheduler sends it) becomes torchrun,
exactly as ``python -m torch.distributed.run`` would. Each trainer writes the line that ended it
(bad input, a stop) into a folder this launcher passes down, instead of printing it; when the
trainers are done the launcher prints the lowest rank's line once, and none of torchrun's
ChildFailedError traceback. A trainer that crashed without such a line (a bug) keeps its own
traceback above, and the launcher names its rank and exit code.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPORT_DIR = "TEMPSAMP_REPORT_DIR"


def report_path(rank: int | str) -> Path | None:
    """Where a trainer under this launcher writes its last line; None outside it."""
    folder = os.environ.get(REPORT_DIR)
    return Path(folder) / f"rank-{int(rank):05d}.txt" if folder else None


def main(argv: list[str]) -> int:
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    if "LOGLEVEL" not in os.environ:
        # torchrun's own log lines (a worker's failure, the signal it forwards) repeat what this
        # launcher and the trainers say; LOGLEVEL=WARNING (torchrun's variable) shows them again.
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
                logger.setLevel(logging.CRITICAL)

    folder = tempfile.mkdtemp(prefix="tempsamp-report-")
    os.environ[REPORT_DIR] = folder  # the trainers inherit it
    code, failed = 0, None
    try:
        torchrun(argv)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code, failed = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode, rank
    except SignalException as err:
        code = 128 + int(err.sigval)
    finally:
        lines = [p.read_text().strip() for p in sorted(Path(folder).glob("rank-*.txt"))]
        shutil.rmtree(folder, ignore_errors=True)
    logging.shutdown()
    if lines:
        print(lines[0], file=sys.stderr)
    elif failed is not None:
        print(f"tempsamp train: training process {failed} ended with exit code {code} (its output is above)",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
