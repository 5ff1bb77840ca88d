"""The ``htapkv`` command.

Subcommands come from the ``htapkv.commands`` entry-point group: each package
registers its own (``bench`` registers ``htapkv bench``), so ``kvstore`` never
imports the layers above it. A plug-in is ``register(subparsers)`` and sets
``func`` on its parser; ``func(args)`` returns the exit code.

User mistakes (a :class:`~kvstore.errors.KVError` reaching the top) print one
line on stderr and exit with status 2: no stack trace.
"""

from __future__ import annotations

import argparse
import signal
import sys
from importlib.metadata import entry_points


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htapkv", description="htapkv: a hackable HTAP database in Python."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for ep in sorted(entry_points(group="htapkv.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    from kvstore.errors import KVError

    args = build_parser().parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so that a command
    # running a local cluster stops the servers it started instead of
    # leaving them behind. Server commands install their own handler.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        code: int = args.func(args)
    except KVError as e:
        print(f"htapkv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
