"""Errors the CLI turns into one clear line and an exit code (no traceback)."""


class CominingError(Exception):
    """A failure at run time (exit code 1)."""

    exit_code = 1


class InputError(CominingError):
    """Bad user input: the message names the file and what is wrong (exit code 2)."""

    exit_code = 2

    def __init__(self, path, problem: str | None = None):
        if problem is None:
            # One-argument form: how torch's DataLoader re-raises a worker's exception,
            # with the worker's traceback as the message; keep only its last line.
            path, problem = None, _last_error_line(str(path))
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def _last_error_line(message: str) -> str:
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else message
    marker = "InputError: "
    return last.split(marker, 1)[1] if marker in last else last


def summarize_problems(problems: list[str], *, shown: int = 3) -> str:
    """'3 boxes are bad: a; b; c' style summary for many bad items of one kind."""
    head = "; ".join(problems[:shown])
    more = len(problems) - shown
    return head + (f"; and {more} more" if more > 0 else "")


def first_sentence(exc: BaseException) -> str:
    """The first line of an exception message, cut at its first sentence (torch's
    messages run on for lines of advice)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    head, sep, _ = text.partition(". ")
    return head + ("." if sep else "")
