"""The sender's folder walk (sources.py): order, links, depth, and errors, on real folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p2p_copy.errors import UsageError
from p2p_copy.storage.sources import collect_sources


def _os_walk_order(top: Path) -> list[str]:
    """What 0.4.0 sent, from os.walk: per folder its files then its folders, sorted."""
    names = []
    for folder, subfolders, files in os.walk(top):
        subfolders.sort()
        rel = os.path.relpath(folder, top)
        here = top.name if rel == "." else f"{top.name}/{rel}"
        for name in [*sorted(files), *subfolders]:
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                names.append(f"{here}/{name}")
    return names


def test_walk_order_links_and_paths(tmp_path: Path) -> None:
    """Entries come in os.walk's order; links are skipped, not followed; files map to paths."""
    top = tmp_path / "tree"
    for folder in ["b", "a/z", "a/y", "c"]:
        (top / folder).mkdir(parents=True)
    for file in ["b/2", "b/1", "a/9", "a/z/k", "a/y/j", "c/0", "top.txt", "zz.txt"]:
        (top / file).write_text(file)
    (top / "link-to-dir").symlink_to("a")
    (top / "link-to-file").symlink_to("top.txt")
    sources = collect_sources([top])
    assert [e.path for e in sources.entries] == ["tree", *_os_walk_order(top)]
    assert sorted(sources.skipped) == ["tree/link-to-dir", "tree/link-to-file"]
    sent = [e.path for e in sources.entries if (tmp_path / e.path).is_file()]
    assert [Path(f).relative_to(tmp_path).as_posix() for f in sources.files] == sent


@pytest.mark.slow
def test_a_very_deep_folder_is_walked(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit: the walk keeps a stack of its own."""
    deepest = tmp_path / "top"
    deepest.mkdir()
    for _ in range(1_200):
        deepest = deepest / "d"
        deepest.mkdir()
    (deepest / "f").write_bytes(b"x")
    try:
        sources = collect_sources([tmp_path / "top"])
        assert len(sources.entries) == 1_202 and sources.entries[-1].path.count("/") == 1_201
    finally:
        # Bottom up: shutil.rmtree (pytest's clean-up) recurses once per level.
        (deepest / "f").unlink()
        while deepest != tmp_path:
            deepest.rmdir()
            deepest = deepest.parent


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Cannot send"):
        collect_sources([tmp_path / "missing"])


def test_only_names_that_are_sent_must_be_utf8(tmp_path: Path) -> None:
    """A link whose name is not UTF-8 is skipped like any link; such a file is refused."""
    top = tmp_path / "top"
    top.mkdir()
    (top / "ok.txt").write_bytes(b"x")
    os.symlink(b"ok.txt", os.fsencode(top) + b"/link-\xff")
    sources = collect_sources([top])
    assert [e.path for e in sources.entries] == ["top", "top/ok.txt"]
    assert len(sources.skipped) == 1
    with open(os.fsencode(top) + b"/file-\xff", "wb") as bad:
        bad.write(b"y")
    with pytest.raises(UsageError, match="not UTF-8"):
        collect_sources([top])


def test_files_read_the_same_without_readv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.readv is missing (Windows), files are read with os.read and a copy: the same
    bytes and digests reach the stream (issue 23)."""
    from p2p_copy.storage import sources

    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(300_000))

    def stream() -> tuple[bytes, list[str]]:
        reader = sources.StreamReader([str(src)], [src.stat().st_size])
        out, digests, buffer = b"", [], bytearray(65537)
        while not reader.exhausted:
            length, finished = reader.read_into(buffer)
            out += bytes(buffer[1:1 + length])
            digests += finished
        reader.close()
        return out, digests

    with_readv = stream()
    monkeypatch.setattr(sources, "_READV", None)
    assert stream() == with_readv and with_readv[0] == src.read_bytes()
