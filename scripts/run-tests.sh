#!/usr/bin/env bash
# Runs the whole suite with the installed package (not the source tree), as CI does.
set -uo pipefail
VENV=${FSEV_VENV:-/opt/fsev/venv}
cd "$(dirname "$0")/.."
# pytest exits 5 when it collected no test: that is a failure here, as any non-zero.
"$VENV/bin/pytest" -p no:cacheprovider "$@" tests
rc=$?
[ $rc -eq 5 ] && echo "run-tests: pytest collected no tests" >&2
exit $rc
