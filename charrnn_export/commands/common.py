"""What every command shares: one-line errors, exit statuses, and the log on stderr.

    Parser                  argparse that reports a bad flag in one line (exit 2)
    fail(message, status)   prints `charrnn-export: error: MESSAGE` on stderr, returns the status
    run_guarded(run, args)  run(args) with the project's errors as one line: CharRNNError -> its
                            exit status (2), Ctrl-C -> 130, a closed pipe -> 141 quietly
    stderr_logger(name)     a logger of the package's that writes plain lines to stderr

Standard library only: `python -m charrnn_export.sample` must stay light.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import CharRNNError

ERROR_PREFIX = "charrnn-export: error:"  # the same for every command, so scripts can match it


def fail(message: str, status: int = 2) -> int:
    print(f"{ERROR_PREFIX} {message}", file=sys.stderr)
    return status


class Parser(argparse.ArgumentParser):
    """argparse that reports bad flags in our one-line form (argparse already exits 2)."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_guarded(run, args) -> int:
    try:
        return run(args)
    except CharRNNError as e:
        return fail(str(e), e.exit_status)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        return 141  # the reader went away (e.g. `| head`): not an error worth a message


def stderr_logger(name: str, fmt: str = "%(message)s") -> logging.Logger:
    """The package logger `name`, writing INFO and above to stderr as plain lines (once)."""
    log = logging.getLogger(name)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
