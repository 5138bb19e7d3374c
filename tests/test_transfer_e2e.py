"""End-to-end tests of transfers that succeed: a real relay on 127.0.0.1, real files.

Most tests run ``send`` and ``receive`` in this process against the in-process relay
fixture; the ones about whole processes (exit codes, peak memory, the demo) run the CLI
as subprocesses.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from p2p_copy import DestinationExistsError, FileResult, TransferResult, receive, send
from p2p_copy.protocol import digests
from p2p_copy.protocol.digests import BLAKE3, SHA256
from p2p_copy.relay import Relay
from p2p_copy.storage.destination import TEMP_SUFFIX

from .conftest import Processes, both_backends, cli_env, free_port, run_cli, wait_for_port
from .protocol_pair import hex_digest

#: Bound for one in-process transfer; the data in these tests is small.
TRANSFER_TIMEOUT = 60.0
#: Bound for one CLI process.
PROCESS_TIMEOUT = 90.0
MiB = 2**20
KiB = 2**10


# --- helpers ---------------------------------------------------------------------------


def digest_of(path: Path, algorithm: str = SHA256) -> str:
    """A file's digest (SHA-256 unless told), read in chunks so that large files cost no
    memory."""
    digest = digests.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` by relative POSIX path: file bytes, None for a folder.

    Symlinks are recorded as ``b"<symlink>"`` so that a test sees one that arrived.
    """
    tree: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = b"<symlink>"
            elif path.is_dir():
                tree[rel] = None
            else:
                tree[rel] = path.read_bytes()
    return tree


def leftovers(root: Path) -> list[str]:
    """Temporary files of p2p-copy anywhere under ``root`` (hidden ones included)."""
    return [
        os.path.join(dirpath, name)
        for dirpath, dirnames, filenames in os.walk(root)
        for name in [*dirnames, *filenames]
        if name.endswith(TEMP_SUFFIX)
    ]


async def transfer(
    relay: Relay,
    paths: Sequence[str | os.PathLike[str]],
    dest: Path,
    *,
    code: str = "1-transfer-code",
    chunk_size: int | None = None,
    overwrite: bool = False,
) -> tuple[TransferResult, TransferResult]:
    """Send ``paths`` to ``dest`` through ``relay``; return (sender's, receiver's) results."""
    extra: dict[str, Any] = {} if chunk_size is None else {"chunk_size": chunk_size}
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        sent, got = await asyncio.gather(
            send(relay.url, code, paths, progress="none", **extra),
            receive(relay.url, code, dest, progress="none", overwrite=overwrite),
        )
    assert not leftovers(dest)
    return sent, got


def check_results(sent: TransferResult, got: TransferResult, expected: dict[str, Path],
                  dest: Path) -> None:
    """Both results list exactly ``expected`` (manifest path -> source file) and agree."""
    assert sent.role == "sender" and got.role == "receiver"
    assert sorted(f.path for f in got.files) == sorted(expected)
    for result in got.files:
        source = expected[result.path]
        assert result.size == source.stat().st_size
        # Both peers have BLAKE3, so that is what they check with.
        assert result.algorithm == BLAKE3 and result.sha256 is None
        assert result.digest == hex_digest(BLAKE3, source.read_bytes())
        assert digest_of(dest / result.path, BLAKE3) == result.digest
    assert sent.files == got.files
    total = sum(p.stat().st_size for p in expected.values())
    assert sent.bytes == got.bytes == total
    assert sent.duration > 0 and got.duration > 0
    assert got.destination == dest
    assert sent.destination is None


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


#: Runs ARGV[2:] as its child, reaps it with os.wait4 and writes "exit-code maxrss" to
#: ARGV[1]. Measuring through this small process matters: on Linux a child's ru_maxrss
#: starts at the peak RSS of the process that spawned it (exec keeps the old mm's
#: high-water mark), so children spawned by pytest itself would all report pytest's peak.
_MEASURE = r"""
import ctypes, os, signal, subprocess, sys
def die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
child = subprocess.Popen(sys.argv[2:], preexec_fn=die_with_parent)
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(f"{child.returncode} {usage.ru_maxrss}")
sys.exit(child.returncode)
"""


