#!/usr/bin/env bash
# Installs the Debian packages the project needs, when missing.
set -euo pipefail
packages=()
command -v git >/dev/null || packages+=(git)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${packages[*]} (run as root or install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}"
