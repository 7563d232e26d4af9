#!/bin/sh
# Headless Chromium + chromedriver from Debian's packages, for the live-view browser tests
# (runtime/tests/test_rt_serve_browser.py, tests/test_view_browser.py; selenium comes from
# the runtime's `test` extra). Idempotent: does nothing when both are already installed.
# Needs root (or sudo) and a Debian/Ubuntu apt; elsewhere it says what to install and fails.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "setup_browser: chromium and chromedriver already installed ($(chromium --version 2>/dev/null | head -n1))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser: no apt-get here; install chromium and its matching chromedriver yourself" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup_browser: need root (or sudo) for apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium chromium-driver
echo "setup_browser: installed $(chromium --version 2>/dev/null | head -n1), $(chromedriver --version | head -n1)"