def start_measured(processes: Processes, report: Path, *args: str) -> subprocess.Popen[str]:
    """``p2p-copy ARGS`` under the _MEASURE launcher; the fixture cleans both up."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEASURE, str(report), sys.executable, "-m", "p2p_copy", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    processes.procs.append(proc)
    return proc


def measured(report: Path) -> int:
    """The peak RSS in KiB that _MEASURE wrote for its child (which exited with 0)."""
    code, maxrss = report.read_text().split()
    assert code == "0"
    return int(maxrss)


# --- what arrives ------------------------------------------------------------------------


async def test_single_file(relay: Relay, tmp_path: Path) -> None:
    """One file arrives byte-identical and both results describe it the same way."""
    data = os.urandom(300 * KiB + 7)
    src = write(tmp_path / "src" / "one.bin", data)
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [src], dest)
    assert snapshot(dest) == {"one.bin": data}
    check_results(sent, got, {"one.bin": src}, dest)
    assert got.files == (FileResult("one.bin", len(data), hex_digest(BLAKE3, data), BLAKE3),)


async def test_several_files_and_folders_at_once(relay: Relay, tmp_path: Path) -> None:
    """Files and folders named together in one send all arrive, side by side, in order."""
    src = tmp_path / "src"
    a = write(src / "a.txt", b"alpha\n")
    d1 = src / "d1"
    write(d1 / "x.bin", os.urandom(70 * KiB))
    write(d1 / "inner" / "y.txt", b"why\n")
    b = write(src / "b.bin", os.urandom(5000))
    d2 = src / "d2"
    write(d2 / "z.txt", b"zed\n")
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [a, d1, b, d2], dest)
    assert snapshot(dest) == {
        "a.txt": a.read_bytes(),
        "b.bin": b.read_bytes(),
        "d1": None,
        "d1/x.bin": (d1 / "x.bin").read_bytes(),
        "d1/inner": None,
        "d1/inner/y.txt": b"why\n",
        "d2": None,
        "d2/z.txt": b"zed\n",
    }
    # Files are reported in manifest order: the arguments' order, folders walked sorted.
    assert [f.path for f in got.files] == [
        "a.txt", "d1/x.bin", "d1/inner/y.txt", "b.bin", "d2/z.txt"
    ]
    check_results(sent, got, {
        "a.txt": a, "d1/x.bin": d1 / "x.bin", "d1/inner/y.txt": d1 / "inner" / "y.txt",
        "b.bin": b, "d2/z.txt": d2 / "z.txt",
    }, dest)


@both_backends
async def test_recursive_folders(relay: Relay, tmp_path: Path) -> None:
    """A deep tree with files at every level and several branches arrives identical."""
    top = tmp_path / "src" / "tree"
    expected: dict[str, Path] = {}
    for branch in ("left", "right"):
        level = top / branch
        for depth in range(6):
            level = level / f"level{depth}"
            for i in range(3):
                path = write(level / f"f{i}.bin", os.urandom(1 + depth * 1000 + i))
                expected[path.relative_to(top.parent).as_posix()] = path
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [top], dest)
    assert snapshot(dest / "tree") == snapshot(top)
    check_results(sent, got, expected, dest)


@both_backends
async def test_empty_files_and_empty_folders(relay: Relay, tmp_path: Path) -> None:
    """Empty files and empty folders (nested or not) arrive, as do an empty folder alone."""
    top = tmp_path / "src" / "top"
    write(top / "empty.txt", b"")
    write(top / "sub" / "also-empty", b"")
    write(top / "sub" / "full.txt", b"not empty")
    (top / "hollow").mkdir()
    (top / "deep" / "er" / "est").mkdir(parents=True)
    lonely = tmp_path / "src" / "lonely"
    lonely.mkdir()
    only_empty = write(tmp_path / "src" / "zero", b"")
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [top, lonely, only_empty], dest)
    assert snapshot(dest) == {
        "top": None,
        "top/empty.txt": b"",
        "top/sub": None,
        "top/sub/also-empty": b"",
        "top/sub/full.txt": b"not empty",
        "top/hollow": None,
        "top/deep": None,
        "top/deep/er": None,
        "top/deep/er/est": None,
        "lonely": None,
        "zero": b"",
    }
    empty_sha = hex_digest(BLAKE3, b"")
    assert {f.path: (f.size, f.digest) for f in got.files if f.size == 0} == {
        "top/empty.txt": (0, empty_sha),
        "top/sub/also-empty": (0, empty_sha),
        "zero": (0, empty_sha),
    }
    assert sent.files == got.files and got.bytes == len(b"not empty")


async def test_sha256_when_asked_for_in_the_environment(
        relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$P2P_COPY_DIGESTS=sha256: results a user can compare with sha256sum."""
    monkeypatch.setenv(digests.DIGESTS_ENV, "sha256")
    data = os.urandom(300_000)
    sent, got = await transfer(relay, [write(tmp_path / "src" / "one.bin", data)],
                               tmp_path / "out")
    assert got.files == sent.files == (
        FileResult("one.bin", len(data), hashlib.sha256(data).hexdigest(), SHA256),)
    assert got.files[0].sha256 == hashlib.sha256(data).hexdigest()


