#!/usr/bin/env bash
# A hydra multirun sweep; each job starts its agents through the elastic launcher. Example: the scaling
# study over agents and aggregation rules with three seeds:
#   launch/sweep.sh num_agents=1,4,7,11 aggregation=mean,median seed=1,2,3 train_steps=100000
set -euo pipefail
exec dqt-train --multirun "$@"
