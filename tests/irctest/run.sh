#!/usr/bin/env bash
# irctest (https://github.com/progval/irctest) against chatsvc's IRC listener, and
# against ngIRCd through irctest's own controller when `ngircd` is installed, on
# irctest's usual selection; prints pass/fail/skip counts for each.
#
#   tests/irctest/run.sh [--irctest DIR] [--only chatsvc|ngircd] [--jobs N]
#                        [--record FILE] [--expected FILE] [PYTEST ARGS...]
#
# irctest's location: --irctest DIR, else $IRCTEST_DIR, else third_party/irctest (the
# pinned snapshot in this repository).  Absent: the run is skipped with a message (exit 0).
# Python: $PYTHON, else python3; irctest's requirements are installed into it, and
# chatsvc must be importable from it (pip install -e '.[test]').
#
# --record FILE    write the ids of the tests chatsvc passed to FILE (one per line)
# --expected FILE  the regression gate (CI): run only the tests listed in FILE against
#                  chatsvc; exit 1 naming each one that did not pass
# --jobs N         run chatsvc's tests in N pytest processes at once (each test starts
#                  its own server; irctest hands out distinct ports)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IRCTEST=${IRCTEST_DIR:-$ROOT/third_party/irctest}
PY=${PYTHON:-python3}
ONLY=""
JOBS=1
RECORD=""
EXPECTED=""
while [ $# -gt 0 ]; do
    case "$1" in
        --irctest) IRCTEST=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --record) RECORD=$(realpath -m "$2"); shift 2 ;;
        --expected) EXPECTED=$(realpath -m "$2"); ONLY=chatsvc; shift 2 ;;
        *) break ;;
    esac
done
MARKERS='not services and not implementation-specific and not deprecated and not strict'
# chatsvc runs irctest's "services" tests too (accounts: SASL PLAIN, PASS), through its
# controller's registerUser (chatsvc-admin account add); ngIRCd's controller has no services.
CHATSVC_MARKERS='not implementation-specific and not deprecated and not strict'

if [ ! -d "$IRCTEST/irctest/server_tests" ]; then
    echo "irctest: SKIPPED (not found at $IRCTEST; pass --irctest DIR or set IRCTEST_DIR)"
    exit 0
fi
IRCTEST=$(cd "$IRCTEST" && pwd)
"$PY" -m pip install -q -r "$IRCTEST/requirements.txt"
"$PY" -c 'import chatsvc' || { echo "chatsvc is not installed in $PY"; exit 1; }

OUT=$(mktemp -d "${TMPDIR:-/tmp}/irctest.XXXXXX")
echo "irctest results in $OUT"

# Outcomes from junit files: "ID<TAB>OUTCOME" lines (ID as pytest names the test;
# parametrized ids may contain spaces).
outcomes() {
    "$PY" - "$@" <<'PY'
import sys
import xml.etree.ElementTree as ET

for path in sys.argv[1:]:
    for case in ET.parse(path).getroot().iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")
        test = f"{module.replace('.', '/')}.py::{cls}::{case.get('name')}"
        tags = {child.tag for child in case}
        skipped = next((c for c in case if c.tag == "skipped"), None)
        if skipped is not None and (skipped.get("type") or "").endswith("xfail"):
            outcome = "xfailed"
        elif skipped is not None:
            outcome = "skipped"
        elif tags & {"failure", "error"}:
            outcome = "failed"
        else:
            outcome = "passed"
        print(f"{test}\t{outcome}")
PY
}

summary() {  # summary NAME < "ID OUTCOME" lines
    awk -F '\t' -v name="$1" '{ n[$2]++; t++ } END {
        printf "%s: %d passed, %d failed, %d skipped, %d xfailed (of %d)\n",
            name, n["passed"], n["failed"], n["skipped"], n["xfailed"], t }'
}

run() {  # run NAME CONTROLLER_MODULE JOBS [PYTEST ARGS...]: the outcomes in $OUT/NAME.outcomes
    local name=$1 controller=$2 jobs=$3 i markers=$MARKERS
    shift 3
    [ "$name" = chatsvc ] && markers=$CHATSVC_MARKERS
    echo "=== irctest: $name ==="
    local pids=()
    # irctest records the ports it hands out in $TMPDIR/irctest_ports.json and
    # locks that file only under pytest-xdist (PYTEST_XDIST_WORKER set): our
    # processes share a private TMPDIR (no other run's unlocked writes) and lock.
    mkdir -p "$OUT/tmp"
    for ((i = 0; i < jobs; i++)); do
        (cd "$IRCTEST" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" SHARD=$i SHARDS=$jobs \
            TMPDIR="$OUT/tmp" PYTEST_XDIST_WORKER="shard$i" exec "$PY" -m pytest -p no:cacheprovider -q --controller "$controller" -m "$markers" \
            -p tests.irctest.shard --junitxml "$OUT/$name.$i.xml" "$@" \
            >"$OUT/$name.$i.log" 2>&1) &
        pids+=($!)
    done
    trap 'kill -INT "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
    for i in "${pids[@]}"; do wait "$i" || true; done
    trap - INT TERM
    outcomes "$OUT/$name".*.xml | sort >"$OUT/$name.outcomes"
    summary "$name" <"$OUT/$name.outcomes"
    leftovers
}

leftovers() {  # servers of this run still running (their configs are under $OUT/tmp)
    local pid found=()
    for pid in $(pgrep -f -- "$OUT/tmp/" || true); do
        [ "$pid" != $$ ] && found+=("$pid")
    done
    if [ ${#found[@]} -gt 0 ]; then
        echo "irctest: ${#found[@]} server(s) left running, stopping them: ${found[*]}"
        kill "${found[@]}" 2>/dev/null || true
    fi
}

if [ -n "$EXPECTED" ]; then
    mapfile -t wanted < <(grep -v '^#' "$EXPECTED" | grep .)
    run chatsvc tests.irctest.chatsvc_controller "$JOBS" "$@" "${wanted[@]}"
    missing=$(awk -F '\t' 'NR == FNR { if ($2 == "passed") ok[$1] = 1; next } !($1 in ok)' \
        "$OUT/chatsvc.outcomes" <(printf '%s\n' "${wanted[@]}"))
    if [ -n "$missing" ]; then
        echo "irctest: tests that passed before and do not now (logs in $OUT):"
        printf '%s\n' "$missing" | sed 's/^/  /'
        exit 1
    fi
    echo "irctest: all ${#wanted[@]} expected tests passed"
    exit 0
fi

if [ "$ONLY" != ngircd ]; then
    run chatsvc tests.irctest.chatsvc_controller "$JOBS" "$@" irctest/server_tests
    if [ -n "$RECORD" ]; then
        {
            echo "# irctest tests chatsvc passes (tests/irctest/run.sh --record; the CI gate)"
            awk -F '\t' '$2 == "passed" { print $1 }' "$OUT/chatsvc.outcomes"
        } >"$RECORD"
    fi
fi
if [ "$ONLY" != chatsvc ]; then
    if command -v ngircd >/dev/null; then
        run ngircd tests.irctest.ngircd_controller "$JOBS" "$@" irctest/server_tests
    else
        echo "ngircd: SKIPPED (not installed; apt-get install -y ngircd)"
    fi
fi
