"""Keep likely same-patient images in one split when patient ids are unknown (`prepare --group-similar`).

The evidence is the leak score of `privacy.leaks` between each image and its NEIGHBOURS best partners:
- pairs scoring at or above the threshold are JOINED: their components (union-find) always end in one split;
- pairs scoring less, but within `margin` of it, are LINKED with the weight exp((score - threshold) /
  LINK_SCALE): the placement keeps them in one split where the split shares allow.

Placement starts from the prepared split. Each joined component that spans splits moves whole into one of the
splits holding it (`move_joined_groups`). A local search then lowers the total weight of the links the split
cuts (`place_linked`): a component moves to the split it is most linked to when every share stays within
PLACEMENT_TOLERANCE of the request; otherwise it swaps places with a component that wants to move the other
way (where the shares allow), or with unlinked images of its total size, which lose nothing by moving. The
cut falls with every step, so the search ends, and joined components are never divided.

Why links and not just a lower threshold: joining weak pairs chains unrelated images into groups that no split
can hold, while a link the shares cannot honour is simply cut. On held-out NIH patients (docs/privacy.md)
joining at the threshold calibrated for precision 0.7 and linking 0.1 below it removed 45-50% of the patients
found in two splits; joining alone at that threshold removed 28-35% of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.data.splits import SPLIT_NAMES
from meddenoise.errors import DataError
from meddenoise.privacy.leaks import NEIGHBOURS, LeakScorer, PairScores, score_pairs, split_fractions
from meddenoise.privacy.matcher import Matcher
from meddenoise.privacy.reid_embedding import matcher_info

MAX_FRACTION_SHIFT = 0.05  # --group-similar refuses when the joined groups move a split's share further
LINK_MARGIN = 0.1  # pairs scoring this far below the threshold are linked (kept together where shares allow)
LINK_SCALE = 0.02  # a link's weight falls e-fold every LINK_SCALE below the threshold
PLACEMENT_TOLERANCE = 0.01  # links move images only while every share stays this close to the request
MAX_PASSES = 50  # of the local search; it stops earlier as soon as a pass changes nothing
TRADE_CANDIDATES = 50  # opposite movers tried per component before unlinked images make room
GAIN_FLOOR = 1e-9  # smaller drops of the cut are rounding, not gains


def _root(parent: np.ndarray, i: int) -> int:
    """Union-find: the root of row i, halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def similar_groups(pairs: PairScores, threshold: float) -> np.ndarray:
    """Component label (N,) of every image when an image and one of its NEIGHBOURS best partners scoring
    >= `threshold` are joined (union-find)."""
    n = pairs.count
    parent = np.arange(n)
    for i in range(n):
        for j, score in zip(pairs.partners[i][:NEIGHBOURS].tolist(), pairs.scores[i][:NEIGHBOURS]):
            if score >= threshold:
                parent[_root(parent, i)] = _root(parent, j)
    return np.array([_root(parent, i) for i in range(n)])


def with_groups(labels: np.ndarray, groups: list[str]) -> np.ndarray:
    """`labels` with the components that share a group merged (union-find): the split's own groups (known
    patients) must stay in one split as the joined images must. A label is a member row of its component."""
    parent = np.asarray(labels).copy()
    first: dict[str, int] = {}
    for i, group in enumerate(groups):
        if group in first:
            a, b = _root(parent, first[group]), _root(parent, i)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first[group] = i
    return np.array([_root(parent, i) for i in range(len(parent))])


def unit_groups(labels: np.ndarray, groups: list[str]) -> dict[int, str]:
    """{unit label: the group its images take}: the group most of its images already share (a known
    patient's, not an id-less image's), ties to the earliest row."""
    counts: dict[int, dict[str, int]] = {}
    for label, group in zip(labels.tolist(), groups):
        mine = counts.setdefault(int(label), {})
        mine[group] = mine.get(group, 0) + 1
    return {label: max(mine, key=lambda g: mine[g]) for label, mine in counts.items()}


