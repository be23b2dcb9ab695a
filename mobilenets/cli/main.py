"""`mobilenets <verb>`: the parser, and the one place where library errors become one line and
exit code 2."""
from __future__ import annotations

import sys

from ..core.errors import MobileNetsError
from ..core.runtime import tune_allocator
from . import analysis, claims, data, deploy, evaluate, models, search, train
from .common import Parser, one_line_warnings

VERB_MODULES = (models, data, train, evaluate, deploy, search, analysis, claims)


def build_parser() -> Parser:
    parser = Parser(prog="mobilenets", description="MobileNet V1, V2, V3 and V4 built from the papers' tables.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in VERB_MODULES:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    tune_allocator()
    one_line_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MobileNetsError as e:
        print(f"mobilenets: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mobilenets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
