#!/usr/bin/env bash
# Make sure a chromium for the web page's browser tests (tests/test_web_page.py) is installed.
# Playwright drives the system browser (Debian's `chromium` package); it never downloads one.
# Root on Debian/Ubuntu: apt-get installs it. Otherwise: say how, and let the tests skip
# (under CI=true they fail instead, so this stops here too).
set -euo pipefail
for candidate in "${VITKIT_CHROMIUM:-}" /usr/bin/chromium "$(command -v chromium || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        exit 0
    fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install_browser.sh: installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium
    exit 0
fi
echo "install_browser.sh: no chromium found, and cannot install it here (needs root and apt-get)." >&2
echo "  Install it (Debian/Ubuntu: sudo apt-get install chromium) or set VITKIT_CHROMIUM=/path/to/chromium;" >&2
echo "  until then the browser tests in tests/test_web_page.py are skipped." >&2
case "${CI:-}" in
    "" | 0 | false | no) exit 0 ;;
    *) exit 1 ;;
esac
