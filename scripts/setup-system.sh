#!/usr/bin/env bash
# Install the Debian packages the tests use (building real APKs and ELF files, rendering the report), then
# PROVE each tool works: compile and link a shared object with each compiler, assemble, package, align and
# sign a tiny APK, render a page to PNG and PDF with headless chromium, make a venv.
#
# A package counts as present when the file it provides is there (a command on PATH from somewhere else,
# or a compiler without its C library, is not enough: gcc-aarch64-linux-gnu installed without recommends
# links nothing because crti.o comes from libc6-dev-arm64-cross).
# Idempotent: installs only what is missing. Installing needs root (CI runs as root); otherwise it names
# the missing packages with the command to install them and exits 1. Any tool that fails its check makes
# the script exit 1 with the tool's name and its output, so `make setup` stops here instead of dozens of
# tests failing later.
#
# Environment: PYTHON (default python3) is the interpreter the Makefile makes the venv with.
set -euo pipefail
PYTHON=${PYTHON:-python3}

# package  file-it-provides (a path, or "cmd:NAME" for a command resolved through PATH/alternatives)
PACKAGES=(
  "gcc                    /usr/bin/gcc"
  "libc6-dev              /usr/include/stdio.h"
  "gcc-aarch64-linux-gnu  /usr/bin/aarch64-linux-gnu-gcc"
  "libc6-dev-arm64-cross  /usr/aarch64-linux-gnu/lib/crti.o"
  "libsmali-java          /usr/bin/smali"
  "aapt                   /usr/bin/aapt"
  "android-framework-res  /usr/share/android-framework-res/framework-res.apk"
  "apksigner              /usr/bin/apksigner"
  "zipalign               /usr/bin/zipalign"
  "default-jre-headless   cmd:keytool"
  "zip                    /usr/bin/zip"
  "openssl                /usr/bin/openssl"
  "chromium               /usr/bin/chromium"
  # skia-python (the Skia reference of the resize-kernel tests and of the demo trace) links libGL and libEGL
  "libgl1                 lib:libGL.so.1"
  "libegl1                lib:libEGL.so.1"
)
# Debian's python3 needs python3-venv for `python3 -m venv` (a pyenv or other python brings its own).
if [ "$(command -v "$PYTHON" 2>/dev/null || true)" = /usr/bin/python3 ] || ! command -v "$PYTHON" >/dev/null; then
  PACKAGES+=("python3 /usr/bin/python3" "python3-venv /usr/share/doc/python3-venv")
fi

fail() {
  echo "setup-system: FAILED: $*" >&2
  exit 1
}

provided() {
  case "$1" in
    cmd:*) command -v "${1#cmd:}" >/dev/null ;;
    lib:*) ldconfig -p | grep -q "${1#lib:} " ;;
    *) [ -e "$1" ] ;;
  esac
}

need=()
for entry in "${PACKAGES[@]}"; do
  read -r pkg file <<<"$entry"
  provided "$file" || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system: missing system packages: ${need[*]}" >&2
    echo "setup-system: install them with: sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
    echo "setup-system: then re-run 'make setup' (the tests build APKs and ELF files and render pages with them)" >&2
    exit 1
  fi
  echo "setup-system: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
  for entry in "${PACKAGES[@]}"; do
    read -r pkg file <<<"$entry"
    provided "$file" || fail "package $pkg is installed but ${file#cmd:} is not there"
  done
else
  echo "setup-system: packages present: $(for e in "${PACKAGES[@]}"; do read -r p _ <<<"$e"; printf '%s ' "$p"; done)"
fi

# ------------------------------------------------------------------------------------------- proofs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# run TOOL-NAME CMD...: run CMD quietly; on failure name the tool and show what it said.
run() {
  local tool=$1
  shift
  if ! "$@" >"$work/out.log" 2>&1; then
    echo "setup-system: FAILED: $tool: \`$*\` exited non-zero; its output:" >&2
    sed 's/^/    /' "$work/out.log" >&2
    exit 1
  fi
}

