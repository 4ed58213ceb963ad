"""The one exception for "the user asked for something impossible"."""


class SweepError(Exception):
    """A request that cannot be carried out as given (a bad file, key or value, a refused
    submission): `deconcnn-sweep` prints it as one line and exits 2, with nothing written or
    submitted. Anything else that escapes is a bug and keeps its traceback."""
