"""What a finished transfer reports back to its caller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .messages import Role

__all__ = ["FileResult", "TransferResult"]


@dataclass(frozen=True)
class FileResult:
    """One file that arrived (or left) intact: its manifest path, size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TransferResult:
    """The outcome of a whole send or receive."""

    role: Role
    files: tuple[FileResult, ...]
    bytes: int
    duration: float
    #: The destination folder (receiver) or None (sender).
    destination: Path | None = None
    #: The code the transfer used (the generated one, if the sender asked for one).
    code: str | None = None

    @property
    def rate(self) -> float:
        """Average bytes per second over the whole transfer."""
        return self.bytes / self.duration if self.duration > 0 else 0.0
