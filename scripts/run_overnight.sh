#!/usr/bin/env bash
# Overnight run: the production pipeline (profile pipeline-prod: pretrain a depth-12 GPT on
# ~650M tokens of fineweb-edu + wikitext + notes + primer, then SFT), hours on one GPU.
#
# Assumes the tokenizer and caches exist; build them first with
#   SKIP_TOKENIZER=false SKIP_CACHE=false ./scripts/run_overnight.sh
# or ./scripts/run_full_pipeline.sh pipeline-prod. DEVICE=cpu|cuda|mps overrides the device,
# extra arguments go to `lmlab notes train`. Interrupted? Run it again: training resumes.
#   nohup ./scripts/run_overnight.sh > overnight.log 2>&1 &
set -euo pipefail

export SKIP_TOKENIZER="${SKIP_TOKENIZER:-true}"
export SKIP_CACHE="${SKIP_CACHE:-true}"
exec "$(dirname "$0")/run_full_pipeline.sh" pipeline-prod "$@"
