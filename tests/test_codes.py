"""Codes: room and secret, the room hash, generated codes and their collisions, on the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy.display.progress import NoProgress
from p2p_copy.errors import UsageError
from p2p_copy.protocol import codes
from p2p_copy.testing import running_relay

from .conftest import Processes, run_cli
from .thirdparty_peer import whole_code_hash_hex

pytestmark = pytest.mark.timeout(90)

GENERATED = re.compile(r"[1-9][0-9]*(-[a-z]+){3}")


class CodeWatch(NoProgress):
    """A display that records the codes the sender shows, and nothing else."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def showing_code(self, server: str, code: str) -> None:
        self.shown.append(code)


def test_room_is_the_part_before_the_first_dash() -> None:
    """``7-crossover-clockwork-puma`` pairs in room 7; the rest is the secret."""
    assert codes.split_code("7-crossover-clockwork-puma") == ("7", "crossover-clockwork-puma")
    assert codes.split_code("lab-42-x") == ("lab", "42-x")


@pytest.mark.parametrize("code", ["", "nodash", "-secret", "room-", "auto"])
def test_codes_without_room_or_secret_are_usage_errors(code: str) -> None:
    """A code needs both parts; the error says what a code looks like and how to get one."""
    with pytest.raises(UsageError, match="ROOM-SECRET|empty"):
        codes.room_hash_hex(code)


def test_room_hash_covers_the_room_only_and_is_domain_separated() -> None:
    """Codes of one room share the hash, which is not a plain SHA-256 of the room or code."""
    room = codes.room_hash_hex("7-crossover-clockwork-puma")
    assert room == codes.room_hash_hex("7-anything-else")
    assert room != codes.room_hash_hex("8-crossover-clockwork-puma")
    assert room != hashlib.sha256(b"7").hexdigest()
    assert room != whole_code_hash_hex("7-crossover-clockwork-puma")
    assert room == hashlib.sha256(b"p2p-copy room v2\x00" + b"7").hexdigest()


def test_generated_codes_draw_three_words_from_512() -> None:
    """Generated codes are room-word-word-word with the PGP list's 512 distinct words."""
    words = codes.wordlist()
    assert len(words) == len(set(words)) == 512
    assert all(w.isalpha() and w.islower() for w in words)
    seen = {codes.generate_code() for _ in range(200)}
    assert len(seen) == 200
    for code in seen:
        assert GENERATED.fullmatch(code), code
        room, secret = codes.split_code(code)
        assert 1 <= int(room) <= codes.ROOM_RANGES[0]
        assert all(w in words for w in secret.split("-"))


def test_later_attempts_widen_the_room_range() -> None:
    """After collisions the room numbers come from a wider range."""
    rooms = {int(codes.split_code(codes.generate_code(3))[0]) for _ in range(50)}
    assert max(rooms) > codes.ROOM_RANGES[0]


async def test_generated_code_is_shown_once_the_room_is_ours(tmp_path: Path) -> None:
    """send(code=None) shows the code after the relay's ``waiting``, and returns it."""
    src = tmp_path / "a.txt"
    src.write_text("generated")
    watch = CodeWatch()
    shown = watch.shown
    async with running_relay() as relay:
        sending = asyncio.ensure_future(p2p_copy.send(relay.url, None, [src], progress=watch))
        async with asyncio.timeout(10):
            while not shown:
                await asyncio.sleep(0.01)
        assert relay.stats.waiting == 1  # shown only once the relay confirmed the room
        got = await p2p_copy.receive(relay.url, shown[0], tmp_path / "out", progress="none")
        sent = await sending
    assert GENERATED.fullmatch(shown[0])
    assert sent.code == got.code == shown[0]
    assert (tmp_path / "out" / "a.txt").read_text() == "generated"


