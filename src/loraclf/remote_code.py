"""Whether a model folder may run its own Python code (transformers' `trust_remote_code`).

A config or tokenizer_config whose `auto_map` names classes in the folder's own .py files asks transformers
to import and run that code. loraclf never does so unless the user passed `--trust-remote-code` on the
command line of this very command: the choice lives only for the call that `allowed()` wraps (the CLI
wraps each command), never in a saved config, a run directory or the environment. Every loader passes
`trust_remote_code=` explicitly (`kwargs()`), so transformers never asks y/N on stdin.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
from pathlib import Path

from .errors import UserError

FLAG = "--trust-remote-code"
# the files whose auto_map makes transformers import the folder's code (model/config, tokenizer, processors)
CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("loraclf_trust_remote_code", default=False)


def trusted() -> bool:
    return _TRUSTED.get()


@contextlib.contextmanager
def allowed(on: bool = True):
    """Within this block, model folders may run their own code when `on` (the CLI's --trust-remote-code)."""
    token = _TRUSTED.set(bool(on))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def kwargs() -> dict:
    """The keyword every transformers loader gets: an explicit answer, so it never prompts."""
    return {"trust_remote_code": trusted()}


def add_argument(parser) -> None:
    parser.add_argument(FLAG, action="store_true",
                        help="let a model folder whose config has an auto_map run its own Python code "
                             "(only for folders you trust; asked again on every command)")


def refusal(name) -> UserError:
    return UserError(f"model {name} needs its own Python code to load (an auto_map in its config), and loraclf "
                     "does not run a model folder's code by default",
                     f"pass {FLAG} if you trust that folder's code, or use a model transformers supports natively")


def check_folder(path) -> None:
    """Refuse a local folder that declares custom code, unless trusted. Hub names are checked by transformers
    itself (trust_remote_code=False makes it raise; see is_refusal)."""
    path = Path(path)
    if trusted() or not path.is_dir():
        return
    for name in CODE_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # unreadable: the loader that reads it says so
        if isinstance(data, dict) and data.get("auto_map"):
            raise refusal(path)


def is_refusal(exc: BaseException) -> bool:
    """transformers' own error for custom code it was told not to run."""
    text = str(exc)
    return "trust_remote_code" in text or "contains custom code" in text or "references custom code" in text
