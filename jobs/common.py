"""What every job shares: the common flags and the exit convention (0 and the report on stdout;
2 and a one-line `error: ...` on stderr for a DrrayError)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional


def job_parser(subcommand: str, doc: str) -> argparse.ArgumentParser:
    """A job's parser, its usage line naming the job as the user ran it: `drray SUBCOMMAND` from
    the console command, `python -m jobs.MODULE` otherwise (as the README and `ray job submit` do)."""
    from jobs.cli import SUBCOMMANDS

    via_console = Path(sys.argv[0]).name == "drray"
    prog = f"drray {subcommand}" if via_console else f"python -m {SUBCOMMANDS[subcommand]}"
    return argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])


def add_config_args(parser: argparse.ArgumentParser, config_help: str = "YAML config (every field has a default)"):
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config field; repeatable")


def add_address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")


def run_job(run: Callable[[argparse.Namespace], object], args: argparse.Namespace,
            report: Optional[Callable[[object], str]] = str) -> int:
    """run(args), then print report(result) (nothing when report is None); a DrrayError is one
    line on stderr and exit status 2."""
    from drray.errors import DrrayError

    try:
        result = run(args)
    except DrrayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report is not None:
        print(report(result), flush=True)
    return 0
