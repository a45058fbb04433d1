#!/usr/bin/env bash
# The build stage of the Dockerfile, and what .ci/run checks of it on a Debian machine.
#
#   scripts/build-release.sh deps          install what building needs (Debian/Ubuntu apt): a C
#                                          toolchain and libclang (bindgen, for the pg_query crate)
#   scripts/build-release.sh build OUTDIR  cargo build --release --locked; the binary into OUTDIR
#   scripts/build-release.sh check         deps, then prove the build could start here: libclang
#                                          is found, cargo is new enough, the lock file is current.
#                                          No compilation (a release build takes ~10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

have_libclang() { ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; }

deps() {
  local missing=()
  have_libclang || missing+=(libclang-dev clang)
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  [ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The rust-version Cargo.toml asks for, and the toolchain here, as comparable numbers.
version_number() { awk -F. '{ printf "%d%03d%03d", $1, $2, $3 }'; }

check() {
  deps
  have_libclang || { echo "error: libclang is still not found (ldconfig -p)" >&2; exit 1; }
  local want have
  want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
  have=$(cargo --version | awk '{print $2}' | cut -d- -f1)
  if [ "$(echo "$have" | version_number)" -lt "$(echo "$want.0" | cut -d. -f1-3 | version_number)" ]; then
    echo "error: cargo $have is older than the rust-version $want in Cargo.toml" >&2
    exit 1
  fi
  # --locked fails if Cargo.lock would have to change: what `build` would hit first.
  cargo metadata --locked --format-version 1 --filter-platform "$(rustc -vV | sed -n "s/^host: //p")" >/dev/null
  bash -n "$0"
  log "release build prerequisites present: libclang, cargo $have (needs $want), Cargo.lock current"
}

build() {
  local out=${1:?usage: build OUTDIR}
  cargo build --release --locked
  mkdir -p "$out"
  install -m 0755 target/release/tenant-backup "$out/tenant-backup"
  "$out/tenant-backup" --version
}

case "${1:-}" in
  deps) deps ;;
  check) check ;;
  build) shift; deps; build "$@" ;;
  *) echo "usage: $0 deps | check | build OUTDIR" >&2; exit 2 ;;
esac
