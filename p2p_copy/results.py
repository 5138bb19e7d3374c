"""What a finished transfer reports back to its caller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .protocol.digests import SHA256
from .protocol.messages import Role

__all__ = ["FileResult", "TransferResult"]


@dataclass(frozen=True)
class FileResult:
    """One file that arrived (or left) intact: its manifest path, size and digest.

    ``digest`` is in ``algorithm``: "blake3" when both peers have BLAKE3 (the ``blake3``
    package), else "sha256" (digests.py); ``sha256`` gives it only in the second case.
    """

    path: str
    size: int
    digest: str
    algorithm: str = SHA256

    @property
    def sha256(self) -> str | None:
        """The file's SHA-256, if that is what the transfer checked it with, else None."""
        return self.digest if self.algorithm == SHA256 else None


#: How many files a TransferResult's repr lists before it says how many more there are.
REPR_FILES = 3


@dataclass(frozen=True, repr=False)
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

    def __repr__(self) -> str:
        """The dataclass repr with at most REPR_FILES files listed.

        A notebook shows this after ``await receive(...)``, and asyncio formats it when a
        finished task's repr is asked for (asyncio.run does, on the way out): listing
        10,000 files would cost ~25 ms and a screenful, and tell nothing.
        """
        shown = [repr(f) for f in self.files[:REPR_FILES]]
        if len(self.files) > REPR_FILES:
            shown.append(f"... {len(self.files) - REPR_FILES:,} more")
        files = "(" + ", ".join(shown) + ("," if len(self.files) == 1 else "") + ")"
        return (f"TransferResult(role={self.role!r}, files={files}, bytes={self.bytes!r}, "
                f"duration={self.duration!r}, destination={self.destination!r}, "
                f"code={self.code!r})")
