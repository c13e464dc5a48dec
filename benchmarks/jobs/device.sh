#!/bin/bash
# Fill benchmark tables on a lent GPU machine (one H100/H200, 16 cores) with benchmarks/jobqueue.py.
#   bash benchmarks/jobs/device.sh start JOBS WORKERS SECONDS   # install, launch the queue detached, watch
#   bash benchmarks/jobs/device.sh poll SECONDS                 # watch; both end by packing results
#   KEEP_RUNS='DIR ...' before either: those run folders come back too (runs.tar.part-*: cat, then tar x)
# Needs (carried with the working tree): runs/bench/data (prepared splits), runs/textcache (MiniLM item and
# intention embeddings, so no model download), .whl (pydantic wheels the machine's image lacks).
# Results: runs/gpu/results (seed JSON files), runs/gpu/logs; packed into $OUT/gpu.tgz.
set -u
export PYTHONPATH=$PWD/src:/tmp/site OMP_NUM_THREADS=1 DREAMREC_CACHE=$PWD/runs/textcache PYTHONUNBUFFERED=1
mkdir -p runs/gpu/logs

status() {
  local tsv=runs/gpu/logs/queue.tsv
  [ -f "$tsv" ] || { echo "no queue yet"; return; }
  local started done ok
  started=$(awk -F'\t' '$2=="start"' "$tsv" | wc -l)
  done=$(awk -F'\t' '$2=="done"' "$tsv" | wc -l)
  ok=$(awk -F'\t' '$2=="done" && $4=="0"' "$tsv" | wc -l)
  echo "$(date -u +%H:%M:%S) started $started done $done ok $ok | $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
}

pack() {
  local extra=()
  for d in runs/bench/runs/*/diffurec*/seed0; do
    [ -f "$d/model.safetensors" ] && extra+=("$d/model.safetensors" "$d/config.yaml" "$d/log.jsonl" "$d/run.json" "$d/items.parquet")
  done
  # the epoch logs of runs kept under runs/gpu (small), beside the seed results and the queue logs
  tar czf "$OUT/gpu.tgz" runs/gpu/results runs/gpu/logs $(ls runs/gpu/*/runs/*/*/seed*/log.jsonl runs/gpu/w/*/runs/*/*/seed*/log.jsonl 2>/dev/null) 2>/dev/null
  [ ${#extra[@]} -gt 0 ] && tar czf "$OUT/weights.tgz" "${extra[@]}" 2>/dev/null
  # run folders named in $KEEP_RUNS (space-separated) come back whole, checkpoint included, so a run the loan did not
  # finish can be resumed elsewhere: one tar in parts under the 16 MiB limit per file (64 MiB in all; a Beauty
  # diqdiff-authors run folder measured 41 MB after epoch 11); parts of an earlier pack are removed first
  local keep=()
  for d in ${KEEP_RUNS:-}; do [ -d "$d" ] && keep+=("$d"); done
  rm -f "$OUT"/runs.tar.part-*
  [ ${#keep[@]} -gt 0 ] && tar cf - "${keep[@]}" | split -b 15M - "$OUT/runs.tar.part-"
  ls -la "$OUT"
}

watch() {
  local until=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$until" ]; do
    status
    if [ -f runs/gpu/logs/queue.tsv ] && grep -q "finished:" runs/gpu/queue.out 2>/dev/null; then break; fi
    sleep 30
  done
  echo "--- failed jobs"
  awk -F'\t' '$2=="done" && $4!="0" {print $3}' runs/gpu/logs/queue.tsv 2>/dev/null | while read -r n; do
    echo "## $n"; tail -5 "runs/gpu/logs/$n.log"; done
  echo "--- finished jobs (name rc seconds)"
  awk -F'\t' '$2=="done" {print $3, $4, $5}' runs/gpu/logs/queue.tsv 2>/dev/null | tr '\n' ';'; echo
  echo "--- running: last line of each"
  for n in $(awk -F'\t' '$2=="start" {print $3}' runs/gpu/logs/queue.tsv 2>/dev/null); do
    grep -q -P "\tdone\t$n\t" runs/gpu/logs/queue.tsv || echo "$n: $(tail -c 300 runs/gpu/logs/$n.log | tr '\r' '\n' | tail -1)"
  done
  pack
}

case "$1" in
  start)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -c "import torch, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pydantic', pydantic.VERSION)" || exit 1
    python3 -c "import numpy, pandas, pyarrow, yaml, typer, tqdm, safetensors, dreamrec.cli; print('imports ok')" || exit 1
    # MPS lets the workers' small kernels share the GPU instead of time-slicing whole contexts; off if it fails
    if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
      export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
      mkdir -p /tmp/mps-pipe /tmp/mps-log && nvidia-cuda-mps-control -d
      if timeout 120 python3 -c "import torch; print('mps client ok', torch.ones(4, device='cuda').sum().item())"; then
        echo "MPS on"
      else
        echo quit | nvidia-cuda-mps-control; sleep 2; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; echo "MPS off"
      fi
    fi
    setsid nohup python3 benchmarks/jobqueue.py "$2" --workers "$3" --logs runs/gpu/logs > runs/gpu/queue.out 2>&1 < /dev/null &
    sleep 5
    watch "$4"
    ;;
  poll)
    watch "$2"
    ;;
esac