def link_weights(pairs: PairScores, labels: np.ndarray, threshold: float, margin: float) -> dict:
    """{(component a, component b): weight}, a < b by label, summed over the pairs of their images that score
    in [threshold - margin, threshold) among each image's NEIGHBOURS best partners (a pair that both images
    list counts twice: it is stronger evidence)."""
    weights: dict[tuple[int, int], float] = {}
    if margin <= 0:
        return weights
    for i in range(pairs.count):
        for j, score in zip(pairs.partners[i][:NEIGHBOURS].tolist(), pairs.scores[i][:NEIGHBOURS]):
            a, b = int(labels[i]), int(labels[j])
            if a == b or not threshold - margin <= score < threshold:
                continue
            key = (min(a, b), max(a, b))
            weights[key] = weights.get(key, 0.0) + float(np.exp((score - threshold) / LINK_SCALE))
    return weights


def move_joined_groups(splits: np.ndarray, labels: np.ndarray, fractions) -> tuple[np.ndarray, int, int]:
    """Each joined component (label shared by several images) that spans splits moves whole into one of the
    splits already holding some of its images; every other image keeps its split. Returns the new splits,
    the images moved and the components moved.

    The split chosen is the one that leaves the image counts closest to `fractions` (sum of squared
    misses), ties going to the split holding most of the component. Always taking the majority split
    would drift the shares: a component spread over train and test mostly has more images in train, so
    train would keep growing."""
    names = SPLIT_NAMES
    new = np.asarray(splits).astype(str).copy()
    targets = np.array([float(f) for f in fractions]) * len(new)
    counts = np.array([np.sum(new == name) for name in names], dtype=float)
    sizes = np.bincount(labels, minlength=len(new))
    # the largest components first: they move the shares most, so the small ones can even them out after
    joined = sorted(np.flatnonzero(sizes > 1).tolist(), key=lambda label: (-sizes[label], label))
    moved_images = moved_groups = 0
    for label in joined:
        members = np.flatnonzero(labels == label)
        held = np.array([np.sum(new[members] == name) for name in names], dtype=float)
        if np.count_nonzero(held) < 2:
            continue
        rest = counts - held
        costs = []
        for split in np.flatnonzero(held > 0).tolist():
            after = rest.copy()
            after[split] += len(members)
            costs.append((float(np.sum((after - targets) ** 2)), -held[split], split))
        chosen = min(costs)[2]
        counts = rest
        counts[chosen] += len(members)
        moved_images += int(len(members) - held[chosen])
        moved_groups += 1
        new[members] = names[chosen]
    return new, moved_images, moved_groups


