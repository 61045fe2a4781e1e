#!/bin/sh
# deb.sh build | check
#
# build: the Debian package (debian/) with dpkg-buildpackage, from a copy of the
#   checkout's tracked and unignored files in build/deb/stolon-pgbouncer-VERSION, so
#   the build writes nothing into the checkout; the .deb, .buildinfo and .changes
#   land in build/deb.
# check: build, then lintian (errors and warnings fail), the package's file list,
#   `systemd-analyze verify` and `security` on every unit; as root also install it
#   with dpkg -i, run the installed binary and a script using the installed Lua
#   library, purge it and check nothing is left. Not root (or DEB_CHECK_NO_INSTALL=1):
#   the same checks on the package's contents unpacked in a temporary folder.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
out=$top/build/deb
pkg=stolon-pgbouncer

need() {
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || { echo "deb: $t is missing: run 'make deps'" >&2; exit 1; }
  done
}

build() {
  need dpkg-buildpackage dh help2man git
  version=$(dpkg-parsechangelog -S Version)
  src=$out/$pkg-$version
  rm -rf "$out"
  mkdir -p "$src"
  # Tracked files and new ones not ignored (what the next commit would hold), less
  # those deleted meanwhile; the inner script's $f is the inner shell's.
  # shellcheck disable=SC2016
  git ls-files -z --cached --others --exclude-standard |
    xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done; true' sh |
    tar --null -T - -cf - | tar -C "$src" -xf -
  echo "deb: building $pkg $version in build/deb"
  (cd "$src" && DEB_BUILD_OPTIONS="parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
     dpkg-buildpackage -us -uc -b >"$out/build.log" 2>&1) ||
    { tail -40 "$out/build.log" >&2; echo "deb: dpkg-buildpackage failed (build/deb/build.log)" >&2; exit 1; }
  rm -rf "$src"
  ls "$out"/*.deb
}

fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }

units="stolon-pgbouncer-supervise.service stolon-pgbouncer-supervise@.service
stolon-pgbouncer-pauser.service stolon-pgbouncer-pauser@.service"
etc_files="supervise.env pauser.env pgbouncer.ini.template"

# contents DEB: the paths `make install` lays out, and /etc's files as conffiles.
contents() {
  dpkg-deb --contents "$1" | awk '{print $6}' >"$out/contents.txt"
  for f in ./usr/bin/stolon-pgbouncer ./usr/share/stolon-pgbouncer/policies/supervise.lua \
    ./usr/share/stolon-pgbouncer/policies/pauser.lua \
    ./usr/share/stolon-pgbouncer/policies/examples/refuse-long-transactions.lua \
    ./usr/share/man/man1/stolon-pgbouncer.1.gz; do
    grep -qx "$f" "$out/contents.txt" || fail "$f missing from the package"
  done
  for u in $units; do
    grep -qx "./lib/systemd/system/$u" "$out/contents.txt" || fail "unit $u missing from the package"
  done
  conffiles=$(dpkg-deb --ctrl-tarfile "$1" | tar -xOf - ./conffiles)
  for f in $etc_files; do
    echo "$conffiles" | grep -qx "/etc/stolon-pgbouncer/$f" || fail "/etc/stolon-pgbouncer/$f is not a conffile"
  done
  if grep -q "^./usr/share/stolon-pgbouncer/lua" "$out/contents.txt"; then
    fail "lua/ is embedded in the binary and must not be shipped as files"
  fi
  echo "deb-check: contents: $(wc -l <"$out/contents.txt") paths, the binary, policies/, man page, 4 units, 3 conffiles"
}

# run_installed BIN DATADIR: the binary as installed, with SPGB_LUA_DIR unset and
# from an empty folder, so only its embedded lua/ and policies/ can answer.
run_installed() {
  bin=$1 datadir=$2
  work=$(mktemp -d)
  v=$(cd "$work" && env -u SPGB_LUA_DIR "$bin" --version) || fail "$bin --version"
  [ "$v" = "stolon-pgbouncer $version ($(echo "$v" | sed 's/.*(\(.*\))/\1/'))" ] || fail "--version said: $v"
  echo "deb-check: $v"
  h=$(cd "$work" && env -u SPGB_LUA_DIR "$bin" status --help) || fail "status --help"
  echo "$h" | grep -q "^usage: stolon-pgbouncer status" || fail "status --help said: $h"
  cat >"$work/lib.lua" <<'LUA'
local duration = require "duration"
assert(duration.parse("1m30s") == 90, "duration.parse")
local ok, err = pcall(require("common").find_program, nil)
assert(not ok and tostring(err):match("^lua/common%.lua:%d+:"), "not the embedded common.lua: " .. tostring(err))
io.write("embedded library: ", tostring(err):match("^[^:]+"), "\n")
return 0
LUA
  (cd "$work" && env -u SPGB_LUA_DIR "$bin" run lib.lua) || fail "run lib.lua with the embedded library"
  (cd "$work" && env -u SPGB_LUA_DIR "$bin" policy show failover) |
    cmp -s - "$datadir/policies/failover.lua" || fail "policy show failover differs from the installed file"
  rm -rf "$work"
}

# analyze DIR [--man=no]: systemd-analyze verify and security on DIR's units
# (templates are verified as an instance). systemd need not be PID 1.
analyze() {
  dir=$1
  shift
  for u in $units; do
    systemd-analyze verify "$@" "$dir/$u" || fail "systemd-analyze verify $u"
    score=$(systemd-analyze security --offline=yes "$dir/$u" 2>&1 | sed -n 's/^→ Overall exposure level for [^ ]*: //p')
    [ -n "$score" ] || fail "systemd-analyze security $u"
    echo "deb-check: $u: verify ok, exposure $score"
  done
}

leftovers() {
  for p in /usr/bin/stolon-pgbouncer /usr/share/stolon-pgbouncer /etc/stolon-pgbouncer \
    /usr/share/man/man1/stolon-pgbouncer.1.gz /usr/share/doc/stolon-pgbouncer; do
    [ ! -e "$p" ] || echo "$p"
  done
  for u in $units; do [ ! -e "/lib/systemd/system/$u" ] || echo "/lib/systemd/system/$u"; done
  find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
    -name '*stolon-pgbouncer*' 2>/dev/null || true
}

check() {
  need lintian dpkg-deb systemd-analyze
  build >/dev/null
  version=$(dpkg-parsechangelog -S Version)
  deb=$(ls "$out/${pkg}_${version}_"*.deb)
  echo "deb-check: built $deb"
  echo "deb-check: lintian:"
  rc=0
  lintian --fail-on error,warning "$out"/*.changes >"$out/lintian.txt" 2>&1 || rc=$?
  sed -i '/running with root privileges/d' "$out/lintian.txt"
  if [ -s "$out/lintian.txt" ]; then sed 's/^/  /' "$out/lintian.txt"; else echo "  (no errors, no warnings)"; fi
  [ "$rc" -eq 0 ] || fail "lintian reported errors or warnings (exit $rc)"
  contents "$deb"
  if [ "$(id -u)" -eq 0 ] && [ -z "${DEB_CHECK_NO_INSTALL:-}" ]; then
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "installed"; then
      fail "$pkg is already installed on this machine: purge it first (dpkg --purge $pkg)"
    fi
    trap 'dpkg --purge $pkg >/dev/null 2>&1 || true' EXIT
    dpkg -i "$deb" >"$out/dpkg.log" 2>&1 || { cat "$out/dpkg.log" >&2; fail "dpkg -i"; }
    echo "deb-check: installed with dpkg -i"
    run_installed /usr/bin/stolon-pgbouncer /usr/share/stolon-pgbouncer
    [ "$(man -w stolon-pgbouncer)" = /usr/share/man/man1/stolon-pgbouncer.1.gz ] || fail "man -w stolon-pgbouncer"
    analyze /lib/systemd/system
    dpkg --purge "$pkg" >>"$out/dpkg.log" 2>&1 || { cat "$out/dpkg.log" >&2; fail "dpkg --purge"; }
    trap - EXIT
    left=$(leftovers)
    [ -z "$left" ] || fail "left behind after purge: $left"
    echo "deb-check: purged, nothing left behind"
  else
    # Not root: no dpkg -i. The same checks on the unpacked package; the units
    # point at the unpacked binary, and man pages are not installed for verify.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    dpkg-deb -x "$deb" "$tmp/root"
    echo "deb-check: not root (or DEB_CHECK_NO_INSTALL): no dpkg -i, checking the unpacked package in $tmp"
    run_installed "$tmp/root/usr/bin/stolon-pgbouncer" "$tmp/root/usr/share/stolon-pgbouncer"
    mkdir "$tmp/units"
    for u in $units; do
      sed "s|/usr/bin/stolon-pgbouncer|$tmp/root/usr/bin/stolon-pgbouncer|" "$tmp/root/lib/systemd/system/$u" >"$tmp/units/$u"
    done
    analyze "$tmp/units" --man=no
  fi
  echo "deb-check: ok"
}

case "${1:-}" in
build) build ;;
check) check ;;
*) echo "usage: deb.sh build|check" >&2; exit 2 ;;
esac
