"""`dqt-bench learner | rollout | comm | learn | policy`: the speed and learning figures recorded in the README
(never timed tests), and what a run's greedy policy does."""
from __future__ import annotations

import sys

USAGE = "usage: dqt-bench {learner,rollout,comm,learn,policy} [options]   (dqt-bench <command> --help for options)"


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a benchmark's own main()."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("learner", "rollout", "comm", "learn", "policy"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] == "learner":
        from dqt.bench.learner import main as run
    elif argv[0] == "learn":
        from dqt.bench.learn import main as run
    elif argv[0] == "policy":
        from dqt.bench.policy import main as run
    elif argv[0] == "rollout":
        from dqt.bench.rollout import main as run
    else:
        from dqt.bench.comm import main as run
    run(argv[1:])