async def test_only_empty_things(relay: Relay, tmp_path: Path) -> None:
    """A transfer of zero bytes in total (an empty folder and an empty file) completes."""
    empty_dir = tmp_path / "src" / "nothing"
    empty_dir.mkdir(parents=True)
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [empty_dir], dest)
    assert snapshot(dest) == {"nothing": None}
    assert sent.files == got.files == () and sent.bytes == got.bytes == 0

    empty_file = write(tmp_path / "src" / "void", b"")
    sent, got = await transfer(relay, [empty_file], tmp_path / "out2")
    assert snapshot(tmp_path / "out2") == {"void": b""}
    assert got.files == (FileResult("void", 0, hex_digest(BLAKE3, b""), BLAKE3),)


@both_backends
async def test_unicode_names(relay: Relay, tmp_path: Path) -> None:
    """NFC accents, emoji, CJK and spaces in names arrive as exactly the same names."""
    names = [
        "café-crème.txt",
        "😀 smile 🎉.txt",
        "中文文件夹/日本語のファイル.txt",
        "한국어 폴더/  two leading spaces.txt",
        "with spaces/trailing space .txt",
        "Ελληνικά/Ωμέγα.md",
    ]
    assert all(unicodedata.is_normalized("NFC", n) for n in names)
    top = tmp_path / "src" / "ünïcødé 📁"
    expected = {}
    for i, name in enumerate(names):
        path = write(top / name, f"file {i}: {name}\n".encode())
        expected[f"ünïcødé 📁/{name}"] = path
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [top], dest)
    assert snapshot(dest / "ünïcødé 📁") == snapshot(top)
    # The names on disk are the very same bytes, not re-normalised or escaped.
    assert sorted(os.listdir(os.fsencode(dest))) == [os.fsencode("ünïcødé 📁")]
    assert sorted(os.listdir(os.fsencode(dest / "ünïcødé 📁"))) == sorted(
        os.listdir(os.fsencode(top))
    )
    check_results(sent, got, expected, dest)


@both_backends
async def test_mode_and_mtime_kept(relay: Relay, tmp_path: Path) -> None:
    """Files keep their permission bits and mtime; folders keep their mtime (and mode)."""
    top = tmp_path / "src" / "meta"
    files = {
        "run.sh": 0o755,
        "secret.key": 0o600,
        "shared.txt": 0o640,
        "sub/readonly.txt": 0o444,
        "sub/private.bin": 0o700,
    }
    base_time = 1_500_000_000.0
    for i, (name, mode) in enumerate(files.items()):
        path = write(top / name, b"#!/bin/sh\necho hi\n" if name == "run.sh" else b"x" * i)
        os.chmod(path, mode)
        os.utime(path, (base_time + i * 1000 + 0.5, base_time + i * 1000 + 0.5))
    (top / "sub" / "empty-folder").mkdir()
    folders = {"sub/empty-folder": 1_400_000_000.0, "sub": 1_300_000_000.0,
               "meta": 1_200_000_000.0}
    os.chmod(top / "sub", 0o750)
    # Deepest first, so that setting one does not disturb a parent's mtime again.
    for rel, mtime in folders.items():
        path = top if rel == "meta" else top / rel
        os.utime(path, (mtime, mtime))
    dest = tmp_path / "out"
    await transfer(relay, [top], dest)

    for i, (name, mode) in enumerate(files.items()):
        st = (dest / "meta" / name).stat()
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert abs(st.st_mtime - (base_time + i * 1000 + 0.5)) < 1, name
    assert os.access(dest / "meta" / "run.sh", os.X_OK)
    assert stat.S_IMODE((dest / "meta" / "sub").stat().st_mode) == 0o750
    for rel, mtime in folders.items():
        path = dest / "meta" if rel == "meta" else dest / "meta" / rel
        assert abs(path.stat().st_mtime - mtime) < 1, rel