async def test_taken_room_gets_a_new_generated_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generated code whose room is taken (even by a receiver) is replaced silently."""
    src = tmp_path / "a.txt"
    src.write_text("x")
    planned = iter(["5-alpha-bravo-charlie", "6-delta-echo-foxtrot"])
    monkeypatch.setattr("p2p_copy.peer.sending.generate_code", lambda attempt=0: next(planned))
    async with running_relay() as relay:
        # A stranger waits in room 5 as a receiver: a fresh code must not meet it.
        stranger = asyncio.ensure_future(p2p_copy.receive(
            relay.url, "5-someone-else", tmp_path / "stranger", progress="none",
            wait_timeout=20))
        async with asyncio.timeout(10):
            while relay.stats.waiting < 1:
                await asyncio.sleep(0.01)
        watch = CodeWatch()
        shown = watch.shown
        sending = asyncio.ensure_future(p2p_copy.send(relay.url, None, [src], progress=watch))
        async with asyncio.timeout(10):
            while not shown:
                await asyncio.sleep(0.01)
        assert shown == ["6-delta-echo-foxtrot"]  # the taken code was never shown
        got = await p2p_copy.receive(relay.url, shown[0], tmp_path / "out", progress="none")
        sent = await sending
        stranger.cancel()
        await asyncio.gather(stranger, return_exceptions=True)
    assert sent.code == "6-delta-echo-foxtrot" == got.code
    assert relay.stats.rejections["code_in_use"] == 1
    assert not (tmp_path / "stranger").exists() or not any((tmp_path / "stranger").iterdir())


@pytest.mark.slow
def test_cli_auto_prints_the_code_even_without_a_terminal(
        processes: Processes, tmp_path: Path) -> None:
    """``send SERVER auto FILE`` prints the code on stderr; the receiver uses it; both exit 0."""
    _, url = processes.start_relay()
    src = tmp_path / "hello.txt"
    src.write_text("hi")
    sender = processes.start("send", url, "auto", str(src))
    assert sender.stderr is not None
    line = ""
    deadline = time.monotonic() + 20
    while not line.startswith("Code: ") and time.monotonic() < deadline:
        line = sender.stderr.readline()
    code = line.removeprefix("Code: ").strip()
    assert GENERATED.fullmatch(code), line
    received = run_cli("receive", url, code, "--out", str(tmp_path / "out"), timeout=30)
    assert received.returncode == 0, received.stderr
    assert sender.wait(timeout=30) == 0
    assert (tmp_path / "out" / "hello.txt").read_text() == "hi"


def test_cli_json_reports_the_generated_code(processes: Processes, tmp_path: Path) -> None:
    """With --json the sender's first events include {"event": "code", "code": ...}."""
    _, url = processes.start_relay()
    src = tmp_path / "hello.txt"
    src.write_text("hi")
    sender = processes.start("send", url, "auto", str(src), "--json")
    assert sender.stdout is not None
    event: dict[str, str] = {}
    while event.get("event") != "code":
        event = json.loads(sender.stdout.readline())
    received = run_cli("receive", url, event["code"], "--out", str(tmp_path / "out"),
                       timeout=30)
    assert received.returncode == 0, received.stderr
    assert sender.wait(timeout=30) == 0


@pytest.mark.slow
def test_cli_wrong_secret_exits_14_on_both_sides(processes: Processes, tmp_path: Path) -> None:
    """Same room, different secret: both sides exit 14 at once with one line each."""
    _, url = processes.start_relay()
    src = tmp_path / "a.txt"
    src.write_text("x")
    receiver = processes.start("receive", url, "9-right-words", "--out", str(tmp_path / "out"))
    time.sleep(0.3)
    sender = run_cli("send", url, "9-wrong-words", str(src), timeout=30)
    r_out, r_err = receiver.communicate(timeout=30)
    assert sender.returncode == 14, sender.stderr
    assert receiver.returncode == 14, r_err
    assert len(sender.stderr.strip().splitlines()) == 1
    assert "code" in r_err.lower()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_cli_encryption_mismatch_exits_15(processes: Processes, tmp_path: Path) -> None:
    """--no-encrypt on one side only: both sides exit 15 naming the option; the plain side
    was warned."""
    _, url = processes.start_relay()
    src = tmp_path / "a.txt"
    src.write_text("x")
    receiver = processes.start("receive", url, "9-same-code", "--out", str(tmp_path / "out"),
                               "--no-encrypt")
    time.sleep(0.3)
    sender = run_cli("send", url, "9-same-code", str(src), timeout=30)
    _, r_err = receiver.communicate(timeout=30)
    assert sender.returncode == 15 and receiver.returncode == 15, (sender.stderr, r_err)
    assert "--no-encrypt" in sender.stderr and "--no-encrypt" in r_err
    assert "warning: --no-encrypt" in r_err  # the plain side is told what it gives up


