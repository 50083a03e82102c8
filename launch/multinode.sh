#!/usr/bin/env bash
# Several nodes with c10d rendezvous: run this on every node with the same MASTER_ADDR, MASTER_PORT,
# RDZV_ID and RUN_DIR (RUN_DIR on a shared filesystem). Agents = NNODES * NPROC_PER_NODE.
#   NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=node0 RUN_DIR=/shared/runs/x launch/multinode.sh task=mw-door-unlock
# MASTER_ADDR:MASTER_PORT is the rendezvous store: the launcher on the machine that owns that address hosts
# it, the others connect to it. Ranks come from the rendezvous in the order nodes join, so NODE_RANK is not
# needed (c10d ignores it). LOCAL_ADDR: this node's address as the others reach it, when its hostname does
# not resolve to that (tests/test_multinode.py runs two of these on one machine with 127.0.0.1).
set -euo pipefail
: "${NNODES:?set NNODES}" "${NPROC_PER_NODE:?set NPROC_PER_NODE}" "${MASTER_ADDR:?set MASTER_ADDR}" "${RUN_DIR:?set RUN_DIR}"
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1  # elastic restarts with gloo need it
exec torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id="${RDZV_ID:-dqt}" \
  ${LOCAL_ADDR:+--local_addr="$LOCAL_ADDR"} --max_restarts="${MAX_RESTARTS:-0}" \
  -m dqt.train "hydra.run.dir=$RUN_DIR" "$@"
