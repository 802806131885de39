"""The one exception type the jobs raise for problems a user can fix (bad arguments, missing input)."""


class JobError(Exception):
    """A clear, user-facing failure: the job prints the message and exits with status 2."""
