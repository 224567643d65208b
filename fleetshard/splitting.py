"""Splitting inside a file by test id (pure): a file longer than its share of the makespan becomes parts.

Only where the runner says a file's tests are independent (Playwright's ``fullyParallel``) or the user
opts in (``suite.split_files: true``; for pytest, module- and class-scoped fixtures then run once per part).
A part is planned like a file: its item name is ``FILE#part<i>/<k>`` and it carries its test ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .model import Shard
from .runners import Listing

PART = "#part"


@dataclass(frozen=True)
class Split:
    """Planning items (files and parts), their weights, and what each part holds."""

    items: list[str]
    weights: dict[str, float]
    parts: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)   # item -> (file, ids)
    why: dict[str, str] = field(default_factory=dict)                             # file -> reason

    def explain(self) -> str:
        return "; ".join(f"{f} {why}" for f, why in self.why.items())


def split_files(files: Sequence[str], weights: Mapping[str, float], listing: Listing | None, *, slots: int,
                splittable: bool, test_seconds: Mapping[str, float] | None = None) -> Split:
    """Cut each file heavier than ``total / slots`` into parts of about that weight (at most one per slot
    and per test), its tests balanced by ``test_seconds`` (history) or equally."""
    plain = Split(list(files), dict(weights))
    if not splittable or listing is None or slots < 2 or not files:
        return plain
    total = sum(weights.get(f, 0.0) for f in files)
    share = total / slots
    if share <= 0:
        return plain
    by_file = listing.by_file()
    items: list[str] = []
    out_weights: dict[str, float] = {}
    parts: dict[str, tuple[str, tuple[str, ...]]] = {}
    why: dict[str, str] = {}
    for f in files:
        ids = [t.id for t in by_file.get(f, [])]
        w = weights.get(f, 0.0)
        k = min(math.ceil(w / share - 1e-9), len(ids), slots) if w > share else 1
        if k < 2:
            items.append(f)
            out_weights[f] = w
            continue
        known = test_seconds or {}
        per = {i: known.get(i, 0.0) for i in ids}
        if not any(per.values()):
            per = dict.fromkeys(ids, 1.0)
        bins: list[list[str]] = [[] for _ in range(k)]
        load = [0.0] * k
        for test_id in sorted(ids, key=lambda i: -per[i]):            # LPT over the parts
            j = load.index(min(load))
            bins[j].append(test_id)
            load[j] += per[test_id]
        order = {i: n for n, i in enumerate(ids)}
        scale = w / (sum(load) or 1.0)
        for n, chunk in enumerate(bins, 1):
            item = f"{f}{PART}{n}/{k}"
            items.append(item)
            out_weights[item] = load[n - 1] * scale
            parts[item] = (f, tuple(sorted(chunk, key=order.__getitem__)))
        why[f] = f"split into {k} parts (its {len(ids)} tests are longer than a slot's share of the run)"
    return Split(items, out_weights, parts, why)


def join_parts(shards: Sequence[Shard], split: Split, listing: Listing | None) -> list[Shard]:
    """Shards planned over parts, back to real files: a part's file, with its test ids in ``tests``."""
    if not split.parts:
        return list(shards)
    by_file = listing.by_file() if listing is not None else {}
    out = []
    for shard in shards:
        if not any(f in split.parts for f in shard.files):
            out.append(shard)
            continue
        files: dict[str, None] = {}
        ids: list[str] = []
        for item in shard.files:
            if item in split.parts:
                file, part_ids = split.parts[item]
                files.setdefault(file, None)
                ids.extend(part_ids)
            else:
                files.setdefault(item, None)
                ids.extend([t.id for t in by_file.get(item, [])] or [item])
        out.append(replace(shard, files=tuple(files), tests=tuple(ids)))
    return out
