#!/usr/bin/env bash
# The test command: install everything into ./.venv from nothing, then run the whole suite (real vLLM engine
# on tiny models built offline), after ruff (lint, format) and mypy strict. Extra arguments go to pytest.
# Fails on any failure and on "no tests collected".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh cpu --dev
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export STEERSERVE_TEST_CACHE=${STEERSERVE_TEST_CACHE:-$PWD/.cache}
# The project's own checks first (seconds): lint, format and mypy strict on the packages.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
