"""`python -m dqt.bench <command>`, the same as `dqt-bench <command>`."""
from dqt.bench import main

main()
