"""`txl`: the one command line. Each subcommand is a module with `add_arguments`, `run(args)` and a docstring."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, UserError

COMMANDS = {
    "train": "pipelines.train",
    "classify": "pipelines.classify",
    "evaluate": "pipelines.evaluate",
    "baseline": "pipelines.baseline",
    "pretrain": "pipelines.pretrain",
    "app": "pipelines.app_cmd",
    "bench": "pipelines.bench",
}


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txl", description="Long-document classification with Transformer-XL.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if chosen not in (None, name):
            subs.add_parser(name, add_help=False)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            subs.add_parser(name, help="(not available in this version)")
            continue
        doc = (module.__doc__ or "").strip()
        sub = subs.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = _parser(chosen).parse_args(argv)
    if not getattr(args, "_run", None):
        if args.command:
            print(f"txl {args.command}: not available in this version", file=sys.stderr)
            return EXIT_USAGE
        _parser(None).print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"txl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"txl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if os.environ.get("TXL_DEBUG"):
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"txl {args.command}: internal error: {type(e).__name__}: {first[:300]} "
              "(rerun with TXL_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
