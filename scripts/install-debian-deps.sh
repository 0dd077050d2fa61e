#!/usr/bin/env bash
# Debian packages the tests need beyond PyPI: headless Chromium (tests/test_report.py loads
# report.html in it).  Run as root (or with sudo available); idempotent.
set -euo pipefail
packages=(chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-debian-deps: ${packages[*]} already installed" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y "${missing[@]}"