# Both compilers: compile AND link a shared object (what tests/fixtures/elf.py does), and check its machine.
cat >"$work/t.c" <<'EOF'
#include <stdio.h>
#include <string.h>
int rb_probe(const char *s) { return (int)strlen(s); }
EOF
run gcc gcc -shared -fPIC -O1 -o "$work/x86.so" "$work/t.c"
printf 'int main(void) { return 0; }\n' >"$work/main.c"
run gcc gcc -O0 -rdynamic -o "$work/main" "$work/main.c"
run gcc "$work/main"
run aarch64-linux-gnu-gcc aarch64-linux-gnu-gcc -shared -fPIC -O1 -o "$work/arm64.so" "$work/t.c"
readelf -h "$work/arm64.so" | grep -q 'Machine:.*AArch64' || fail "aarch64-linux-gnu-gcc: the .so it linked is not AArch64"

# The APK toolchain, end to end on a tiny app (what tests/fixtures/apk.py does).
mkdir -p "$work/smali/rb/probe"
cat >"$work/smali/rb/probe/Main.smali" <<'EOF'
.class public Lrb/probe/Main;
.super Ljava/lang/Object;
EOF
cat >"$work/AndroidManifest.xml" <<'EOF'
<?xml version="1.0" encoding="utf-8"?>
<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="rb.probe">
  <uses-sdk android:minSdkVersion="21" android:targetSdkVersion="28"/>
</manifest>
EOF
run smali smali --version
run smali smali assemble -o "$work/classes.dex" "$work/smali"
run aapt aapt version
run aapt aapt package -f -M "$work/AndroidManifest.xml" \
  -I /usr/share/android-framework-res/framework-res.apk -F "$work/unsigned.apk"
run zip zip -j -q "$work/unsigned.apk" "$work/classes.dex"
run zipalign zipalign -p 4 "$work/unsigned.apk" "$work/aligned.apk"
run zipalign zipalign -c -p 4 "$work/aligned.apk"
run keytool keytool -genkeypair -keystore "$work/k.jks" -alias rb -keyalg RSA -keysize 2048 -validity 1 \
  -storepass rbprobe -keypass rbprobe -dname "CN=replaybench setup probe"
run apksigner apksigner --version
run apksigner apksigner sign --ks "$work/k.jks" --ks-pass pass:rbprobe --out "$work/signed.apk" "$work/aligned.apk"
run apksigner apksigner verify "$work/signed.apk"

# openssl encrypts the AES test payloads (tests/extract/conftest.py).
run openssl sh -c 'printf model | openssl enc -aes-128-cbc -K 00112233445566778899aabbccddeeff -iv 0f0e0d0c0b0a09080706050403020100 | od -An -tx1 | grep -q .'

# Headless chromium renders a page to PNG and to PDF (the report rendering test's flags).
cat >"$work/page.html" <<'EOF'
<!doctype html><html><body style="background:#fff"><h1 style="color:#c00">replaybench probe</h1></body></html>
EOF
chrome=(chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking
  --disable-component-update --disable-sync "--user-data-dir=$work/profile")
run chromium timeout 120 "${chrome[@]}" --window-size=400,300 "--screenshot=$work/page.png" "file://$work/page.html"
run chromium timeout 120 "${chrome[@]}" "--print-to-pdf=$work/page.pdf" "file://$work/page.html"
[ "$(head -c 8 "$work/page.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
  fail "chromium: --screenshot wrote no PNG"
[ "$(head -c 5 "$work/page.pdf")" = "%PDF-" ] || fail "chromium: --print-to-pdf wrote no PDF"

# The Makefile makes the venv with $PYTHON.
run "$PYTHON -m venv" "$PYTHON" -m venv "$work/venv"
run "$PYTHON -m venv" "$work/venv/bin/python" -m pip --version

echo "setup-system: proved: gcc and aarch64-linux-gnu-gcc link shared objects; smali, aapt, zipalign, keytool and apksigner build a signed APK; openssl encrypts; chromium renders PNG and PDF; $PYTHON makes a venv"
