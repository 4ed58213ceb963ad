"""The one exception for "the user asked for something impossible", and the one for a signal that
stops a command (here, not with the launch, so the CLI catches it without loading Hydra)."""

import signal


class SweepError(Exception):
    """A request that cannot be carried out as given (a bad file, key or value, a refused
    submission): `deconcnn-sweep` prints it as one line and exits 2, with nothing written or
    submitted. Anything else that escapes is a bug and keeps its traceback."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached a launch that waits for its runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
