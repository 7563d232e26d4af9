#!/bin/sh
# The one place the set-up scripts install Debian packages from (setup_postgres.sh, setup_browser.sh,
# edgeuq/lower/toolchain/setup_toolchains.sh): installs those of PKG... that dpkg does not list yet,
# with apt-get as root (or through sudo), non-interactively and without recommends. Idempotent: does
# nothing when every package is installed. Without apt-get, or without root and sudo, it says what
# to install and fails.
#
#   sh scripts/apt_install.sh [--tag NAME] [--quiet] [--dry-run] PKG...
#
# --tag NAME   prefix of its messages (the calling script's name);
# --quiet      apt-get -qq, install output discarded;
# --dry-run    (or EDGEUQ_APT_DRY_RUN=1 in the environment) print the apt-get commands, run nothing.
set -eu
tag=apt_install
quiet=""
dry="${EDGEUQ_APT_DRY_RUN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) [ $# -ge 2 ] || { echo "apt_install: --tag needs a name" >&2; exit 2; }; tag=$2; shift 2 ;;
        --quiet) quiet=1; shift ;;
        --dry-run) dry=1; shift ;;
        --) shift; break ;;
        -*) echo "apt_install: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -eq 0 ]; then
    echo "usage: sh scripts/apt_install.sh [--tag NAME] [--quiet] [--dry-run] PKG..." >&2
    exit 2
fi
missing=""
for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "$tag: Debian packages present:" "$@"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$tag: no apt-get here; install$missing yourself" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "$tag: need root (or sudo) for apt-get install$missing" >&2
        exit 1
    fi
fi
q=""
[ -z "$quiet" ] || q="-qq"
run() {
    if [ -n "$dry" ]; then echo "$tag: dry run, would run: $*"; else "$@"; fi
}
t=$(date +%s)
echo "$tag: apt-get install$missing"
run $SUDO apt-get update $q
if [ -n "$quiet" ] && [ -z "$dry" ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $q --no-install-recommends $missing >/dev/null
else
    run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $q --no-install-recommends $missing
fi
[ -n "$dry" ] || echo "$tag: installed$missing in $(( $(date +%s) - t )) s"
