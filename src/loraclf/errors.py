"""One exception type for everything a user can cause. The CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A mistake the user can fix: what went wrong, and what to do about it."""

    def __init__(self, what: str, fix: str = ""):
        self.what, self.fix = what, fix
        super().__init__(f"{what}. {fix}".strip() if fix else what)


class Interrupted(UserError):
    """Ctrl-C during training: a checkpoint was saved. The CLI exits 130."""


def traceback_wanted() -> bool:
    """LORACLF_TRACEBACK=1: an unforeseen failure shows its traceback instead of one line."""
    import os
    return os.environ.get("LORACLF_TRACEBACK", "") not in ("", "0")


def first_line(e: Exception, limit: int = 300) -> str:
    """The first non-blank line of an exception's message, cut to `limit` characters ("" if it has none)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:limit]


def unexpected(e: Exception) -> str:
    """One line for an exception no check foresaw: its type and the first line of its message."""
    first = first_line(e)
    return f"unexpected {type(e).__name__}{': ' + first if first else ''}"
