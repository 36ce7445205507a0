#!/usr/bin/env bash
# Installs what the side-by-side benchmark (tests/bench/peers/run.py) needs, if missing:
# Debian's wrk and nginx with the echo module, and LiteLLM's proxy pinned in its own venv
# (outside the repo, under $SWITCHYARD_BENCH_CACHE, default ~/.cache/switchyard/bench-peers).
# It starts nothing: run.py starts every process itself and stops them when done.
set -euo pipefail
LITELLM_VERSION=1.100.5
cache=${SWITCHYARD_BENCH_CACHE:-$HOME/.cache/switchyard/bench-peers}
mkdir -p "$cache"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing+=(libnginx-mod-http-echo)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing ${missing[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged nginx on port 80; the benchmark runs its own.
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
fi

venv=$cache/litellm-venv
if ! "$venv/bin/python" -c "import litellm, importlib.metadata as m; assert m.version('litellm') == '$LITELLM_VERSION'" 2>/dev/null; then
  echo "installing LiteLLM $LITELLM_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi
echo "bench peers ready: wrk, nginx + echo, LiteLLM $LITELLM_VERSION in $venv"
