# shellcheck shell=bash
# Helpers shared by kafka.sh and postgres.sh. Sourced, not executed.

# Repo root = two levels up from deploy/local/.
LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LOCAL_DIR/../.." && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this file
CACHE_ROOT=${SWITCHYARD_CACHE_DIR:-$HOME/.cache/switchyard}
# shellcheck disable=SC2034
STATE_ROOT=${SWITCHYARD_STATE_DIR:-$REPO_DIR/.infra}

log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Install Debian packages. We run as root on dev machines and CI, so no sudo.
# A lock serialises apt between kafka.sh and postgres.sh when infra.sh runs
# them concurrently (dpkg would otherwise fail on its own lock).
apt_install() {
    [ "$(id -u)" = 0 ] || die "need root to apt-get install $*; install it by hand"
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    log "apt-get update && apt-get install $*"
    (
        flock -w 900 9 || die "timed out waiting for another apt-get run"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "$@" >/dev/null
    ) 9>"${TMPDIR:-/tmp}/switchyard-apt.lock"
}
