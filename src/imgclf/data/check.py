"""``imgclf data check PATH``: what an image folder, a labels file or a Hugging Face data set holds, and what
is wrong with it.

Every file is read once: its bytes are hashed (SHA-256, for exact duplicates)
and fully decoded (so truncated files are caught, not only unreadable headers).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from imgclf.data.folder import DECODE_ERRORS, ImageFiles, ImageSource, decoding_pool, read_image_bytes, refuse_bombs

#: Largest / smallest class size above which a split counts as imbalanced.
IMBALANCE_RATIO = 1.5


@dataclass
class FolderReport:
    """Findings of :func:`check_images`.

    Attributes:
        root: The folder or labels file.
        class_names: Classes, from the training split.
        counts: ``{split: [images per class]}`` (decodable images only).
        sizes: ``{"WxH": count}`` of decodable images.
        modes: ``{Pillow mode: count}`` of decodable images.
        bad_files: ``(path, reason)`` of files that fail to decode.
        duplicates: Groups of ``(split, path)`` with identical bytes.
        notes: Layout warnings from the scan.
    """

    root: Path
    class_names: list[str]
    counts: dict[str, list[int]]
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[list[tuple[str, str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def imbalance(self, split: str) -> float:
        present = [c for c in self.counts[split] if c > 0]
        return max(present) / min(present) if present else 1.0

    def problems(self) -> list[str]:
        """One line per problem found (empty when the folder is clean)."""
        found = list(self.notes)
        if self.bad_files:
            found.append(f"{len(self.bad_files)} file(s) cannot be decoded")
        across = [g for g in self.duplicates if len({split for split, _ in g}) > 1]
        if across:
            found.append(f"{len(across)} group(s) of identical files appear in more than one split (leakage)")
        if len(self.duplicates) > len(across):
            found.append(f"{len(self.duplicates) - len(across)} group(s) of identical files within a split")
        for split in self.counts:
            ratio = self.imbalance(split)
            if ratio > IMBALANCE_RATIO:
                found.append(f"the {split} split is imbalanced: largest/smallest class = {ratio:.1f} "
                             "(consider --balance weighted-loss or sampler)")
        return found

    def render(self) -> str:
        """The report as text."""
        splits = list(self.counts)
        width = max(len(name) for name in self.class_names)
        lines = [f"{self.root}: {len(self.class_names)} classes, "
                 f"{sum(sum(c) for c in self.counts.values())} decodable images", ""]
        lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits))
        for k, name in enumerate(self.class_names):
            lines.append(f"  {name:<{width}}  " + "  ".join(f"{self.counts[s][k]:>7}" for s in splits))
        lines.append("")
        lines.append("sizes: " + ", ".join(f"{size} ({n})" for size, n in self.sizes.most_common(8))
                     + (f", and {len(self.sizes) - 8} more" if len(self.sizes) > 8 else ""))
        lines.append("modes: " + ", ".join(f"{mode} ({n})" for mode, n in self.modes.most_common()))
        if self.bad_files:
            lines.append(f"bad files ({len(self.bad_files)}):")
            lines += [f"  {path}: {reason}" for path, reason in self.bad_files]
        if self.duplicates:
            lines.append(f"exact duplicates ({len(self.duplicates)} groups):")
            lines += ["  " + " == ".join(f"{split}:{path}" for split, path in group) for group in self.duplicates]
        problems = self.problems()
        lines.append("")
        lines += [f"problem: {p}" for p in problems] if problems else ["no problems found"]
        return "\n".join(lines)


def _inspect(path: ImageSource) -> tuple[str, tuple[int, int] | None, str | None, str | None]:
    """``(sha256, (W, H), mode, error)`` of one file or stored image."""
    try:
        data = read_image_bytes(path)
    except OSError as error:  # unreadable, a dangling link, a link loop, a stored row without an image
        return "", None, None, f"cannot be read: {error.strerror or error}"
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, None, None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            refuse_bombs(image)
            mode = image.mode
            upright = ImageOps.exif_transpose(image)
            upright.load()
            return digest, upright.size, mode, None
    except DECODE_ERRORS as error:
        return digest, None, None, f"{type(error).__name__}: {error}"


def check_images(listing: ImageFiles) -> FolderReport:
    """Read every listed file: classes and counts, sizes, modes, bad files (missing ones included),
    exact duplicates.

    Args:
        listing: From :func:`imgclf.data.loading.scan_images` (which raises UsageError for an
            unusable layout).
    """
    root, class_names, files, notes = listing.source, listing.class_names, listing.files, listing.notes
    report = FolderReport(root, class_names, {s: [0] * len(class_names) for s in files}, notes=notes)
    by_hash: dict[str, list[tuple[str, str]]] = defaultdict(list)
    jobs = [(split, path, label) for split, entries in files.items() for path, label in entries]
    with decoding_pool() as pool:
        results = list(pool.map(lambda job: _inspect(job[1]), jobs))
    for (split, path, label), (digest, size, mode, error) in zip(jobs, results, strict=True):
        if error or size is None:
            report.bad_files.append((str(path), error or "no size"))
            continue
        if digest:
            by_hash[digest].append((split, str(path)))
        report.counts[split][label] += 1
        report.sizes[f"{size[0]}x{size[1]}"] += 1
        report.modes[mode] += 1
    report.duplicates = [group for group in by_hash.values() if len(group) > 1]
    report.bad_files.sort()
    return report