@both_backends
async def test_names_as_given(relay: Relay, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``send dir/sub`` arrives as ``sub/...``; a trailing slash and ``.`` name the folder too."""
    sub = tmp_path / "src" / "dir" / "sub"
    write(sub / "inner" / "f.txt", b"f")
    write(tmp_path / "src" / "dir" / "sibling.txt", b"not sent")
    dest = tmp_path / "out"
    monkeypatch.chdir(tmp_path / "src")
    sent, got = await transfer(relay, ["dir/sub"], dest)
    assert snapshot(dest) == {"sub": None, "sub/inner": None, "sub/inner/f.txt": b"f"}
    assert [f.path for f in got.files] == ["sub/inner/f.txt"]

    await transfer(relay, ["dir/sub/"], tmp_path / "out-slash")
    assert snapshot(tmp_path / "out-slash") == snapshot(dest)

    monkeypatch.chdir(sub)
    await transfer(relay, ["."], tmp_path / "out-dot")
    assert snapshot(tmp_path / "out-dot") == snapshot(dest)

    monkeypatch.chdir(tmp_path / "src")
    await transfer(relay, ["dir/sub/inner/f.txt"], tmp_path / "out-file")
    assert snapshot(tmp_path / "out-file") == {"f.txt": b"f"}


async def test_symlink_inside_folder_is_skipped(relay: Relay, tmp_path: Path) -> None:
    """Links inside a sent folder are neither followed nor recreated; the rest arrives."""
    outside = tmp_path / "outside"
    write(outside / "secret.txt", b"must not leak")
    top = tmp_path / "src" / "folder"
    write(top / "real.txt", b"real")
    write(top / "sub" / "kept.txt", b"kept")
    (top / "link-to-file").symlink_to(outside / "secret.txt")
    (top / "link-to-dir").symlink_to(outside, target_is_directory=True)
    (top / "sub" / "relative-link").symlink_to("kept.txt")
    (top / "dangling").symlink_to(tmp_path / "does-not-exist")
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [top], dest)
    assert snapshot(dest) == {
        "folder": None,
        "folder/real.txt": b"real",
        "folder/sub": None,
        "folder/sub/kept.txt": b"kept",
    }
    assert [f.path for f in got.files] == ["folder/real.txt", "folder/sub/kept.txt"]
    assert sent.files == got.files
    assert sent.bytes == got.bytes == len(b"realkept")


async def test_symlink_given_as_argument_is_followed(relay: Relay, tmp_path: Path) -> None:
    """A link named on the command line is followed: its target arrives under the link's name."""
    target_file = write(tmp_path / "targets" / "data.bin", os.urandom(10_000))
    target_dir = tmp_path / "targets" / "folder"
    write(target_dir / "inside.txt", b"inside")
    file_link = tmp_path / "src" / "file-link.bin"
    file_link.parent.mkdir()
    file_link.symlink_to(target_file)
    dir_link = tmp_path / "src" / "dir-link"
    dir_link.symlink_to(target_dir, target_is_directory=True)
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [file_link, dir_link], dest)
    assert snapshot(dest) == {
        "file-link.bin": target_file.read_bytes(),
        "dir-link": None,
        "dir-link/inside.txt": b"inside",
    }
    assert not (dest / "file-link.bin").is_symlink() and not (dest / "dir-link").is_symlink()
    check_results(sent, got, {"file-link.bin": target_file,
                              "dir-link/inside.txt": target_dir / "inside.txt"}, dest)


# --- messages on the wire ------------------------------------------------------------------


async def test_many_small_files_cost_few_messages(relay: Relay, tmp_path: Path) -> None:
    """2,000 files of 1 KiB cross in a few dozen messages: data and checksums are batched."""
    top = tmp_path / "src" / "many"
    top.mkdir(parents=True)
    contents = {f"f{i:04}.dat": os.urandom(KiB) for i in range(2000)}
    for name, data in contents.items():
        (top / name).write_bytes(data)
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [top], dest)
    assert len(got.files) == 2000
    assert sent.files == got.files
    assert got.bytes == 2000 * KiB
    for name, data in contents.items():
        assert (dest / "many" / name).read_bytes() == data
    # Everything both peers said after pairing; one message per file would be >= 2,000.
    assert relay.stats.messages_forwarded < 100, relay.stats


