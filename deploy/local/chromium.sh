#!/usr/bin/env bash
# Installs Debian's Chromium (the browser the console's browser tests drive through
# Playwright; Playwright's own browser downloads are not used). Prints its path.
# Usage: deploy/local/chromium.sh
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CHROMIUM=${SWITCHYARD_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
    apt_install chromium fonts-dejavu-core
fi
[ -x "$CHROMIUM" ] || die "$CHROMIUM not found after installing chromium"
echo "$CHROMIUM"
