#!/usr/bin/env bash
# Installs the Debian packages the project needs, when missing.
set -euo pipefail
packages=()
command -v git >/dev/null || packages+=(git)
# The labelling app's browser test drives Debian's Chromium through Playwright (which must
# never download its own browser); fonts-dejavu-core gives pages and screenshots real glyphs.
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
# tests/test_postgres_server.py runs the Prefect server on a throwaway PostgreSQL cluster
# (initdb/pg_ctl from /usr/lib/postgresql/<version>/bin).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${packages[*]} (run as root or install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"
