"""What a stopped receive keeps: finding and discarding its hidden partial files.

A receive into a folder that is cancelled or loses its peer keeps what arrived as hidden
``.NAME.p2p-copy-part`` files (and ``.NAME.p2p-copy-resume`` sidecars), so that the same
receive run again continues them (storage/destination.py). A notebook user does not see
them (JupyterLab hides dot files): the ended panel says what was kept and where, and the
call that discards it (``p2p_copy.discard_partial``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..display.progress import Progress, python_str
from ..storage.destination import SIDECAR_SUFFIX, TEMP_SUFFIX, _hidden_name

__all__ = ["discard_partial", "kept", "tell_display"]

#: A sidecar is first written under this extra suffix, then renamed.
_SUFFIXES = (TEMP_SUFFIX, SIDECAR_SUFFIX, SIDECAR_SUFFIX + ".new")


def _ours(name: str) -> bool:
    return name.startswith(".") and name.endswith(_SUFFIXES)


def _walk(folder: Path) -> Iterator[Path]:
    # Links are not followed: a link in the destination must not lead us elsewhere.
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            if _ours(name):
                yield Path(root, name)


def kept(dest: str | os.PathLike[str], names: Sequence[str] | None = None) -> list[Path]:
    """The partial files and sidecars in ``dest`` of the top-level ``names`` (a folder's
    name ends in ``/``, as in an offer), or of every transfer if ``names`` is None."""
    root = Path(dest)
    if names is None:
        return sorted(_walk(root)) if root.is_dir() else []
    found: list[Path] = []
    for name in names:
        bare = name.removesuffix("/")
        if not bare or bare in (".", "..") or "/" in bare or "\\" in bare:
            continue  # not a top-level name: nothing of ours can be there
        if name.endswith("/"):
            folder = root / bare
            if folder.is_dir() and not folder.is_symlink():
                found += _walk(folder)
        else:
            for suffix in _SUFFIXES:
                base = _hidden_name(name, suffix.removesuffix(".new"))
                path = root / (base + (".new" if suffix.endswith(".new") else ""))
                if path.is_file() and not path.is_symlink():
                    found.append(path)
    return sorted(found)


def discard_partial(dest: str | os.PathLike[str],
                    names: Sequence[str] | None = None) -> list[Path]:
    """Remove what stopped receives kept in ``dest`` for a later run; return what went.

    ``names``: only the partial files of these top-level names (as the ended panel lists
    them); None: every ``.NAME.p2p-copy-part`` and ``.p2p-copy-resume`` file under ``dest``.
    Files under their final names are never touched. A receive run afterwards starts over.
    """
    removed = []
    for path in kept(dest, names):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _discard_call(dest: str) -> str:
    return f"p2p_copy.discard_partial({python_str(dest)}"


def tell_display(display: Progress, dest: str | os.PathLike[str]) -> None:
    """Let a display that can show them (the notebook panel) find what a stop keeps."""
    bind = getattr(display, "bind_partial", None)
    if bind is None:
        return
    folder = os.path.abspath(dest)  # the kernel's working folder is not on screen

    def call(names: Sequence[str]) -> str:
        listed = ", ".join(python_str(n) for n in names)
        return f"{_discard_call(folder)}, [{listed}])"

    bind(folder, lambda names: [str(p) for p in kept(folder, names)], call)
