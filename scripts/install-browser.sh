#!/usr/bin/env bash
# Install Debian's chromium for the browser tests of `vlbridge serve` (tests/test_serve_e2e.py).
#
#   bash scripts/install-browser.sh      (run by `make setup`)
#
# Playwright drives this system chromium (executable_path=/usr/bin/chromium); its own browser
# download (`playwright install`) is never used. Idempotent: an installed chromium is left as it
# is. Without root (or password-less sudo) or apt-get, it says what to run and exits 0; the
# browser tests are then skipped with that reason.
set -uo pipefail

say() { printf 'install-browser: %s\n' "$*"; }
warn() { printf '\n!!! install-browser: WARNING: %s\n\n' "$*" >&2; }

if [[ -x /usr/bin/chromium ]]; then
    say "chromium present ($(/usr/bin/chromium --version 2>/dev/null | head -1))"
    exit 0
fi
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if [[ "$SUDO" == "none" ]] || ! command -v apt-get >/dev/null; then
    warn "cannot run apt-get as root here; install Debian's chromium with 'sudo apt-get install chromium' (the browser tests are skipped without it)"
    exit 0
fi
say "apt-get install -y chromium"
apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
if ! apt_install; then
    say "apt-get install failed; running apt-get update and trying again"
    $SUDO apt-get update -q >/dev/null && apt_install || warn "apt-get could not install chromium (the browser tests are skipped without it)"
fi
exit 0