async def test_small_chunks_cross_in_many_messages(relay: Relay, tmp_path: Path) -> None:
    """With chunk_size=4096 a 1 MiB file crosses in >= 256 data messages and arrives identical."""
    data = os.urandom(MiB)
    src = write(tmp_path / "src" / "mib.bin", data)
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [src], dest, chunk_size=4096)
    assert (dest / "mib.bin").read_bytes() == data
    check_results(sent, got, {"mib.bin": src}, dest)
    assert relay.stats.messages_forwarded >= MiB // 4096
    assert relay.stats.bytes_forwarded >= MiB


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 8192, 8193])
async def test_sizes_around_chunk_size(relay: Relay, tmp_path: Path, size: int) -> None:
    """A file of zero bytes, or of a chunk's size plus or minus one, arrives identical."""
    data = os.urandom(size)
    src = write(tmp_path / "src" / f"{size}.bin", data)
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [src], dest, chunk_size=4096)
    assert snapshot(dest) == {f"{size}.bin": data}
    check_results(sent, got, {f"{size}.bin": src}, dest)


async def test_file_boundaries_inside_messages(relay: Relay, tmp_path: Path) -> None:
    """Files whose ends fall before, on and after chunk boundaries share messages correctly."""
    top = tmp_path / "src" / "mixed"
    sizes = [4095, 4096, 4097, 0, 1, 0, 4095, 8191, 2, 4096]
    expected = {}
    for i, size in enumerate(sizes):
        path = write(top / f"{i:02}.bin", os.urandom(size))
        expected[f"mixed/{i:02}.bin"] = path
    dest = tmp_path / "out"
    sent, got = await transfer(relay, [top], dest, chunk_size=4096)
    assert snapshot(dest / "mixed") == snapshot(top)
    check_results(sent, got, expected, dest)


# --- existing files ------------------------------------------------------------------------


@both_backends
async def test_existing_file_is_refused_then_overwritten(relay: Relay, tmp_path: Path) -> None:
    """An existing target stops both sides with DestinationExistsError; overwrite replaces it."""
    top = tmp_path / "src" / "folder"
    write(top / "a-new.txt", b"brand new")  # sorts first: sent before the clash
    write(top / "clash.txt", b"from the sender")
    dest = tmp_path / "out"
    existing = write(dest / "folder" / "clash.txt", b"precious local data")
    unrelated = write(dest / "folder" / "unrelated.txt", b"left alone")
    os.utime(existing, (1_000_000_000, 1_000_000_000))

    async with asyncio.timeout(TRANSFER_TIMEOUT):
        outcomes = await asyncio.gather(
            send(relay.url, "2-clash", [top], progress="none"),
            receive(relay.url, "2-clash", dest, progress="none"),
            return_exceptions=True,
        )
    assert [type(o) for o in outcomes] == [DestinationExistsError, DestinationExistsError]
    assert existing.read_bytes() == b"precious local data"
    assert existing.stat().st_mtime == 1_000_000_000
    # Refused before any byte: not even the file that comes first arrived.
    assert not (dest / "folder" / "a-new.txt").exists()
    assert not leftovers(dest)

    sent, got = await transfer(relay, [top], dest, code="3-clash-again", overwrite=True)
    assert existing.read_bytes() == b"from the sender"
    assert (dest / "folder" / "a-new.txt").read_bytes() == b"brand new"
    assert unrelated.read_bytes() == b"left alone"
    check_results(sent, got, {"folder/clash.txt": top / "clash.txt",
                              "folder/a-new.txt": top / "a-new.txt"}, dest)


