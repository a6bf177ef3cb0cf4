"""One exception type for everything a user can cause. The CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A mistake the user can fix: what went wrong, and what to do about it."""

    def __init__(self, what: str, fix: str = ""):
        self.what, self.fix = what, fix
        super().__init__(f"{what}. {fix}".strip() if fix else what)


class Interrupted(UserError):
    """Ctrl-C during training: a checkpoint was saved. The CLI exits 130."""
