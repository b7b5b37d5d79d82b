#!/usr/bin/env bash
# Sets up what the project needs on a fresh Debian machine with Python 3.11:
#   scripts/bootstrap.sh          the virtualenv (.venv) and the Debian packages the tests use
#   scripts/bootstrap.sh --venv   the virtualenv only (the demo needs no services)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dcmtk dicom3tools openjph-tools orthanc orthanc-dicomweb postgresql redis-server fonts-dejavu-core chromium chromium-driver)
want_apt=1
[[ "${1:-}" == "--venv" ]] && want_apt=0

sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if [[ $want_apt -eq 1 ]]; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    sudo_if_needed apt-get update -q
    # No service is started for the tests: each test starts its own on a free port.
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "${missing[@]}"
  fi
fi

python=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python=$candidate; break
  fi
done
[[ -n "$python" ]] || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 1; }

stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "bootstrap: creating .venv with $python"
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
