#!/usr/bin/env bash
# One node, N agents under torchrun (one process per agent). Extra arguments are hydra overrides.
#   launch/local.sh 4 task=mw-door-unlock train_steps=100000
set -euo pipefail
agents=${1:?usage: launch/local.sh NUM_AGENTS [hydra overrides...]}; shift
# One run directory for every rank: each rank resolves ${now:...} itself otherwise.
run_dir=${RUN_DIR:-runs/local/$(date +%Y-%m-%d_%H-%M-%S)}
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1  # elastic restarts with gloo need it
exec torchrun --standalone --nproc_per_node="$agents" -m dqt.train "hydra.run.dir=$run_dir" "$@"
