"""Every kind of transfer exists awaited, blocking and in the background, with one set of
options that cannot drift (issue 18, point 3).

The twins are made from peer/api.py's ENTRY_POINTS; these tests enumerate the matrix, the
options each entry point takes, and the command line's flags, so that a new kind, option
or flag that is not wired everywhere fails here instead of being silently ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any

import pytest

import p2p_copy
from p2p_copy import Options, UsageError
from p2p_copy.cli.commands import build_parser
from p2p_copy.peer import api
from p2p_copy.peer.options import APPLIES, OptionFields, resolve
from p2p_copy.relay import Relay

KINDS = sorted(api.ENTRY_POINTS)
def _twins(entry: str) -> tuple[str, str]:
    return f"{entry}_blocking", f"start_{entry}"


@pytest.mark.parametrize("entry", KINDS)
def test_each_kind_exists_awaited_blocking_and_in_the_background(entry: str) -> None:
    """send/receive of files, streams, texts and objects: three forms each, all public,
    all with the coroutine's own signature."""
    coroutine = getattr(p2p_copy, entry)
    assert inspect.iscoroutinefunction(coroutine)
    for name in (entry, *_twins(entry)):
        assert name in p2p_copy.__all__, name
        assert inspect.signature(getattr(p2p_copy, name)) == inspect.signature(coroutine), name


def test_the_table_covers_every_public_coroutine() -> None:
    """No public coroutine lives outside ENTRY_POINTS (where it would get no twins)."""
    public = {n for n in p2p_copy.__all__ if inspect.iscoroutinefunction(getattr(p2p_copy, n))}
    assert public == set(KINDS)


def test_the_keywords_are_the_fields_of_options() -> None:
    """OptionFields (the typed keywords) and Options (the object) name the same fields."""
    assert set(OptionFields.__annotations__) == {f.name for f in dataclasses.fields(Options)}
    for entry in KINDS:
        assert APPLIES[entry] <= set(OptionFields.__annotations__)  # type: ignore[index]


@pytest.mark.parametrize("entry", KINDS)
def test_an_option_of_the_other_side_is_refused_not_ignored(entry: str) -> None:
    """A keyword that an entry point does not use is a UsageError that says so."""
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for name in sorted(set(fields) - APPLIES[entry]):  # type: ignore[index]
        value = fields[name].default
        with pytest.raises(UsageError, match="other side"):
            resolve(entry, None, {name: value})  # type: ignore[arg-type]
    for name in APPLIES[entry]:  # type: ignore[index]
        resolve(entry, None, {name: fields[name].default})  # type: ignore[arg-type]


def test_an_options_object_and_keywords_combine() -> None:
    """Keywords override the object's fields; the object is not changed."""
    shared = Options(cafile="ca.pem", overwrite=True, compress="never")
    sending = resolve("send_text", shared, {"compress": "always"})
    assert (sending.cafile, sending.compress, shared.compress) == ("ca.pem", "always", "never")
    with pytest.raises(UsageError):
        Options(chunk_size=10)


#: Flags of ``p2p-copy send`` and ``receive`` that are not options of a transfer: what to
#: send, where it goes, how the command itself shows and asks.
COMMAND_ONLY = {"command", "server", "code", "files", "text", "name", "out", "stdout", "json",
                "progress", "yes", "qr", "serve"}
#: Flags that become a field of Options by another name or by building a value.
FLAG_TO_FIELD = {"no_encrypt": "encrypt", "max_files": "policy", "max_bytes": "policy",
                 "max_depth": "policy", "max_entries": "policy", "allow_hidden": "policy",
                 "max_text": "max_memory"}
#: Entry points each command may call with the one Options object it builds, and whether
#: a flag must reach all of them (a send's flags hold whatever is sent) or one (a receive
#: takes what arrives: --max-files for files, --max-text for a text).
CALLS = {"send": (all, ("send", "send_stream", "send_text")),
         "receive": (any, ("receive", "receive_stream", "receive_text"))}


@pytest.mark.parametrize("command", sorted(CALLS))
def test_every_flag_reaches_the_entry_points_the_command_calls(command: str) -> None:
    """Each flag of the command is an option of the entry points the command may call
    (``send --compress never --text ...`` once ignored --compress)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    actions = sub.choices[command]._actions  # type: ignore[union-attr,index]
    dests = {a.dest for a in actions if a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(Options)}
    for dest in dests - COMMAND_ONLY:
        field = FLAG_TO_FIELD.get(dest, dest)
        assert field in fields, f"--{dest}: not an Options field nor listed as command-only"
        quantifier, entries = CALLS[command]
        assert quantifier(field in APPLIES[e] for e in entries), (  # type: ignore[index]
            f"{command} --{dest} would not reach {entries}")


async def test_a_text_is_compressed_when_asked(relay: Relay) -> None:
    """send_text(compress="always") compresses: the relay forwards far fewer bytes than
    the text has (the drift that ignored --compress for --text is gone)."""
    text = "the same line again\n" * 50_000  # 1 MB, very compressible
    before = relay.stats.bytes_forwarded
    code = "7-compress-the-text"
    got: list[Any] = []

    async def receiving() -> None:
        got.append(await p2p_copy.receive_text(relay.url, code, progress="none",
                                               wait_timeout=20))

    async with asyncio.timeout(60):
        await asyncio.gather(receiving(), p2p_copy.send_text(
            relay.url, code, text, progress="none", wait_timeout=20, compress="always"))
    assert got == [text]
    assert relay.stats.bytes_forwarded - before < len(text) // 5
