"""The ``purger`` command: a parser made of one module per command group.

``context`` holds what every command needs; ``service``, ``purge``, ``audit``,
``holds``, ``requests`` and ``topics`` each register their subcommands. They import
``context`` and never each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from purger import __version__
from purger.cli import audit, explain, holds, policy, purge, requests, service, topics
from purger.cli.context import Context
from purger.errors import ConfigError, PurgerError
from purger.exits import EXIT_FAILURE, EXIT_USAGE, fail
from purger.settings import describe_settings


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its --help lists every PURGER_* setting)."""
    parser = argparse.ArgumentParser(
        prog="purger",
        description="Event-driven retention purger for telecom records.",
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"purger {__version__}")
    parser.add_argument(
        "--config", type=Path, help="YAML settings file (also PURGER_CONFIG); env vars win"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service.register(sub)
    purge.register(sub)
    audit.register(sub)
    holds.register(sub)
    explain.register(sub)
    policy.register(sub)
    requests.register(sub)
    topics.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``purger`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ctx = Context(args)
        code: int = args.func(ctx)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except PurgerError as exc:
        fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    return code


__all__ = ["Context", "build_parser", "main"]
