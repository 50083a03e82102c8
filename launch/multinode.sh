#!/usr/bin/env bash
# Several nodes with c10d rendezvous: run this on every node with the same MASTER_ADDR/PORT and RUN_DIR
# (RUN_DIR on a shared filesystem). Agents = NNODES * NPROC_PER_NODE.
#   NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=node0 RUN_DIR=/shared/runs/x launch/multinode.sh task=mw-door-unlock
set -euo pipefail
: "${NNODES:?set NNODES}" "${NPROC_PER_NODE:?set NPROC_PER_NODE}" "${MASTER_ADDR:?set MASTER_ADDR}" "${RUN_DIR:?set RUN_DIR}"
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id="${RDZV_ID:-dqt}" \
  --max_restarts="${MAX_RESTARTS:-0}" -m dqt.train "hydra.run.dir=$RUN_DIR" "$@"
