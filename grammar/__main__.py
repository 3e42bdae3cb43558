"""Command line: ``python -m grammar convert|check|validate``.

* ``convert SCHEMA.json [--prop-order a,b] [--spec] [--strict] [--grammar-only] [--dotall]``
  prints GBNF (the generation shape; ``--spec`` the spec-faithful one); exit 2 with the
  error on stderr for an invalid or unsupported schema.
* ``check GRAMMAR.gbnf TEXT_FILE`` exits 0 if the text is in the grammar's
  language, 1 if not, 2 if the grammar is invalid (line and column on stderr).
* ``validate SCHEMA.json JSON_FILE`` exits 0 if valid, 1 with the violations listed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from grammar.convert import convert
from grammar.errors import GrammarError
from grammar.gbnf import parse_gbnf
from grammar.recognize import Recognizer
from grammar.validate import validate


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"grammar: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"grammar: error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None


def _schema(path: str) -> object:
    try:
        return json.loads(_read(path))
    except json.JSONDecodeError as exc:
        print(f"grammar: error: {path} is not valid JSON: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m grammar")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="print the GBNF of a JSON Schema")
    c.add_argument("schema")
    c.add_argument("--prop-order", default="", help="comma-separated property names to put first")
    c.add_argument("--spec", action="store_true",
                   help="the spec-faithful shape: objects without additionalProperties open, "
                        "small objects in any order, unbounded strings")
    c.add_argument("--strict", action="store_true",
                   help="close objects without additionalProperties in either shape")
    c.add_argument("--grammar-only", action="store_true",
                   help="refuse keywords the grammar cannot enforce")
    c.add_argument("--dotall", action="store_true", help="'.' in patterns matches newlines too")
    k = sub.add_parser("check", help="is a text in a grammar's language?")
    k.add_argument("grammar")
    k.add_argument("text")
    v = sub.add_parser("validate", help="validate a JSON file against a schema")
    v.add_argument("schema")
    v.add_argument("json")
    args = parser.parse_args(argv)

    if args.command == "convert":
        order = [p for p in args.prop_order.split(",") if p]
        try:
            result = convert(_schema(args.schema), prop_order=order, strict=args.strict, spec=args.spec,
                             grammar_only=args.grammar_only, dotall=args.dotall)
        except GrammarError as exc:
            print(f"grammar: error: {exc}", file=sys.stderr)
            return 2
        sys.stdout.write(result.gbnf)
        for where in result.validated_only:
            print(f"grammar: note: {where} is checked only by validation", file=sys.stderr)
        return 0
    if args.command == "check":
        try:
            recognizer = Recognizer(parse_gbnf(_read(args.grammar)))
        except GrammarError as exc:
            print(f"grammar: error: {exc}", file=sys.stderr)
            return 2
        text = _read(args.text)
        if recognizer.accepts(text):
            return 0
        at = recognizer.longest_prefix(text)
        print(f"grammar: text leaves the grammar at character {at}" if at < len(text)
              else "grammar: text ends before the grammar is complete", file=sys.stderr)
        return 1
    result_v = validate(_read(args.json), _schema(args.schema))
    for error in result_v.errors:
        print(f"{error.pointer or '/'}: {error.message}")
    return 0 if result_v.valid else 1


if __name__ == "__main__":
    sys.exit(main())
