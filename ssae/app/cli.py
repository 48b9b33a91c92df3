"""The ``ssae`` command line: train, adapt, calibrate, detect, evaluate, preprocess, info, demo.

Errors in the user's input end with one line on stderr and exit code 2, before any long work
where they can be known up front (flags, inputs, the output folder and its free space); an
interrupted training run exits with 130 after saving its resume state, an interrupted
detection with 130 and nothing under a final name.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

from ssae import __version__
from ssae.app.commands import COMMANDS
from ssae.app.processes import watch_stop_file
from ssae.io.errors import SSAEError, TrainingInterrupted

EPILOG = "Every command accepts --help. Reference: docs/command-line.md in the repository."


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's error contract: one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ssae").strip()
        self.exit(2, f"ssae: error: {command + ': ' if command else ''}{message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; :mod:`ssae.app.reference` documents it from here."""
    parser = _Parser(
        prog="ssae",
        description="Scale-space autoencoders for unsupervised anomaly segmentation in brain FLAIR MRI.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"ssae {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subcommands)
    return parser


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM (a GUI's Cancel, a scheduler's stop) unwinds like Ctrl-C: temporary files go."""
    raise KeyboardInterrupt


def run(argv: list[str]) -> int:
    """One command, start to finish, as an exit code (see the module doc); the process-wide
    set-up (signals, the stop file) is the caller's: :func:`main` or :mod:`ssae.app.worker`."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a flag refused with one line on stderr
        return int(exc.code or 0)
    try:
        return args.run(args) or 0
    except TrainingInterrupted as exc:
        print(f"ssae: {exc}", file=sys.stderr)
        return 130
    except SSAEError as exc:
        print(f"ssae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssae: interrupted (files being written were removed)", file=sys.stderr)
        return 130


def interrupt_on_terminate() -> object | None:
    """SIGTERM and SIGINT unwind like Ctrl-C (training turns them into a saved resume state
    itself); returns the previous SIGTERM handler, None where signals cannot be set."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the parent's group ignores Ctrl-C
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None
    return previous


class ReaderMayLeave:
    """Standard output of a command line whose reader may go away (``ssae detect ... | head``):
    the command still finishes its work (results and tables written, the real exit code), only
    its printing stops. Without this the first line after ``head`` exits would end the run."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        self._gone = True
        try:  # what is still buffered must not fail again when the interpreter exits
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    original = sys.stdout
    if original is not None and not isinstance(original, ReaderMayLeave):
        sys.stdout = ReaderMayLeave(original)
    previous = interrupt_on_terminate()
    watch_stop_file()  # a GUI's Cancel (ssae.app.processes): behaves like Ctrl-C
    try:
        return run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sys.stdout = original


if __name__ == "__main__":
    sys.exit(main())
