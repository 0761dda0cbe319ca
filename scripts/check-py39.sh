#!/usr/bin/env bash
# Finds what breaks on Python 3.9 (Debian 11's, the oldest Python fsev runs on:
# pyproject's requires-python) in fsev's code and tests, on a machine whose own
# Python is newer. mypy cannot target 3.9 any more and ruff checks syntax only,
# so this is the check; scripts/run-tests.sh runs it with ruff and mypy, and the
# Debian 11 VM guest (tests/vm) runs the real-kernel tests on a real 3.9.
#
#   scripts/check-py39.sh [PATH...]     (default: fsev cli tests bench scripts)
#
# 1. APIs, keyword arguments and syntax newer than 3.9, by vermin (pip package,
#    installed by install-test-deps.sh): dataclass(slots=), zip(strict=),
#    os.eventfd, match, X | Y outside annotations, ... A line that is guarded
#    (sys.version_info) says so with a `# novermin` comment.
# 2. Behaviour vermin does not know, by pattern: socket timeouts are
#    TimeoutError only from 3.10 (use socket.timeout), importlib.metadata's
#    entry_points(group=) is 3.10.
# 3. If a Python 3.9 is at hand (FSEV_PY39, python3.9 on PATH, pyenv's), every
#    file must compile with it.
# Exit 0 when nothing is found, 1 with each finding on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${FSEV_VENV:-/opt/fsev/venv}
PATHS=("$@")
[ ${#PATHS[@]} -gt 0 ] || PATHS=(fsev cli tests bench scripts)
rc=0

VERMIN=$VENV/bin/vermin
command -v "$VERMIN" >/dev/null 2>&1 || VERMIN=$(command -v vermin || true)
if [ -z "$VERMIN" ]; then
  echo "check-py39: vermin is not installed (make test-deps installs it)" >&2
  exit 1
fi
out=$("$VERMIN" --no-tips --violations -t=3.9- --eval-annotations --backport dataclasses "${PATHS[@]}" 2>&1)
vrc=$?
if [ $vrc -ne 0 ]; then
  echo "$out" | grep -v -e '^Detecting' -e '^Analyzing' -e 'incompatible versions' -e 'could not be combined' \
                       -e '^Incompatible versions' -e '^Note: Some files'
  rc=1
fi

if grep -rnE --include='*.py' 'except \(?TimeoutError|raises\(TimeoutError|entry_points\(group=' "${PATHS[@]}" \
    | grep -v -e '# novermin' -e 'version_info'; then
  echo "check-py39: the lines above behave differently before Python 3.10 (socket.timeout; entry_points()[group])"
  rc=1
fi

compiled=""
for PY39 in ${FSEV_PY39:-} "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9 "$(command -v python3.9)"; do
  [ -x "$PY39" ] && "$PY39" -c 'import sys; assert sys.version_info[:2] == (3, 9)' 2>/dev/null && break
  PY39=""
done
if [ -n "$PY39" ]; then
  compiled=", compiled with $PY39"
  if ! "$PY39" - "${PATHS[@]}" <<'PYEOF'
import pathlib, sys
bad = 0
for root in sys.argv[1:]:
    for f in sorted(pathlib.Path(root).rglob("*.py")) if pathlib.Path(root).is_dir() else [pathlib.Path(root)]:
        try:
            compile(f.read_text(), str(f), "exec", dont_inherit=True)
        except SyntaxError as e:
            print(f"{f}:{e.lineno}: does not compile on Python 3.9: {e.msg}")
            bad += 1
sys.exit(1 if bad else 0)
PYEOF
  then rc=1; fi
fi
[ $rc -eq 0 ] && echo "check-py39: ok (vermin$compiled)"
exit $rc
