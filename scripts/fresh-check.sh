#!/bin/sh
# fresh-check.sh: run the README's first-screen commands as a newcomer would, each on
# a new minimal Debian 12 machine (a chroot), and report how each one ended.
#
# For every command in the first ```sh block of README.md (so a README change is
# tested too): unpack a new copy of a minimal bookworm root (mmdebstrap
# --variant=minbase, cached as a tarball between runs), put a clean clone of this
# repository's HEAD in /root/project, mount /proc, /sys, /dev (with /dev/pts) and a
# tmpfs /dev/shm,
# install only make and git, and run the command there as root; then the same again
# as an ordinary user with sudo and a clone in its home. Prints each run's exit
# status and time; exits non-zero when one failed. Whatever happens, processes
# left inside the chroot are killed and everything mounted is unmounted.
#
# Usage: scripts/fresh-check.sh [COMMAND...]   (default: the README's commands)
# Needs root (mmdebstrap, mount, chroot); re-runs itself through sudo otherwise.
# Environment: FRESH_CACHE (tarball and downloaded .debs, default
# /var/cache/stolon-pgbouncer-fresh), FRESH_WORK (scratch, default /var/tmp),
# FRESH_TIMEOUT (seconds per command, default 2700), FRESH_KEEP=1 keeps the roots,
# FRESH_AS (default "root user": who runs each command).
# Each command's whole output is in build/fresh-check/commandN.log.
#
# Differences from a real machine, on purpose: the chroot shares this machine's
# kernel and network (loopback included: nothing else may use the suites' ports
# while it runs), and policy-rc.d stops Debian from starting the packages' own
# services (postgresql, etcd, pgbouncer, prometheus), as in any chroot; the suites
# never use them. Downloaded .debs are cached, which changes nothing installed.
set -eu

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi

SRC=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FRESH_CACHE:-/var/cache/stolon-pgbouncer-fresh}
TIMEOUT=${FRESH_TIMEOUT:-2700}
WORK=$(mktemp -d "${FRESH_WORK:-/var/tmp}/spgb-fresh.XXXXXX")
TARBALL=$CACHE/bookworm-minbase.tar
mkdir -p "$CACHE/archives/partial"

if ! command -v mmdebstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
# A directory there is a cache an older run left by mistake (mmdebstrap picks a
# directory for a target whose name has no tar extension): build the tarball again.
if [ -d "$TARBALL" ]; then rm -rf "$TARBALL"; fi
if [ ! -s "$TARBALL" ]; then
  echo "fresh-check: building a minimal Debian 12 root (cached in $TARBALL)"
  rm -rf "$TARBALL.tmp.tar"
  mmdebstrap --quiet --variant=minbase --format=tar bookworm "$TARBALL.tmp.tar"
  mv "$TARBALL.tmp.tar" "$TARBALL"
fi

