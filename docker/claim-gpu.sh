#!/bin/sh
# Usage: claim-gpu COMMAND [ARGS...]
# Claim one free GPU and run COMMAND on it alone (CUDA_VISIBLE_DEVICES=<index>).
#
# `docker compose up --scale sweep-agent=N` starts N identical containers; a per-container GPU
# reservation of `count: 1` would give every replica the *first* GPU. So each agent sees all
# GPUs and takes the first one whose lock file in the shared /locks volume (GPU_LOCK_DIR) it can
# flock. The lock is held by COMMAND (the inherited file descriptor) and released when it exits.
# The GPU count comes from torch (EQUINET_GPU_COUNT overrides it, e.g. for tests).
set -eu
locks="${GPU_LOCK_DIR:-/locks}"
n="${EQUINET_GPU_COUNT:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
i=0
while [ "$i" -lt "$n" ]; do
    exec 9>"$locks/gpu$i.lock"
    if flock -n 9; then
        export CUDA_VISIBLE_DEVICES="$i"
        echo "claim-gpu: running on GPU $i of $n" >&2
        exec "$@"
    fi
    exec 9>&-
    i=$((i + 1))
done
echo "claim-gpu: all $n GPUs are taken; scale the agents to at most the number of GPUs" >&2
exit 1
