#!/bin/sh
# Headless Chromium + chromedriver from Debian's packages, for the live-view browser tests
# (runtime/tests/test_rt_serve_browser.py, tests/test_view_browser.py; selenium comes from
# the runtime's `test` extra). Idempotent: does nothing when both are already installed.
# Needs root (or sudo) and a Debian/Ubuntu apt (scripts/apt_install.sh; EDGEUQ_APT_DRY_RUN=1
# prints the commands only); elsewhere it says what to install and fails.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "setup_browser: chromium and chromedriver already installed ($(chromium --version 2>/dev/null | head -n1))"
    exit 0
fi
sh "$(dirname "$0")/apt_install.sh" --tag setup_browser chromium chromium-driver
[ -z "${EDGEUQ_APT_DRY_RUN:-}" ] || exit 0
echo "setup_browser: installed $(chromium --version 2>/dev/null | head -n1), $(chromedriver --version | head -n1)"
