#!/usr/bin/env bash
# Installs (or removes) a liandan coordinator or worker on this machine, from a
# built tree, offline. Idempotent: running it again changes nothing that is
# already right, and never overwrites an existing configuration.
#
#   deploy/install.sh --role coordinator|worker [--bin-dir DIR] [--root DIR] [--uninstall]
#
#   --bin-dir DIR   where the built binaries are (default: target/release, else target/debug)
#   --root DIR      install under DIR instead of / (packaging, tests); no user is
#                   created and systemctl is not called
#   --uninstall     remove the binaries and the unit; keep configuration and state
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
role=""
root="/"
bin_dir=""
uninstall=0

die() { echo "install.sh: $*" >&2; exit 64; }

while [ $# -gt 0 ]; do
  case "$1" in
    --role) role="${2:-}"; shift 2 ;;
    --role=*) role="${1#*=}"; shift ;;
    --root) root="${2:-}"; shift 2 ;;
    --root=*) root="${1#*=}"; shift ;;
    --bin-dir) bin_dir="${2:-}"; shift 2 ;;
    --bin-dir=*) bin_dir="${1#*=}"; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1; see --help" ;;
  esac
done
case "$role" in
  coordinator|worker) ;;
  *) die "--role must be coordinator or worker" ;;
esac
[ -n "$root" ] || die "--root needs a directory"

prefix="${root%/}"
bindest="$prefix/usr/local/bin"
unitdest="$prefix/etc/systemd/system"
confdest="$prefix/etc/liandan"
docdest="$prefix/usr/local/share/doc/liandan"
unit="liandan-$role.service"
case "$role" in
  coordinator) bins=(liandan-coordinator liandan) ;;
  worker) bins=(liandan-worker liandan-train liandan) ;;
esac
live_system=0
[ "$root" = "/" ] && live_system=1

if [ "$uninstall" = 1 ]; then
  if [ "$live_system" = 1 ] && command -v systemctl >/dev/null; then
    systemctl disable --now "$unit" 2>/dev/null || true
  fi
  rm -f "$unitdest/$unit"
  for b in "${bins[@]}"; do
    # The CLI stays while the other role is still installed.
    if [ "$b" = liandan ] && [ -e "$unitdest/liandan-coordinator.service" -o -e "$unitdest/liandan-worker.service" ]; then continue; fi
    rm -f "$bindest/$b"
  done
  [ "$live_system" = 1 ] && command -v systemctl >/dev/null && systemctl daemon-reload || true
  echo "removed $unit and its binaries; configuration in /etc/liandan and state in /var/lib/liandan are kept"
  exit 0
fi

if [ -z "$bin_dir" ]; then
  if [ -x "$repo/target/release/${bins[0]}" ]; then bin_dir="$repo/target/release"; else bin_dir="$repo/target/debug"; fi
fi
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing: build first (cargo build --release --workspace, or make build)"
done

install -d -m 0755 "$bindest" "$unitdest" "$docdest"
install -d -m 0750 "$confdest"
for b in "${bins[@]}"; do
  install -m 0755 "$bin_dir/$b" "$bindest/$b"
done
install -m 0644 "$here/systemd/$unit" "$unitdest/$unit"
install -m 0644 "$repo/README.md" "$docdest/README.md"
if [ ! -e "$confdest/$role.toml" ]; then
  install -m 0640 "$here/examples/$role.toml" "$confdest/$role.toml"
  echo "wrote $confdest/$role.toml (review it)"
else
  echo "kept the existing $confdest/$role.toml"
fi

if [ "$live_system" = 1 ]; then
  if ! id liandan >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/liandan --no-create-home --shell /usr/sbin/nologin liandan
    echo "created the system user liandan"
  fi
  chgrp liandan "$confdest" "$confdest/$role.toml" 2>/dev/null || true
  if command -v systemctl >/dev/null; then
    systemctl daemon-reload
  fi
  echo "installed $unit; start it with: systemctl enable --now $unit"
else
  echo "installed $unit under $root"
fi
