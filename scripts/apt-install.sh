#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages, refreshing the package lists only if the
# first try fails (they are often fresh enough), with sudo only when not already root.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends "$@" \
  || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "$@"; }
