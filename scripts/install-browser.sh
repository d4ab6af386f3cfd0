#!/usr/bin/env bash
# Installs the browser the UI test (tests/e2e/test_ui_browser.py) drives: Debian's chromium at
# /usr/bin/chromium, run by Playwright through executable_path (never `playwright install`, whose
# download fails on these machines). Idempotent. Exits 0 when it cannot install (not root, no
# apt-get): the browser test then skips and says why.
set -u

CHROMIUM="${AUTOMATION_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: $CHROMIUM is installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: $CHROMIUM is missing and there is no apt-get here: not installing it" \
         "(the browser test will skip)"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-browser: $CHROMIUM is missing and this is not root: not installing it" \
         "(run 'sudo apt-get install -y chromium'; the browser test will skip)"
    exit 0
fi

echo "install-browser: installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y chromium; then
    echo "install-browser: apt-get install failed; updating the package lists and trying again"
    apt-get update && apt-get install -y chromium || true
fi
if [ -x "$CHROMIUM" ]; then
    echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
    echo "install-browser: chromium could not be installed (the browser test will skip)"
fi
exit 0
