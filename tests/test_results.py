"""TransferResult's repr stays short however many files a transfer had."""

from __future__ import annotations

from pathlib import Path

from p2p_copy.results import REPR_FILES, FileResult, TransferResult


def _files(n: int) -> tuple[FileResult, ...]:
    return tuple(FileResult(f"dir/f{i}", i, f"{i:064x}") for i in range(n))


def test_repr_lists_a_few_files_and_counts_the_rest() -> None:
    result = TransferResult("receiver", _files(10_000), 123, 1.5, Path("/tmp/x"), "7-a-b")
    text = repr(result)
    assert len(text) < 1_000
    assert text.count("FileResult(") == REPR_FILES
    assert "... 9,997 more" in text
    assert "role='receiver'" in text and "code='7-a-b'" in text


def test_repr_of_a_few_files_is_the_dataclass_repr() -> None:
    for n in range(REPR_FILES + 1):
        result = TransferResult("sender", _files(n), 10, 2.0, None, None)
        assert eval(repr(result)) == result  # noqa: S307 - our own repr, as a dataclass's
