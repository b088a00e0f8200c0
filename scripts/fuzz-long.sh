#!/usr/bin/env bash
# The longer fuzz run (issue 13): every parser of untrusted bytes with a random seed and a large budget.
# Usage: scripts/fuzz-long.sh [EXAMPLES_PER_PARSER] [CONTAINER_EXAMPLES]  (defaults 5000 and 2000)
# Prints, per target, the inputs tried (results / replaybench typed errors); a failure is a crash to fix.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
N=${1:-5000}
NC=${2:-2000}
REPLAYBENCH_FUZZ_EXAMPLES=$N "$PY" -m pytest tests/fuzz/test_fuzz_binary.py tests/fuzz/test_fuzz_documents.py \
    -p no:xdist -q -W ignore::RuntimeWarning
REPLAYBENCH_FUZZ_EXAMPLES=$NC "$PY" -m pytest tests/fuzz/test_fuzz_containers.py -p no:xdist -q -W ignore::RuntimeWarning
