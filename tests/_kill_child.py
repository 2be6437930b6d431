"""Child process for the kill-loop test: runs the command line with an argv, output discarded."""

from __future__ import annotations

import os
import sys


def run_cli(argv: list[str]) -> None:
    """Run ``transferlab ARGV`` as the console script does, in this (forked) process."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import matplotlib

    matplotlib.use("Agg")
    sys.argv = ["transferlab", *argv]
    from transferlab.cli import main

    main()


def noop() -> None:
    """Nothing: starting one makes the forkserver import what it preloads, before anything is timed."""
