#!/usr/bin/env bash
# The lowering toolchains' set-up lives with the toolchain sources: edgeuq/lower/toolchain/.
exec bash "$(dirname "$0")/../edgeuq/lower/toolchain/setup_toolchains.sh" "$@"
