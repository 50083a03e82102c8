"""Errors a user can cause, each reported as one line that says what to change (no traceback).

Lowest layer of dqt: it imports nothing from dqt, so every module can raise these.
"""
from __future__ import annotations

EXIT_CONFIG = 2  # refused before any worker started (bad config, bad command line)
EXIT_RUN = 3  # a started run stopped on bad data or unusable checkpoints; the reason is on stderr


class ConfigError(ValueError):
    """A config value a user set is not allowed; str(error) is the one-line message."""


class RunError(RuntimeError):
    """A run cannot go on because of something outside the code (env data, checkpoint files).

    str(error) is the one-line message. `every_agent` marks an error every agent raises alike (a
    collective decision), which rank 0 alone reports.
    """

    def __init__(self, message: str, every_agent: bool = False):
        super().__init__(message)
        self.every_agent = every_agent