def place_linked(
    splits: np.ndarray,
    labels: np.ndarray,
    weights: dict,
    fractions,
    tolerance: float = PLACEMENT_TOLERANCE,
) -> np.ndarray:
    """New splits that cut less link weight than `splits` (module docstring); `splits` must already keep
    every component (`labels`) whole. Shares stay within `tolerance` of `fractions`, or no further off than
    they were."""
    new = np.asarray(splits).astype(str)
    units, unit_of = np.unique(labels, return_inverse=True)
    index = {int(label): k for k, label in enumerate(units.tolist())}
    size = np.bincount(unit_of, minlength=len(units))
    part = np.zeros(len(units), dtype=int)
    part[unit_of] = [SPLIT_NAMES.index(name) for name in new]
    neighbours: list[dict[int, float]] = [{} for _ in units]
    for (a, b), weight in weights.items():
        u, v = index[a], index[b]
        neighbours[u][v] = neighbours[u].get(v, 0.0) + weight
        neighbours[v][u] = neighbours[v].get(u, 0.0) + weight
    linked = [u for u in range(len(units)) if neighbours[u]]
    target = np.array([float(f) for f in fractions]) * len(new)
    counts = np.bincount(part, weights=size, minlength=3)
    slack = np.maximum(tolerance * len(new), np.abs(counts - target)) + 1e-9
    unlinked: dict[tuple[int, int], list[int]] = {}  # (split, size) -> components without links
    for u in range(len(units)):
        if not neighbours[u]:
            unlinked.setdefault((int(part[u]), int(size[u])), []).append(u)
    for pool in unlinked.values():
        pool.reverse()  # pop() takes the lowest row first

    def gains(u: int) -> np.ndarray:
        """How much less link weight the split cuts when component u alone moves to each split."""
        ties = np.zeros(3)
        for v, weight in neighbours[u].items():
            ties[part[v]] += weight
        return ties - ties[part[u]]

    def gain(u: int, there: int) -> float:
        return float(gains(u)[there])

    def moves() -> bool:
        """Each linked component to the split it gains most in, where the shares allow."""
        nonlocal counts
        changed = False
        for u in linked:
            here, gained = int(part[u]), gains(u)
            for _, there in sorted((-gained[t], t) for t in range(3) if t != here):
                if gained[there] <= GAIN_FLOOR:
                    break
                after = counts.copy()
                after[here] -= size[u]
                after[there] += size[u]
                if np.all(np.abs(after - target) <= slack):
                    part[u], counts, changed = there, after, True
                    break
        return changed

    def trades() -> bool:
        """Components that want to move in opposite directions swap places, best gains first, where the
        shares allow; a component with no such partner swaps with unlinked images of its total size, which
        lose nothing by moving."""
        nonlocal counts
        wants: dict[tuple[int, int], list[tuple[float, int]]] = {}
        for u in linked:
            here, gained = int(part[u]), gains(u)
            best = max((t for t in range(3) if t != here), key=lambda t: gained[t])
            if gained[best] > GAIN_FLOOR:
                wants.setdefault((here, best), []).append((-float(gained[best]), u))
        changed = False
        for (a, b), forward in sorted(wants.items()):
            backward = [v for _, v in sorted(wants.get((b, a), []))] if a < b else []
            for _, u in sorted(forward):
                if part[u] != a or gain(u, b) <= GAIN_FLOOR:
                    continue  # moved, or no longer gaining, since the list was made
                partner = None
                for v in backward[:TRADE_CANDIDATES]:
                    after = counts.copy()
                    after[[a, b]] += (size[v] - size[u], size[u] - size[v])
                    if (
                        part[v] == b
                        and np.all(np.abs(after - target) <= slack)
                        and gain(u, b) + gain(v, a) - 2 * neighbours[u].get(v, 0.0) > GAIN_FLOOR
                    ):
                        partner = [v]
                        break
                if partner is None:
                    same, singles = unlinked.get((b, int(size[u])), []), unlinked.get((b, 1), [])
                    if same:
                        partner = [same.pop()]
                    elif len(singles) >= size[u]:
                        partner = [singles.pop() for _ in range(int(size[u]))]
                    else:
                        continue
                    for v in partner:
                        unlinked.setdefault((a, int(size[v])), []).append(v)
                else:
                    backward.remove(partner[0])
                for v in partner:
                    part[v] = a
                    counts[[a, b]] += (size[v], -size[v])
                part[u] = b
                counts[[a, b]] += (-size[u], size[u])
                changed = True
        return changed

    for _ in range(MAX_PASSES):
        if not (moves() | trades()):
            break
    return np.array([SPLIT_NAMES[k] for k in part[unit_of]])


