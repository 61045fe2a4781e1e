#!/bin/sh
# Install every Debian package needed to build, test and run the demo, and to build
# and check the Debian package (make deb, make deb-check).
# Idempotent, and fast when everything is present: apt runs only for what is missing.
set -eu
PKGS="build-essential pkg-config git ca-certificates
liblua5.4-dev lua5.4 libuv1-dev libcurl4-openssl-dev libpq-dev libmicrohttpd-dev libedit-dev
libcmocka-dev lua-busted lua-cjson lua-check
etcd-server etcd-client postgresql postgresql-contrib pgbouncer patroni
curl openssl valgrind clang libclang-rt-14-dev wrk prometheus procps iproute2
debhelper dpkg-dev fakeroot lintian help2man man-db systemd"
missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
if [ -z "$missing" ]; then
  echo "deps: all packages present"
  exit 0
fi
echo "deps: installing:$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
# Debian starts services on install in some setups; we never use the system ones.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
