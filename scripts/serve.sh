#!/usr/bin/env bash
# Install (if needed) and start the server on the embedded defaults: the bundled toy demo model and the
# embedded vector store under ~/.local/share/steerserve. Extra arguments go to `steerserve serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "${STEERSERVE_TARGET:-cpu}"
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
exec .venv/bin/steerserve serve "$@"
