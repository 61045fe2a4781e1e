#!/bin/sh
# Flag lists ($BASE, $PKG_CFLAGS, $objs, $dict, $FUZZ_ARGS) are split on purpose.
# shellcheck disable=SC2086

# fuzz.sh [SECONDS [TARGET...]]: build the libFuzzer harnesses (fuzz/<target>.c)
# against the project's sources (src/*.c except main.c) with clang into
# build-fuzz/, then run each target for SECONDS (default 60) on its committed seed
# corpus (fuzz/corpus/<target>/, read only) plus a scratch corpus in
# build-fuzz/corpus/<target>/ (where new inputs go). Crashes are written to
# build-fuzz/artifacts/<target>/. Exits non-zero if any target found a crash.
#
# SECONDS=0 only builds. Environment: FUZZ_BUILD (default build-fuzz), CC (default
# clang), FUZZ_JOBS (parallel targets, default 1), FUZZ_ARGS (extra libFuzzer flags).
# POSIX sh, no network: everything needed is local.
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECS=${1:-60}
[ $# -gt 0 ] && shift
TARGETS=${*:-"template http clusterdata etcd flags patroni"}
B=${FUZZ_BUILD:-build-fuzz}
FCC=${CC:-clang}
case $FCC in cc | gcc | */gcc) FCC=clang ;; esac
JOBS=${FUZZ_JOBS:-1}

PKGS="lua5.4 libuv libcurl libpq libmicrohttpd libedit"
PKG_CFLAGS=$(pkg-config --cflags $PKGS)
PKG_LIBS=$(pkg-config --libs $PKGS)
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
BASE="-std=c11 -D_GNU_SOURCE -O1 -g $SAN -Wall -Wextra -Wno-unused-parameter"

mkdir -p "$B/obj"

# Project sources: instrumented for coverage (fuzzer-no-link). Not -Werror: a
# warning only clang emits in someone else's file must not stop the fuzzing.
objs=""
for src in src/*.c; do
    case $src in src/main.c) continue ;; esac
    o="$B/obj/$(basename "$src" .c).o"
    if [ ! -f "$o" ] || [ -n "$(find "$src" src/*.h -newer "$o")" ]; then
        echo "  CC      $src"
        $FCC $BASE -fsanitize=fuzzer-no-link $PKG_CFLAGS -c -o "$o" "$src"
    fi
    objs="$objs $o"
done
# lua/ and policies/, embedded as the binary embeds them (the Makefile's rule), so
# the harnesses load the same Lua code the binary runs; plus the drivers, fuzz/*.lua.
mkdir -p "$B/tools"
cc -std=c11 -O2 -Wall -Wextra -Werror -o "$B/tools/embed" tools/embed.c
# shellcheck disable=SC2046
"$B/tools/embed" "$B/embedded.c" $(ls lua/*.lua lua/*/*.lua policies/*.lua policies/*/*.lua fuzz/*.lua | sort)
$FCC $BASE -fsanitize=fuzzer-no-link $PKG_CFLAGS -iquote src -c -o "$B/obj/embedded.o" "$B/embedded.c"
objs="$objs $B/obj/embedded.o"
rm -f "$B/libspgb-fuzz.a"
ar rcs "$B/libspgb-fuzz.a" $objs

# Harnesses: our own code, held to -Werror. Modules are found through weak
# references (src/modules.c): link the whole library.
for t in $TARGETS; do
    [ -f "fuzz/$t.c" ] || { echo "fuzz.sh: no harness fuzz/$t.c" >&2; exit 2; }
    echo "  LD      $B/fuzz_$t"
    $FCC $BASE -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -fsanitize=fuzzer -iquote src $PKG_CFLAGS \
        -o "$B/fuzz_$t" "fuzz/$t.c" \
        -Wl,--whole-archive "$B/libspgb-fuzz.a" -Wl,--no-whole-archive $PKG_LIBS -lm
done

[ "$SECS" -gt 0 ] || exit 0

# Lua modules come from the embedded copy built above, as in the binary, unless
# SPGB_LUA_DIR says otherwise (e.g. a patched copy). make exports SPGB_LUA_DIR for the
# suites: drop it unless FUZZ_LUA_DIR asks for one.
unset SPGB_LUA_DIR
if [ -n "${FUZZ_LUA_DIR:-}" ]; then SPGB_LUA_DIR=$FUZZ_LUA_DIR; export SPGB_LUA_DIR; fi
# Leaks are findings too; UBSan prints where.
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS UBSAN_OPTIONS

run_one() {
    t=$1
    mkdir -p "$B/corpus/$t" "$B/artifacts/$t"
    dict=""
    [ -f "fuzz/$t.dict" ] && dict="-dict=fuzz/$t.dict"
    log="$B/fuzz_$t.log"
    echo "== $t: ${SECS}s (log $log)"
    if "$B/fuzz_$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$B/artifacts/$t/" $dict ${FUZZ_ARGS:-} \
        "$B/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        echo "== $t: ok, ${runs:-?} executions, ${rate:-?} exec/s"
        return 0
    fi
    echo "== $t: FAILED (crash or error); tail of $log:"
    tail -n 40 "$log"
    ls "$B/artifacts/$t"
    return 1
}

status=0
if [ "$JOBS" -le 1 ]; then
    for t in $TARGETS; do
        run_one "$t" || status=1
    done
else
    # Run up to JOBS targets at once; each reports when it ends.
    pids=""
    n=0
    for t in $TARGETS; do
        run_one "$t" >"$B/$t.summary" 2>&1 &
        pids="$pids $!"
        n=$((n + 1))
        if [ "$n" -ge "$JOBS" ]; then
            for p in $pids; do wait "$p" || status=1; done
            pids=""
            n=0
        fi
    done
    for p in $pids; do wait "$p" || status=1; done
    for t in $TARGETS; do cat "$B/$t.summary"; done
fi
exit $status
