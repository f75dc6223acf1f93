"""Compare two claims audits (``reports/claims.json`` of two runs): which verdicts moved, and whether any claim
is reproduced in one run and contradicted in the other (the verdict rule's acceptance test; must be none).

    .venv/bin/python scripts/compare_claims.py RUN_A/reports/claims.json RUN_B/reports/claims.json [--md OUT]

Exit status 1 when a claim has opposite verdicts, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.reporting.agreement import compare_audits, load_audit, markdown, summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--label-a", default="run A")
    ap.add_argument("--label-b", default="run B")
    ap.add_argument("--md", type=Path, help="also write the table of moved verdicts here")
    args = ap.parse_args(argv)
    pairs = compare_audits(load_audit(args.a), load_audit(args.b))
    text = markdown(pairs, args.label_a, args.label_b)
    print(text)
    if args.md:
        args.md.write_text(text)
    return 1 if summary(pairs)["opposite"] else 0


if __name__ == "__main__":
    sys.exit(main())
