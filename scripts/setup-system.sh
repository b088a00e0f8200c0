#!/usr/bin/env bash
# Install the Debian packages the tests use (building real APKs and ELF files, rendering the report).
# Idempotent: installs only what is missing. Needs root (CI runs as root); otherwise prints the command.
set -euo pipefail
need=()
command -v smali >/dev/null || need+=(smali)
command -v aapt >/dev/null || need+=(aapt)
command -v apksigner >/dev/null || need+=(apksigner)
command -v zipalign >/dev/null || need+=(zipalign)
[ -f /usr/share/android-framework-res/framework-res.apk ] || need+=(android-framework-res)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v zip >/dev/null || need+=(zip)
command -v chromium >/dev/null || need+=(chromium)
command -v gcc >/dev/null || need+=(gcc)
# skia-python (the Skia reference of the resize kernel tests and the demo trace) links libGL and libEGL
ldconfig -p | grep -q 'libGL\.so\.1 ' || need+=(libgl1)
ldconfig -p | grep -q 'libEGL\.so\.1 ' || need+=(libegl1)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]}" >&2
  echo "install them with: sudo apt-get install -y ${need[*]}  (tests that need them will skip)" >&2
  exit 0
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