def regroup_prepared(
    folder: Any,
    threshold: float,
    *,
    fractions,
    margin: float = LINK_MARGIN,
    device: str = "cpu",
    matcher: Any = None,
    max_shift: float = MAX_FRACTION_SHIFT,
) -> dict:
    """Keep images the matcher joins at `threshold` in one split, and linked images (scoring within `margin`
    below it) together where the shares allow; returns what changed (also saved as similar_groups.json
    beside the manifest).

    Images move only with a joined group, or to cut less link weight (module docstring): re-drawing the
    whole split would scatter the patients whose images were never joined. Refuses (DataError, the folder
    untouched) when keeping the joined groups whole would put a split's share more than `max_shift` from the
    requested fraction (or further off than the ordinary split already was): at a low threshold chains of
    weak pairs join most of the set into one group, which no split can hold. The result is deterministic."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.data.manifest import MANIFEST_COLUMNS, write_prepared
    from meddenoise.data.records import ImageRecord
    from meddenoise.fileio import atomic_write_json

    matcher = matcher or Matcher()
    data = load_prepared(folder)
    pairs = score_pairs(data, matcher, device)
    rows = data.records
    similar = similar_groups(pairs, threshold)
    sizes = np.bincount(similar, minlength=len(rows))
    # the split's own groups (known patients) stay whole too: they are joined like similar images
    labels = with_groups(similar, [row["group"] for row in rows])
    named = unit_groups(labels, [row["group"] for row in rows])
    records = []
    for row, label in zip(rows, labels):
        records.append(
            ImageRecord(
                row["image_id"], row["patient_id"], row["source"], row["source_path"], named[int(label)]
            )
        )
    before = np.asarray(data.splits).astype(str)
    joined, joined_images, joined_groups = move_joined_groups(before, labels, fractions)
    weights = link_weights(pairs, labels, threshold, margin)
    # links never take a share further than the refusal bound allows
    placed = place_linked(joined, labels, weights, fractions, tolerance=min(PLACEMENT_TOLERANCE, max_shift))
    achieved, unjoined = split_fractions(joined), split_fractions(before)
    # a split already off the request (a tiny folder, a patient-level split) is not the grouping's doing
    shifts = [
        abs(a - float(f)) - max(0.0, abs(u - float(f)) - max_shift)
        for a, u, f in zip(achieved, unjoined, fractions)
    ]
    summary = {
        "threshold": threshold,
        "joined_components": int(np.sum(sizes > 1)),
        "images_in_joined_components": int(sizes[sizes > 1].sum()),
        "largest_component": int(sizes.max()) if len(sizes) else 0,
        "components_moved": joined_groups,
        "images_moved_with_joined_groups": joined_images,
        "link_margin": margin,
        "link_scale": LINK_SCALE,
        "linked_component_pairs": len(weights),
        "images_moved_by_links": int(np.sum(placed != joined)),
        "images_moved_to_another_split": int(np.sum(placed != before)),
        "requested_fractions": [float(f) for f in fractions],
        "fractions_before": list(unjoined),
        "fractions_after": list(split_fractions(placed)),
        "max_fraction_shift": max_shift,
        "matcher": matcher_info(matcher),
        "score": LeakScorer(matcher).describe(),
    }
    if max(shifts) > max_shift:

        def shares(values):
            return " / ".join(f"{v:.2f}" for v in values)

        raise DataError(
            f"group_similar {threshold:g} would join {summary['images_in_joined_components']} of "
            f"{len(rows)} images into {summary['joined_components']} group(s) (the largest holds "
            f"{summary['largest_component']}); keeping each in one split moves {joined_images} image(s) of "
            f"{joined_groups} group(s), and the train/val/test shares would become {shares(achieved)} "
            f"(unjoined {shares(unjoined)}) instead of the requested {shares(fractions)} (more than "
            f"{max_shift * 100:g} points off): the split would no longer measure anything. {folder} is left "
            "as it was. Raise the threshold (calibrate it with `meddenoise data leaks DIR --calibrate "
            "ID_FOLDER`), or use patient ids.",
            parameter="group_similar",
        )
    extra = {key: [row[key] for row in rows] for key in rows[0] if key not in MANIFEST_COLUMNS}
    images = np.array(data.images)  # read fully: the file is replaced below
    params, fingerprint = data.params, data.info.get("input_fingerprint")
    del data
    write_prepared(
        folder, images, records, placed.tolist(), params, extra_columns=extra, fingerprint=fingerprint
    )
    atomic_write_json(Path(folder) / "similar_groups.json", summary)
    return summary
