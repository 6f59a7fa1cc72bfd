#!/bin/sh
# Usage: claim-gpu COMMAND [ARGS...]         one free GPU, COMMAND runs on it alone
#        claim-gpu --all COMMAND [ARGS...]   every GPU of the node (the `train` service's DDP run)
#
# `docker compose up --scale sweep-agent=N` starts N identical containers; a per-container GPU
# reservation of `count: 1` would give every replica the *first* GPU. So each agent sees all
# GPUs and takes the first one whose lock file in the shared /locks volume (GPU_LOCK_DIR) it can
# flock (CUDA_VISIBLE_DEVICES=<index>). `--all` takes the locks of every GPU or none (a training
# run started while agents hold GPUs is refused instead of sharing them). The locks are held by
# COMMAND (inherited file descriptors) and released when it exits.
# The GPU count comes from torch (EQUINET_GPU_COUNT overrides it, e.g. for tests).
set -eu
locks="${GPU_LOCK_DIR:-/locks}"
all=0
if [ "${1:-}" = "--all" ]; then all=1; shift; fi
[ "$#" -gt 0 ] || { echo "usage: claim-gpu [--all] COMMAND [ARGS...]" >&2; exit 2; }
n="${EQUINET_GPU_COUNT:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
if [ "$n" -eq 0 ]; then
    echo "claim-gpu: no GPU is visible in this container (torch.cuda.device_count() == 0): the NVIDIA" \
         "container runtime is missing or the service was started without GPUs. Install the NVIDIA" \
         "Container Toolkit (driver >= 580 for the CUDA 13.0 image), check 'docker run --rm --gpus all" \
         "<image> nvidia-smi', and keep the service's GPU reservation (deploy.resources.reservations.devices)." >&2
    exit 3
fi
if [ ! -d "$locks" ] || [ ! -w "$locks" ]; then
    echo "claim-gpu: the lock folder $locks is missing or not writable by uid $(id -u) (mount the" \
         "gpu-locks volume there; the image creates it with mode 1777)" >&2
    exit 3
fi
if [ "$all" -eq 1 ]; then
    # flock every lock from one process and exec COMMAND with the descriptors still open
    exec python -c '
import fcntl, os, sys
locks, n, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for i in range(n):
    fd = os.open(os.path.join(locks, f"gpu{i}.lock"), os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"claim-gpu: GPU {i} of {n} is taken (a sweep agent or another run holds {locks}/gpu{i}.lock); "
                 "--all needs every GPU: stop the agents first")
    os.set_inheritable(fd, True)
print(f"claim-gpu: running on all {n} GPUs", file=sys.stderr)
os.execvp(cmd[0], cmd)
' "$locks" "$n" "$@"
fi
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
