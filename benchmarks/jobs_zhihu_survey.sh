#!/bin/bash
# The Zhihu survey table (configs/tables/zhihu-survey.yaml) as two disjoint-seed jobs, one per core:
#   nice -n 10 benchmarks/jobs_zhihu_survey.sh a   # seeds 0-2
#   nice -n 10 benchmarks/jobs_zhihu_survey.sh b   # seeds 3-4
# ZHIHU: the DreamRec authors' Zhihu folder; OUT: the bench work folder. Rerunning resumes.
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
ZHIHU=${ZHIHU:-../shared/data/dreamrec/zhihu}
OUT=${OUT:-/work/runs/bench}
bench() {
  .venv/bin/dreamrec bench configs/tables/zhihu-survey.yaml --data "$ZHIHU" --out "$OUT" \
    --results benchmarks/results/tables --set train.threads=1 "$@"
}
if [ "$1" = a ]; then seeds=(--seed 0 --seed 1 --seed 2); else seeds=(--seed 3 --seed 4); fi
bench --rows dimerec,ddrm,diffrec2,diqdiff "${seeds[@]}"
bench --rows popularity,sasrec,sasrec-ce "${seeds[@]}"