def test_cli_existing_file_exit_11_then_overwrite(processes: Processes, tmp_path: Path) -> None:
    """Both CLIs exit 11 when the target exists and leave it; --overwrite replaces it."""
    _, url = processes.start_relay()
    src = write(tmp_path / "src" / "report.txt", b"new report")
    dest = tmp_path / "out"
    existing = write(dest / "report.txt", b"old report")

    receiver = processes.start("receive", url, "cli-clash", "--out", str(dest))
    sender = processes.start("send", url, "cli-clash", str(src))
    r_out, r_err = receiver.communicate(timeout=PROCESS_TIMEOUT)
    s_out, s_err = sender.communicate(timeout=PROCESS_TIMEOUT)
    assert receiver.returncode == 11, (r_out, r_err)
    assert sender.returncode == 11, (s_out, s_err)
    assert "exists" in r_err and "exists" in s_err
    assert "Traceback" not in r_err + s_err
    assert existing.read_bytes() == b"old report"
    assert not leftovers(dest)

    receiver = processes.start("receive", url, "cli-clash-2", "--out", str(dest), "--overwrite")
    sender = processes.start("send", url, "cli-clash-2", str(src))
    r_out, r_err = receiver.communicate(timeout=PROCESS_TIMEOUT)
    s_out, s_err = sender.communicate(timeout=PROCESS_TIMEOUT)
    assert receiver.returncode == 0, (r_out, r_err)
    assert sender.returncode == 0, (s_out, s_err)
    assert existing.read_bytes() == b"new report"
    assert not leftovers(dest)


# --- several transfers, whole processes -------------------------------------------------


async def test_two_transfers_at_once_do_not_mix(relay: Relay, tmp_path: Path) -> None:
    """Two pairs with different codes on one relay at the same time each get their own data."""
    one = write(tmp_path / "src1" / "payload.bin", os.urandom(3 * MiB))
    two = write(tmp_path / "src2" / "payload.bin", os.urandom(2 * MiB + 123))
    write(tmp_path / "src2" / "only-two.txt", b"two")
    dest1, dest2 = tmp_path / "out1", tmp_path / "out2"
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        sent1, sent2, got1, got2 = await asyncio.gather(
            send(relay.url, "1-code-one", [one], progress="none", chunk_size=16 * KiB),
            send(relay.url, "2-code-two", [two, tmp_path / "src2" / "only-two.txt"],
                 progress="none", chunk_size=16 * KiB),
            receive(relay.url, "1-code-one", dest1, progress="none"),
            receive(relay.url, "2-code-two", dest2, progress="none"),
        )
    assert snapshot(dest1) == {"payload.bin": one.read_bytes()}
    assert snapshot(dest2) == {"payload.bin": two.read_bytes(), "only-two.txt": b"two"}
    check_results(sent1, got1, {"payload.bin": one}, dest1)
    check_results(sent2, got2, {"payload.bin": two,
                                "only-two.txt": tmp_path / "src2" / "only-two.txt"}, dest2)
    assert not leftovers(dest1) and not leftovers(dest2)


