"""Results written where a user names — a directory or an object-store URL
(``s3://bucket/results/``, over fsspec with the provider's own credentials): checked before
any work is done, and each file written whole — a local file under a temporary name, then
renamed; an object in one upload — so a reader never sees half a file. A file already there
with the same size is left as it is (an export cut short is finished, not redone).
"""

from __future__ import annotations

from typing import Any

from modfactory.data.recipe import RecipeError


class ExportError(RecipeError):
    """The output cannot be written; the message names it (no credentials in it)."""


def _filesystem(output: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(output.removeprefix("file://"))
    except (ImportError, ValueError) as exc:
        raise ExportError(f"output {output}: no way to write it ({exc})") from None
    return fs, root.rstrip("/")


def check_output(output: str) -> None:
    """Make sure ``output`` can be written, before anything is done (ExportError)."""
    fs, root = _filesystem(output)
    probe = f"{root}/.modfactory-probe"
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # the store's own errors: no access, unreachable, read-only
        raise ExportError(f"output {output}: cannot be written ({_first_line(exc)})") from None


def write_whole(output: str, name: str, data: bytes) -> bool:
    """``data`` as ``<output>/<name>``, whole; False when it is there already (same size).
    ExportError naming the output and what failed."""
    fs, root = _filesystem(output)
    target = f"{root}/{name}"
    try:
        if fs.exists(target) and fs.size(target) == len(data):
            return False
        fs.makedirs(root, exist_ok=True)
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            partial = f"{target}.partial"
            fs.pipe_file(partial, data)
            fs.mv(partial, target)
        else:
            fs.pipe_file(target, data)
    except Exception as exc:
        raise ExportError(f"output {output}: cannot be written ({_first_line(exc)})") from None
    return True


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
