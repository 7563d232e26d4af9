#!/usr/bin/env bash
# Filled in by the lowering work (issue 5).
set -euo pipefail
