#!/usr/bin/env bash
# The notes workflow end to end: tokenizer, token caches, then pretrain -> SFT (lmlab notes train
# --phase pipeline). Tokenizer and caches are skipped when already built, so reruns are cheap.
#
#   ./scripts/run_full_pipeline.sh [PROFILE] [extra `lmlab notes train` options]
#   PROFILE defaults to pipeline-dev; e.g. pipeline-prod, or any notes profile (run as a pipeline).
#
# Environment:
#   SKIP_TOKENIZER=true  leave the tokenizer alone (default false: train one unless it exists)
#   SKIP_CACHE=true      leave the caches alone (default false: build missing or stale ones)
#   FORCE=true           retrain the tokenizer and rebuild every cache
#   DEVICE=cpu|cuda|mps  override the profile's device
#   ROAM_DIR, PRIMER     your Roam export and primer (default: the shipped sample)
#   VOCAB_SIZE           tokenizer vocabulary (default: 16000; 1024 on the shipped sample)
#   LMLAB                the lmlab command (default: lmlab; e.g. ".venv/bin/lmlab")
set -euo pipefail

PROFILE="${1:-pipeline-dev}"
[ "$#" -gt 0 ] && shift
LMLAB="${LMLAB:-lmlab}"
SKIP_TOKENIZER="${SKIP_TOKENIZER:-false}"
SKIP_CACHE="${SKIP_CACHE:-false}"

inputs=()
[ -n "${ROAM_DIR:-}" ] && inputs+=(--roam-dir "$ROAM_DIR")
[ -n "${PRIMER:-}" ] && inputs+=(--primer "$PRIMER")
force=()
[ "${FORCE:-false}" = "true" ] && force=(--force)

if [ "$SKIP_TOKENIZER" != "true" ]; then
  vocab=()
  [ -n "${VOCAB_SIZE:-}" ] && vocab=(--vocab-size "$VOCAB_SIZE")
  echo "== tokenizer"
  # shellcheck disable=SC2086  # LMLAB may be a command with arguments
  $LMLAB notes tokenizer ${inputs[@]+"${inputs[@]}"} ${vocab[@]+"${vocab[@]}"} ${force[@]+"${force[@]}"}
fi

if [ "$SKIP_CACHE" != "true" ]; then
  echo "== caches"
  # shellcheck disable=SC2086
  $LMLAB cache build-all ${inputs[@]+"${inputs[@]}"} ${force[@]+"${force[@]}"}
fi

device=()
[ -n "${DEVICE:-}" ] && device=(--device "$DEVICE")
echo "== pretrain -> sft ($PROFILE)"
# shellcheck disable=SC2086
$LMLAB notes train --phase pipeline --profile "$PROFILE" ${device[@]+"${device[@]}"} "$@"
