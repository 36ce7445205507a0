#!/usr/bin/env bash
# Refreshes the browser libraries the web console ships (no CDN: the console works
# offline). Each comes from its npm package, with its licence and version beside it.
# Usage: services/gateway/scripts/vendor-console-assets.sh   (or: make console-assets)
set -euo pipefail

HTMX_VERSION=${HTMX_VERSION:-2.0.11}
CHARTJS_VERSION=${CHARTJS_VERSION:-4.6.1}
PICO_VERSION=${PICO_VERSION:-2.1.1}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENDOR="$HERE/../src/switchyard/gateway/console/static/vendor"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# vendor PACKAGE VERSION DIR FILE...: unpack the package and copy FILE(s) (paths inside it),
# its licence and a VERSION file into vendor/DIR.
vendor() {
    local package=$1 version=$2 dir=$3
    shift 3
    (cd "$WORK" && npm pack --silent "$package@$version" >/dev/null)
    local tarball
    tarball=$(ls "$WORK"/*.tgz)
    mkdir -p "$WORK/unpacked"
    tar -xzf "$tarball" -C "$WORK/unpacked"
    rm -rf "${VENDOR:?}/$dir"
    mkdir -p "$VENDOR/$dir"
    for file in "$@"; do
        cp "$WORK/unpacked/package/$file" "$VENDOR/$dir/"
    done
    cp "$WORK"/unpacked/package/LICENSE* "$VENDOR/$dir/" 2>/dev/null \
        || cp "$WORK"/unpacked/package/license* "$VENDOR/$dir/"
    printf '%s %s\n' "$package" "$version" >"$VENDOR/$dir/VERSION"
    rm -rf "$tarball" "$WORK/unpacked"
}

vendor htmx.org "$HTMX_VERSION" htmx dist/htmx.min.js
vendor chart.js "$CHARTJS_VERSION" chartjs dist/chart.umd.min.js
vendor @picocss/pico "$PICO_VERSION" pico css/pico.min.css
echo "vendored into $VENDOR:"
find "$VENDOR" -type f | sort
