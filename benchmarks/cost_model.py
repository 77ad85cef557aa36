"""Derive the cost model of ``bornfield estimate`` from the benchmark records.

Reads ``benchmarks/results/*.json`` (see :func:`bornfield.estimate.cost_model_from_records`
for which records) and writes ``src/bornfield/cost_model.json``, the file the installed
package uses. Run it after re-running any of those benchmarks; ``--check`` only compares
(exit 1 when the committed file is stale; tests/test_estimate.py does the same).

    .venv/bin/python benchmarks/cost_model.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "src" / "bornfield" / "cost_model.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args()

    from bornfield import atomic
    from bornfield.estimate import cost_model_from_records

    text = json.dumps(cost_model_from_records(HERE / "results").to_dict(), indent=1) + "\n"
    if args.check:
        same = TARGET.is_file() and TARGET.read_text(encoding="utf-8") == text
        print(f"{TARGET}: {'up to date' if same else 'STALE: run python benchmarks/cost_model.py'}")
        return 0 if same else 1
    atomic.write_text(TARGET, text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
