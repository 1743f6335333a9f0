"""Pairing images of two folders by file name: the one rule every command and dataset uses.

An image is a file directly in the folder whose extension (any case) is in
``metaloss.data.io.IMAGE_EXTENSIONS``; hidden files (``.name``) are ignored.  Two images pair when
their names without extension are equal (``ir/0001.png`` with ``vi/0001.jpg``); two images of one
stem in one folder are ambiguous and refused.  What to do with an image without a partner is the
caller's choice: :class:`Pairing` lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metaloss.data.io import IMAGE_EXTENSIONS

__all__ = ["Pairing", "PairingError", "images_by_stem", "list_images", "pair_images"]


class PairingError(ValueError):
    """A folder is missing or holds two images of one stem; the message names them."""


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise PairingError(f"{path}: no such folder")
    return sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def images_by_stem(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The image files of ``folder`` by file name without extension."""
    found: dict[str, Path] = {}
    clashes: list[str] = []
    for p in list_images(folder):
        if p.stem in found:
            clashes.append(f"{found[p.stem].name} and {p.name}")
        found.setdefault(p.stem, p)
    if clashes:
        raise PairingError(f"{folder}: several images with one name: {'; '.join(clashes)}")
    return found


@dataclass(frozen=True)
class Pairing:
    """The images of two folders by stem (``a``, ``b``), and what pairs and what does not."""

    a: dict[str, Path]
    b: dict[str, Path]

    @property
    def pairs(self) -> list[tuple[str, Path, Path]]:
        """(stem, image in a, image in b) for every stem in both folders, sorted by stem."""
        return [(s, self.a[s], self.b[s]) for s in sorted(self.a.keys() & self.b.keys())]

    @property
    def only_a(self) -> list[Path]:
        """Images of the first folder without a partner, sorted by stem."""
        return [self.a[s] for s in sorted(self.a.keys() - self.b.keys())]

    @property
    def only_b(self) -> list[Path]:
        """Images of the second folder without a partner, sorted by stem."""
        return [self.b[s] for s in sorted(self.b.keys() - self.a.keys())]


def pair_images(a_dir: str | os.PathLike[str], b_dir: str | os.PathLike[str]) -> Pairing:
    """The images of ``a_dir`` and ``b_dir`` paired by stem (:class:`PairingError` for a missing
    folder or two images of one stem in a folder)."""
    return Pairing(images_by_stem(a_dir), images_by_stem(b_dir))
