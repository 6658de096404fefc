#!/usr/bin/env bash
# irctest (https://github.com/progval/irctest) against chatsvc's IRC listener, and
# against ngIRCd through irctest's own controller when `ngircd` is installed, on
# irctest's usual selection; prints pass/fail/skip counts for each.
#
#   tests/irctest/run.sh [--irctest DIR] [--only chatsvc|ngircd] [PYTEST ARGS...]
#
# irctest's location: --irctest DIR, else $IRCTEST_DIR, else ../shared/third_party/irctest
# beside the repository.  Absent: the run is skipped with a message (exit 0).
# Python: $PYTHON, else python3; irctest's requirements are installed into it, and
# chatsvc must be importable from it (pip install -e '.[test]').
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IRCTEST=${IRCTEST_DIR:-$ROOT/../shared/third_party/irctest}
PY=${PYTHON:-python3}
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --irctest) IRCTEST=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) break ;;
    esac
done
MARKERS='not services and not implementation-specific and not deprecated and not strict'

if [ ! -d "$IRCTEST/irctest/server_tests" ]; then
    echo "irctest: SKIPPED (not found at $IRCTEST; pass --irctest DIR or set IRCTEST_DIR)"
    exit 0
fi
IRCTEST=$(cd "$IRCTEST" && pwd)
"$PY" -m pip install -q -r "$IRCTEST/requirements.txt"
"$PY" -c 'import chatsvc' || { echo "chatsvc is not installed in $PY"; exit 1; }

OUT=$(mktemp -d "${TMPDIR:-/tmp}/irctest.XXXXXX")
echo "irctest results in $OUT"

run() {  # run NAME CONTROLLER_MODULE [PYTEST ARGS...]
    local name=$1 controller=$2
    shift 2
    echo "=== irctest: $name ==="
    (cd "$IRCTEST" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest \
        -p no:cacheprovider -q --controller "$controller" -m "$MARKERS" \
        --junitxml "$OUT/$name.xml" "$@" irctest/server_tests >"$OUT/$name.log" 2>&1) || true
    "$PY" - "$OUT/$name.xml" "$name" <<'PY'
import sys
import xml.etree.ElementTree as ET

counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    tags = {child.tag for child in case}
    skipped = next((c for c in case if c.tag == "skipped"), None)
    if skipped is not None and (skipped.get("type") or "").endswith("xfail"):
        counts["xfailed"] += 1
    elif skipped is not None:
        counts["skipped"] += 1
    elif tags & {"failure", "error"}:
        counts["failed"] += 1
    else:
        counts["passed"] += 1
total = sum(counts.values())
print(f"{sys.argv[2]}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (of {total})")
PY
}

if [ "$ONLY" != ngircd ]; then
    run chatsvc tests.irctest.chatsvc_controller "$@"
fi
if [ "$ONLY" != chatsvc ]; then
    if command -v ngircd >/dev/null; then
        run ngircd irctest.controllers.ngircd "$@"
    else
        echo "ngircd: SKIPPED (not installed; apt-get install -y ngircd)"
    fi
fi
