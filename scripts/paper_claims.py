"""Measure the CoMIR paper's claims with this code and write ``docs/claims.md``.

Usage: ``python scripts/paper_claims.py [--quick] [--out DIR] [--work DIR]``. Trains what
it needs on the bundled samples (:mod:`comir.claims`); ``--quick`` uses tiny models and a
few pairs (for the test suite); ``--work`` keeps the runs for a re-run;
``--from-results`` only writes the report and figures again from ``DIR/claims/results.json``.
"""

from __future__ import annotations

import argparse
import sys

from comir.claims import rewrite, run_claims


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, few pairs (tests)")
    p.add_argument("--out", default="docs", help="folder of claims.md (default: docs)")
    p.add_argument("--work", default=None, help="keep trained runs here (default: temporary)")
    p.add_argument("--progress", action="store_true", help="training progress bars")
    p.add_argument("--from-results", action="store_true", help="re-render DIR/claims/results.json")
    args = p.parse_args(argv)
    if args.from_results:
        print(f"report: {rewrite(args.out, args.work)}")
        return 0
    path = run_claims(args.out, quick=args.quick, work=args.work, progress=args.progress)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
