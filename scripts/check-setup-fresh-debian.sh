#!/usr/bin/env bash
# Check scripts/setup-system.sh on a machine WITHOUT the project's Debian packages: a throwaway Debian 12
# chroot made with debootstrap (minbase: no compiler, no Java, no chromium, no python3).
#   1. as an unprivileged user it must fail (exit 1) and name every missing package;
#   2. as root it must install them and prove each tool (exit 0);
#   3. a second run, and a run as the unprivileged user, must find everything and prove it again.
# Needs root, debootstrap and network access to deb.debian.org. Takes minutes (it downloads ~400 MB).
# Usage: sudo bash scripts/check-setup-fresh-debian.sh [CHROOT_DIR]   (the folder is deleted afterwards)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-$(mktemp -d /tmp/setup-check.XXXXXX)}
[ "$(id -u)" -eq 0 ] || { echo "check-setup: run as root (debootstrap and chroot need it)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "check-setup: apt-get install -y debootstrap" >&2; exit 1; }

cleanup() {
  for m in "$root/dev" "$root/proc" "$root/sys"; do
    mountpoint -q "$m" && umount -R "$m"
  done
  if mount | grep -q " $root"; then
    echo "check-setup: $root still has mounts; not deleting it" >&2
  else
    rm -rf --one-file-system "$root"
  fi
}
trap cleanup EXIT

echo "check-setup: debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount -t sysfs sys "$root/sys"
cp /etc/resolv.conf "$root/etc/"
install -m 755 "$here/setup-system.sh" "$root/setup-system.sh"

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8 "$@"; }
as_nobody() { in_root setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }

echo "check-setup: 1. unprivileged, nothing installed: must fail naming the packages"
if as_nobody bash /setup-system.sh; then
  echo "check-setup: FAILED: the script succeeded without its packages" >&2
  exit 1
fi
echo "check-setup: 2. root: installs and proves"
in_root bash /setup-system.sh | grep '^setup-system:'
echo "check-setup: 3. again, as root and unprivileged: everything present and proved"
in_root bash /setup-system.sh
as_nobody bash /setup-system.sh
echo "check-setup: passed"
