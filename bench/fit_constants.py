"""Refit the estimator's constants (densegrpo_core/resources/estimate.py) from one or more bench.json files.

    python bench/fit_constants.py [--write] bench_out/a/bench.json bench_out/b/bench.json ...

All files must come from one device kind (cpu or cuda); --write replaces that kind's constants block in
estimate.py, otherwise the fitted values are only printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from densegrpo_core.app.benchmark import fit_from_results  # noqa: E402
from densegrpo_core.resources.estimate import constants_json, write_constants  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="bench.json files")
    p.add_argument("--write", action="store_true", help="write the constants into densegrpo_core/resources/estimate.py")
    args = p.parse_args(argv)
    results = []
    for path in args.results:
        with open(path) as f:
            results.append(json.load(f))
    kind, constants = fit_from_results(results)
    print(constants_json(constants))
    if args.write:
        print(f"wrote the {kind} constants into {write_constants(kind, constants)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