@pytest.mark.slow
def test_cli_receive_policy_exits_19(processes: Processes, tmp_path: Path) -> None:
    """--max-files refuses a larger offer before any byte: exit 19, the sender is told."""
    _, url = processes.start_relay()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text(str(i))
    receiver = processes.start("receive", url, "9-policy-code", "--out", str(tmp_path / "out"),
                               "--max-files", "2")
    time.sleep(0.3)
    sender = run_cli("send", url, "9-policy-code", str(src), timeout=30)
    _, r_err = receiver.communicate(timeout=30)
    assert receiver.returncode == 19, r_err
    assert "--max-files" in r_err
    assert sender.returncode == 19, sender.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- normalisation and weak codes (issue 19) -----------------------------------------


@pytest.mark.parametrize("typed", ["7-Crossover-Clockwork-Puma", "  7-crossover-clockwork-puma\n",
                                   "7-CROSSOVER-clockwork-puma "])
def test_case_and_surrounding_spaces_do_not_change_room_or_key(typed: str) -> None:
    """A code typed with capitals or spaces gives the same room hash and SPAKE2 key as its
    normalised form, which is what 0.6.0 peers use when the code is typed as shown."""
    from .test_secure import confirm, exchange

    shown = "7-crossover-clockwork-puma"
    assert codes.room_hash_hex(typed) == codes.room_hash_hex(shown)
    sender, receiver = exchange(typed, shown)
    sender.check(confirm(receiver))  # WrongCodeError if the keys differ
    receiver.check(confirm(sender))


def test_inner_spaces_and_other_letters_still_differ() -> None:
    """Only case and the ends are normalised: other differences are other rooms."""
    assert codes.room_hash_hex("7 a-b") != codes.room_hash_hex("7a-b")
    assert codes.room_hash_hex("ä-b") != codes.room_hash_hex("a-b")


@pytest.mark.parametrize("code", ["1-a", "9-test", "lab-bob", "7-1234"])
def test_weak_chosen_codes_get_a_warning(code: str) -> None:
    """A short chosen secret is warned about; the warning says what to do."""
    warning = codes.weak_code_warning(code)
    assert warning is not None and "generated" in warning


@pytest.mark.parametrize("code", ["7-crossover-clockwork-aftermath", "lab-correct-horse-battery",
                                  "9-wrong-words"])
def test_strong_or_generated_codes_get_none(code: str) -> None:
    """Three words of the list, or a long enough phrase, pass quietly; so do generated codes."""
    assert codes.weak_code_warning(code) is None
    assert codes.weak_code_warning(codes.generate_code()) is None


def test_tab_completes_the_word_after_the_last_dash() -> None:
    """The prompt's completer offers words of the list for the part being typed."""
    from p2p_copy.cli.prompt import completer

    complete = completer(codes.wordlist())
    assert complete("7-crossover-clockw", 0) == "7-crossover-clockwork"
    assert complete("7-crossover-clockw", 1) is None
    assert complete("7", 0) is None  # the room number: nothing to complete


async def test_a_chosen_code_is_shown_as_both_sides_use_it(tmp_path: Path) -> None:
    """A chosen code with capitals and spaces is shown and returned normalised, so that a
    peer older than 0.6 (which uses the code as typed) pairs when its user types it as
    shown (review of issue 19)."""
    src = tmp_path / "a.txt"
    src.write_text("x")
    shown: list[str] = []

    class Shows(NoProgress):
        def showing_code(self, server: str, code: str) -> None:
            shown.append(code)

    async with running_relay() as relay, asyncio.timeout(30):
        sent, _ = await asyncio.gather(
            p2p_copy.send(relay.url, " 7-Blue-Harbor-Kite ", [src], progress=Shows()),
            p2p_copy.receive(relay.url, "7-blue-harbor-kite", tmp_path / "out",
                             progress="none"))
    assert shown == [sent.code] == ["7-blue-harbor-kite"]
