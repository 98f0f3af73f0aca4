#!/usr/bin/env bash
# The reflection workflow on any supported model, end to end, through the real server:
#   serve -> extract the self-reflection vector from the model's own traces -> A/B run of strengths + random control.
#
# A real model (GPU, official vLLM), e.g. the seed paper's setting:
#   MODEL=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \
#   EXTRACT_SET=math_train.jsonl EVAL_SET=math500_test.jsonl \
#   MAX_TOKENS=8192 TEMPERATURE=0.6 TOP_P=0.95 LAYERS=19 SERVE_ARGS="--reasoning-parser deepseek_r1" \
#   bash benchmarks/reflection_recipe.sh runs/r1-1.5b
# (EXTRACT_SET and EVAL_SET are JSONL in MATH-500 / GSM8K / {"prompt","answer"} layout; keep them disjoint.)
# CI runs the same script on a tiny random Qwen2 model with <think> markers (tests/e2e/test_reflection_recipe.py).
set -euo pipefail
OUT=${1:?usage: reflection_recipe.sh OUT_DIR}
: "${MODEL:?set MODEL}" "${EXTRACT_SET:?set EXTRACT_SET}" "${EVAL_SET:?set EVAL_SET}"
PORT=${PORT:-8011}
N_EXTRACT=${N_EXTRACT:-300}
SAMPLES_EXTRACT=${SAMPLES_EXTRACT:-1}
N_EVAL=${N_EVAL:-500}
SAMPLES_EVAL=${SAMPLES_EVAL:-1}
MAX_TOKENS=${MAX_TOKENS:-8192}
TEMPERATURE=${TEMPERATURE:-0.6}
TOP_P=${TOP_P:-0.95}
LAYERS=${LAYERS:-}
STRENGTHS=${STRENGTHS:--1,-0.3,-0.1,0,0.1,0.3,1}
RANDOM_STRENGTHS=${RANDOM_STRENGTHS:--1,1}
SERVE_ARGS=${SERVE_ARGS:-}
STEERSERVE=${STEERSERVE:-steerserve}
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"

# shellcheck disable=SC2086
$STEERSERVE serve --model "$MODEL" --port "$PORT" --data-dir "$OUT/data" $SERVE_ARGS >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 1800); do
  curl -fsS "$URL/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
  sleep 1
done
curl -fsS "$URL/health" >/dev/null

$STEERSERVE vectors extract --id reflection --problems "$EXTRACT_SET" --limit "$N_EXTRACT" \
  --samples "$SAMPLES_EXTRACT" --temperature "$TEMPERATURE" --max-tokens "$MAX_TOKENS" \
  ${LAYERS:+--layers "$LAYERS"} --base-url "$URL" --json >"$OUT/extract.json"

$STEERSERVE ab run --vector reflection --strengths="$STRENGTHS" --random-strengths="$RANDOM_STRENGTHS" \
  --dataset "$EVAL_SET" --limit "$N_EVAL" --samples "$SAMPLES_EVAL" --temperature "$TEMPERATURE" --top-p "$TOP_P" \
  --max-tokens "$MAX_TOKENS" --base-url "$URL" --out "$OUT/ab"
echo "done: $OUT/extract.json, $OUT/ab/report.md"
