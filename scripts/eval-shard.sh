#!/bin/sh
# Run one shard of `videollama eval` from a batch scheduler's array index.
#
#   scripts/eval-shard.sh --format mvbench --questions Q --videos V --out BASE [more eval flags]
#
# Shard index:  $JOB_COMPLETION_INDEX          (Kubernetes indexed Job)
#           or  $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN   (Slurm array; MIN default 0)
# Shard count:  $EVAL_SHARDS, else $SLURM_ARRAY_TASK_COUNT
# `--out BASE` becomes `--out BASE/shard-I-of-N` and `--shard I/N` is appended, so every
# shard resumes in its own folder when rescheduled; afterwards
#   videollama eval merge BASE/shard-*-of-N --out BASE/merged
# The binary is $VIDEOLLAMA_BIN (default: videollama on PATH).
set -eu

if [ -n "${JOB_COMPLETION_INDEX:-}" ]; then
    index=$JOB_COMPLETION_INDEX
elif [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    index=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
else
    echo "eval-shard.sh: set JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm)" >&2
    exit 2
fi
count=${EVAL_SHARDS:-${SLURM_ARRAY_TASK_COUNT:-}}
if [ -z "$count" ]; then
    echo "eval-shard.sh: set EVAL_SHARDS (or run inside a Slurm array) to give the shard count" >&2
    exit 2
fi
case "$index$count" in
    *[!0-9]*) echo "eval-shard.sh: index $index and count $count must be whole numbers" >&2; exit 2 ;;
esac
if [ "$index" -ge "$count" ]; then
    echo "eval-shard.sh: shard index $index is not below the count $count" >&2
    exit 2
fi

# Rewrite `--out BASE` to the shard's own folder (the loop walks the original arguments
# while rebuilding "$@").
next_is_out=0
for arg; do
    shift
    if [ "$next_is_out" = 1 ]; then
        set -- "$@" "$arg/shard-$index-of-$count"
        next_is_out=0
        continue
    fi
    [ "$arg" = "--out" ] && next_is_out=1
    set -- "$@" "$arg"
done

exec "${VIDEOLLAMA_BIN:-videollama}" eval "$@" --shard "$index/$count"