if [ $# -eq 0 ]; then
  # the README's first ```sh block, one command a line, comments dropped
  set -- $(awk '/^```sh/ { inb = 1; next } inb && /^```/ { exit } inb { sub(/#.*/, ""); gsub(/^ +| +$/, ""); if ($0 != "") { gsub(/ /, "\037"); print } }' "$SRC/README.md")
  [ $# -gt 0 ] || { echo "fresh-check: no commands found in README.md's first sh block" >&2; exit 2; }
fi

LOGS=$SRC/build/fresh-check
mkdir -p "$LOGS"

# Every mount point of the current root, innermost last; undone in reverse.
MOUNTS=""
ROOT=""
release_root() {
  if [ -n "$ROOT" ]; then
    # processes still running inside our chroot (a daemon a failed run left behind)
    for p in /proc/[0-9]*; do
      if [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
    done
  fi
  for m in $(printf '%s\n' $MOUNTS | tac); do
    umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || echo "fresh-check: could not unmount $m" >&2
  done
  MOUNTS=""
  if [ -n "$ROOT" ] && [ "${FRESH_KEEP:-0}" != 1 ]; then
    # never delete through a mount point (that would be this machine's /dev or /sys)
    if awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
      echo "fresh-check: $ROOT still has mounts; left in place" >&2
    else
      rm -rf --one-file-system "$ROOT"
    fi
  fi
  ROOT=""
}
cleanup() {
  release_root
  if [ "${FRESH_KEEP:-0}" != 1 ]; then rmdir "$WORK" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mnt() { # mnt TARGET mount-arguments...: mount and remember it
  target=$1
  shift
  mount "$@" "$target"
  MOUNTS="$MOUNTS $target"
}

# run_one N COMMAND AS -> exit status of COMMAND run in a new root, AS "root" (clone in
# /root/project) or "user" (an ordinary user with sudo, clone in its home, Debian's
# PATH for ordinary users, which lacks the sbin folders).
run_one() {
  n=$1
  cmd=$2
  as=$3
  r=$WORK/root$n
  log=$LOGS/command$n.log
  mkdir -p "$r"
  ROOT=$r
  tar -C "$r" -xf "$TARBALL"
  # a private mount tree of its own, so nothing mounted below propagates out
  mnt "$r" --bind "$r"
  mount --make-private "$r"
  mnt "$r/proc" -t proc proc
  mnt "$r/sys" -t sysfs sysfs
  mnt "$r/dev" --bind /dev
  mount --make-slave "$r/dev"
  mnt "$r/dev/shm" -t tmpfs -o mode=1777,size=1g tmpfs
  # terminals (the REPL spec runs script(1)): a bind of /dev leaves /dev/pts empty
  mnt "$r/dev/pts" --bind /dev/pts
  mnt "$r/var/cache/apt/archives" --bind "$CACHE/archives"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 0755 "$r/usr/sbin/policy-rc.d"
  env_root="env -i HOME=/root USER=root LOGNAME=root TERM=dumb LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  pkgs="make git"
  [ "$as" = root ] || pkgs="$pkgs sudo"
  if ! chroot "$r" $env_root sh -c "chown _apt:root /var/cache/apt/archives/partial 2>/dev/null;
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs" >"$log" 2>&1; then
    echo "fresh-check: could not install $pkgs in the new root:" >&2
    tail -20 "$log" >&2
    return 125
  fi
  if [ "$as" = root ]; then
    git clone --quiet "$SRC" "$r/root/project"
    run="$env_root sh -c 'cd /root/project && $cmd'"
  else
    chroot "$r" useradd -m -s /bin/sh newcomer
    echo "newcomer ALL=(ALL) NOPASSWD:ALL" >"$r/etc/sudoers.d/newcomer"
    chmod 0440 "$r/etc/sudoers.d/newcomer"
    git clone --quiet "$SRC" "$r/home/newcomer/project"
    chroot "$r" chown -R newcomer:newcomer /home/newcomer/project
    run="runuser -u newcomer -- env -i HOME=/home/newcomer USER=newcomer LOGNAME=newcomer TERM=dumb LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games sh -c 'cd ~/project && $cmd'"
  fi
  t0=$(date +%s)
  set +e
  timeout -k 30 "$TIMEOUT" chroot "$r" sh -c "$run" >>"$log" 2>&1
  status=$?
  set -e
  t1=$(date +%s)
  ELAPSED=$((t1 - t0))
  return $status
}

failed=0
n=0
summary=""
for c in "$@"; do
  cmd=$(printf '%s' "$c" | tr '\037' ' ')
  for as in ${FRESH_AS:-root user}; do
    n=$((n + 1))
    echo "fresh-check: [$n] $cmd, as $as (log: $LOGS/command$n.log)"
    ELAPSED=0
    if run_one "$n" "$cmd" "$as"; then status=0; else status=$?; fi
    if [ "$status" -ne 0 ]; then
      failed=1
      echo "fresh-check: [$n] $cmd, as $as, failed; the end of its output:"
      tail -40 "$LOGS/command$n.log" | sed 's/^/    /'
    fi
    line=$(printf '  %-22s as %-5s exit %3d  %5d s' "$cmd" "$as" "$status" "$ELAPSED")
    summary="$summary$line
"
    release_root
  done
done

echo "fresh-check: results (each on a new minimal Debian 12 root)"
printf '%s' "$summary"
exit $failed
