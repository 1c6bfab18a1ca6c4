"""Errors in what the user gave turnrl (a config, a checkpoint, a file), not bugs of ours: the
command line prints them as one line, without a traceback, and exits non-zero."""

from rewards.base import FailedRewardError
from rollout.store import CorruptFileError


class TurnRLError(Exception):
    """Base of the errors `turnrl` reports as one line (the message names the key or file)."""


# What the command line prints as one line: ours, a damaged store's, a reward that keeps failing.
USER_ERRORS = (TurnRLError, CorruptFileError, FailedRewardError)