def test_cli_send_and_receive(processes: Processes, tmp_path: Path) -> None:
    """The CLIs copy ``dir/sub`` and a file given relative to the sender's cwd; both exit 0."""
    _, url = processes.start_relay()
    src = tmp_path / "src"
    write(src / "dir" / "sub" / "a.txt", b"a")
    write(src / "dir" / "sub" / "deeper" / "b.bin", os.urandom(100_000))
    (src / "dir" / "sub" / "empty").mkdir()
    write(src / "notes.txt", b"notes")
    dest = tmp_path / "out"
    receiver = processes.start("receive", url, "4-cli-code", "--out", str(dest))
    sender = processes.start("send", url, "4-cli-code", "dir/sub", "notes.txt", cwd=src)
    r_out, r_err = receiver.communicate(timeout=PROCESS_TIMEOUT)
    s_out, s_err = sender.communicate(timeout=PROCESS_TIMEOUT)
    assert receiver.returncode == 0, (r_out, r_err)
    assert sender.returncode == 0, (s_out, s_err)
    assert snapshot(dest) == {
        "sub": None,
        "sub/a.txt": b"a",
        "sub/deeper": None,
        "sub/deeper/b.bin": (src / "dir" / "sub" / "deeper" / "b.bin").read_bytes(),
        "sub/empty": None,
        "notes.txt": b"notes",
    }
    assert not leftovers(dest)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_cli_memory_stays_bounded_for_a_large_file(processes: Processes,
                                                   tmp_path: Path) -> None:
    """Sending a 512 MiB file keeps each peer process's peak RSS far below the file's size."""
    # Why this exists: both peers must stream (a chunk or two in flight, hashing on the way)
    # rather than hold a file, a manifest-sized buffer or an unbounded queue in memory.
    # Whole processes are measured (wait4's ru_maxrss), as only that sees the real peak.
    size = 512 * MiB
    src = tmp_path / "src" / "large.bin"
    src.parent.mkdir()
    with open(src, "wb") as f:
        f.truncate(size)  # sparse: cheap to make, read back as zeros
        for offset in (0, size // 2 - 12345, size - MiB):  # some real data in it too
            f.seek(offset)
            f.write(os.urandom(MiB))
    expected = digest_of(src)
    dest = tmp_path / "out"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    relay_proc = start_measured(processes, tmp_path / "relay.rss",
                                "run-relay-server", "127.0.0.1", str(port), "--no-tls")
    wait_for_port(port, relay_proc)
    receiver = start_measured(processes, tmp_path / "receiver.rss",
                              "receive", url, "5-big-code", "--out", str(dest))
    sender = start_measured(processes, tmp_path / "sender.rss", "send", url, "5-big-code", str(src))

    s_out, s_err = sender.communicate(timeout=PROCESS_TIMEOUT)
    r_out, r_err = receiver.communicate(timeout=PROCESS_TIMEOUT)
    relay_proc.terminate()  # the launcher passes SIGTERM on; the relay stops cleanly
    relay_proc.communicate(timeout=30)
    assert sender.returncode == 0, (s_out, s_err)
    assert receiver.returncode == 0, (r_out, r_err)
    assert relay_proc.returncode == 0
    s_rss = measured(tmp_path / "sender.rss")
    r_rss = measured(tmp_path / "receiver.rss")
    relay_rss = measured(tmp_path / "relay.rss")
    print(f"peak RSS: sender {s_rss} KiB, receiver {r_rss} KiB, relay {relay_rss} KiB")
    limit_kib = 120 * 1024
    assert s_rss < limit_kib, f"sender peak RSS {s_rss} KiB"
    assert r_rss < limit_kib, f"receiver peak RSS {r_rss} KiB"
    assert relay_rss < limit_kib, f"relay peak RSS {relay_rss} KiB"
    received = dest / "large.bin"
    assert received.stat().st_size == size
    assert digest_of(received) == expected
    assert not leftovers(dest)


def test_demo_command() -> None:
    """``p2p-copy demo --size 2`` runs the whole product on loopback and reports OK."""
    proc = run_cli("demo", "--size", "2", timeout=PROCESS_TIMEOUT)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "OK" in proc.stderr, proc.stderr
    assert "MISMATCH" not in proc.stderr
    # It shows what it stands for: the relay and the two commands of real use.
    assert "p2p-copy run-relay-server 127.0.0.1 " in proc.stderr
    assert re.search(r"p2p-copy send ws://127\.0\.0\.1:\d+ \d+-\S+ ", proc.stderr)
    assert re.search(r"p2p-copy receive ws://127\.0\.0\.1:\d+ \d+-\S+ --out ", proc.stderr)


@both_backends
async def test_long_names_sharing_their_first_bytes_keep_their_own_bytes(
        relay: Relay, tmp_path: Path) -> None:
    """Two long names alike in their first 200 characters, both in one data message: each
    gets its own partial file, so each final name holds its own bytes."""
    top = tmp_path / "src" / "long"
    prefix = "m" * 200
    one = write(top / f"{prefix}_1.csv", b"A" * 1000)
    two = write(top / f"{prefix}_2.csv", b"B" * 1000)
    dest = tmp_path / "out"
    await transfer(relay, [top], dest)
    assert (dest / "long" / one.name).read_bytes() == b"A" * 1000
    assert (dest / "long" / two.name).read_bytes() == b"B" * 1000


@both_backends
def test_existing_files_are_offered_only_against_an_announced_mtime(tmp_path: Path) -> None:
    """Without an announced mtime an existing file is never hashed into a resume offer: a
    hostile sender could otherwise learn the digest of any file it can name and size."""
    from p2p_copy.protocol.messages import FileEntry
    from p2p_copy.storage.destination import Destination

    path = write(tmp_path / "secret.txt", b"1234")
    st = path.stat()
    assert not Destination._same_stat(FileEntry("secret.txt", 4), st)
    assert Destination._same_stat(FileEntry("secret.txt", 4, mtime=st.st_mtime), st)
