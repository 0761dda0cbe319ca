#!/usr/bin/env bash
# Runs the whole suite with the installed package (not the source tree), as CI does.
# Lint and types first, on the source tree (configured in pyproject.toml): either failing fails the run.
set -uo pipefail
VENV=${FSEV_VENV:-/opt/fsev/venv}
cd "$(dirname "$0")/.."
if ! "$VENV/bin/ruff" check fsev cli tests bench scripts; then
  echo "run-tests: ruff check failed (see above)" >&2
  exit 1
fi
if ! "$VENV/bin/mypy"; then
  echo "run-tests: mypy failed (see above)" >&2
  exit 1
fi
# Python 3.9 (Debian 11) is the oldest fsev runs on; mypy can no longer target it.
if ! FSEV_VENV=$VENV bash scripts/check-py39.sh; then
  echo "run-tests: scripts/check-py39.sh found code Python 3.9 cannot run (see above)" >&2
  exit 1
fi
# pytest exits 5 when it collected no test: that is a failure here, as any non-zero.
"$VENV/bin/pytest" -p no:cacheprovider "$@" tests
rc=$?
[ $rc -eq 5 ] && echo "run-tests: pytest collected no tests" >&2
exit $rc
