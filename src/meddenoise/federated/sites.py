"""Sites: who holds which images. Either one prepared folder per site (`--site-data A B C`), or one folder
partitioned into K sites (`--data DIR --sites K --partition ...`) by the folder's split unit, its `group`
column: the patient for real data (so a patient is never split across sites), the pose group for the
rendered default (one CT, hence one patient, rendered in many poses).

A `Site` is a description (name, folder, groups), small enough to travel to a simulated site; the pixels
are read only by the site itself (`meddenoise.federated.local`). Each site keeps the prepared folder's
patient-level train / validation / test splits; a held-out test site (`--test-site`) contributes all of its
images to the global test set and never trains.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.errors import ConfigError, DataError

# How many Dirichlet draws to try before giving up on giving every site training and validation images.
DIRICHLET_ATTEMPTS = 200
BRIGHTNESS_STRATA = 4


@dataclasses.dataclass(frozen=True)
class Site:
    name: str
    data: str  # prepared folder
    groups: tuple[str, ...] | None = None  # split units (`group` column); None: the whole folder
    role: str = "train"  # train | test (held out: never trains, all its images are global test images)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data": self.data, "groups": self.groups, "role": self.role}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Site:
        groups = values.get("groups")
        return cls(
            name=str(values["name"]),
            data=str(values["data"]),
            groups=tuple(groups) if groups is not None else None,
            role=str(values.get("role", "train")),
        )


def site_rows(site: Site, records: list[dict[str, str]], splits: np.ndarray, split: str) -> np.ndarray:
    """Manifest rows (int64, ascending) of `site` in `split` ('all' for every image of the site).

    A held-out test site's 'test' split is all of its images, and it has no training or validation rows.
    """
    if site.role == "test":
        split = "all" if split == "test" else None
    if split is None:
        return np.zeros(0, dtype=np.int64)
    mine = np.ones(len(records), dtype=bool)
    if site.groups is not None:
        members = set(site.groups)
        mine = np.array([row["group"] in members for row in records], dtype=bool)
    if split != "all":
        mine &= splits == split
    return np.flatnonzero(mine).astype(np.int64)


# -- building the site list ---------------------------------------------------------------------------------
def sites_from_folders(folders: list[str]) -> list[Site]:
    """One site per prepared folder, named after the folder (with its position when names repeat)."""
    names = [Path(folder).resolve().name or f"site{i + 1}" for i, folder in enumerate(folders)]
    if len(set(names)) < len(names):
        names = [f"site{i + 1}-{name}" for i, name in enumerate(names)]
    from meddenoise.data.cache import load_prepared
    from meddenoise.errors import MeddenoiseError

    for name, folder in zip(names, folders):
        if not Path(folder).is_dir():
            raise DataError(f"site_data: prepared folder {folder} does not exist", parameter="site_data")
        # checked here, before Flower starts: inside a simulated site the same error is a long traceback
        try:
            data = load_prepared(folder)
        except MeddenoiseError as exc:
            raise DataError(
                f"site_data: site {name} ({folder}) is not usable: {exc}", parameter="site_data"
            ) from None
        if data.indices("train").size == 0:
            raise DataError(
                f"site_data: site {name} ({folder}) has no training images", parameter="site_data"
            )
    return [Site(name=name, data=str(folder)) for name, folder in zip(names, folders)]


def partition_folder(
    data: Any, folder: str, sites: int, partition: str, *, alpha: float = 0.5, seed: int = 0
) -> list[Site]:
    """Split the groups (patients) of one loaded prepared folder into `sites` sites (module docstring)."""
    records = data.records
    units = sorted({row["group"] for row in records})
    if sites > len(units):
        raise ConfigError(
            f"sites = {sites}: {folder} has only {len(units)} groups (patients) to share out", "sites"
        )
    if partition == "iid":
        groups = _iid(units, sites, seed)
    elif partition == "by-source":
        groups = _by_source(records, sites, folder)
    elif partition == "dirichlet":
        groups = _dirichlet(data, units, sites, alpha, seed, folder)
    else:
        raise ConfigError(f"partition must be iid, by-source or dirichlet; got {partition!r}", "partition")
    names = [f"site{i + 1}" for i in range(sites)]
    if partition == "by-source":
        names = [f"site{i + 1}-{source}" for i, source in enumerate(_sources(records))]
    return [Site(name=n, data=str(folder), groups=tuple(sorted(g))) for n, g in zip(names, groups)]


def _iid(units: list[str], sites: int, seed: int) -> list[list[str]]:
    order = np.random.default_rng([seed, 0x5173]).permutation(len(units))
    return [[units[i] for i in order[k::sites]] for k in range(sites)]


def _sources(records: list[dict[str, str]]) -> list[str]:
    return sorted({row["source"] for row in records})


def _by_source(records: list[dict[str, str]], sites: int, folder: str) -> list[list[str]]:
    sources = _sources(records)
    if sites != len(sources):
        raise ConfigError(
            f"partition by-source makes one site per source; {folder} has {len(sources)} source(s) "
            f"({', '.join(sources)}), so use sites = {len(sources)}",
            "sites",
        )
    by_unit: dict[str, set[str]] = defaultdict(set)
    for row in records:
        by_unit[row["group"]].add(row["source"])
    mixed = [u for u, s in by_unit.items() if len(s) > 1]
    if mixed:
        raise DataError(
            f"{folder}: group (patient) {mixed[0]} has images from several sources, so a by-source "
            "partition would split it across sites; use partition iid or dirichlet",
            parameter="partition",
        )
    return [sorted(u for u, s in by_unit.items() if source in s) for source in sources]


def _strata(data: Any, units: list[str]) -> list[int]:
    """A stratum per group (patient): its source when the folder mixes sources, else its brightness quartile.

    Denoising has no class label to skew; what differs between hospitals is the kind of image (scanner,
    exposure, population), which sources capture and brightness stands in for within one source.
    """
    records = data.records
    sources = _sources(records)
    first_source = {}
    for row in records:
        first_source.setdefault(row["group"], row["source"])
    if len(sources) > 1:
        return [sources.index(first_source[u]) for u in units]
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for start in range(0, len(records), 256):
        block = np.asarray(data.images[start : start + 256], dtype=np.float64)  # (b, H, W)
        means = block.reshape(block.shape[0], -1).mean(axis=1)
        for offset, value in enumerate(means):
            unit = records[start + offset]["group"]
            sums[unit] += float(value)
            counts[unit] += 1
    brightness = np.array([sums[u] / counts[u] for u in units])
    strata = min(BRIGHTNESS_STRATA, len(units))
    ranks = np.argsort(np.argsort(brightness, kind="stable"), kind="stable")
    return [int(r * strata // len(units)) for r in ranks]


def _dirichlet(
    data: Any, units: list[str], sites: int, alpha: float, seed: int, folder: str
) -> list[list[str]]:
    strata = _strata(data, units)
    splits_of = defaultdict(set)
    for row in data.records:
        splits_of[row["group"]].add(row["split"])
    rng = np.random.default_rng([seed, 0xD1C])
    for _ in range(DIRICHLET_ATTEMPTS):
        groups: list[list[str]] = [[] for _ in range(sites)]
        for stratum in sorted(set(strata)):
            members = [u for u, s in zip(units, strata) if s == stratum]
            members = [members[i] for i in rng.permutation(len(members))]
            shares = rng.dirichlet(np.full(sites, alpha))
            bounds = np.round(np.cumsum(shares) * len(members)).astype(int)
            start = 0
            for k, end in enumerate(bounds):
                groups[k].extend(members[start:end])
                start = end
        if all(
            any("train" in splits_of[p] for p in g) and any("val" in splits_of[p] for p in g) for g in groups
        ):
            return groups
    raise DataError(
        f"a Dirichlet(alpha={alpha}) partition of {folder} into {sites} sites left a site without training "
        f"or validation images in {DIRICHLET_ATTEMPTS} draws; use a larger alpha or fewer sites",
        parameter="alpha",
    )


def choose_test_site(sites: list[Site], test_site: str) -> list[Site]:
    """Mark the site named (or numbered, from 1) by `test_site` as held out."""
    if not test_site:
        return sites
    names = [s.name for s in sites]
    if test_site.isdigit() and 1 <= int(test_site) <= len(sites):
        index = int(test_site) - 1
    elif test_site in names:
        index = names.index(test_site)
    else:
        raise ConfigError(
            f"test_site {test_site!r} is not one of the sites ({', '.join(names)}) or 1..{len(sites)}",
            "test_site",
        )
    if len(sites) < 2:
        raise ConfigError("test_site needs at least two sites (one must train)", "test_site")
    return [dataclasses.replace(s, role="test") if i == index else s for i, s in enumerate(sites)]


def describe_sites(sites: list[Site]) -> list[dict[str, Any]]:
    """Per site: name, role, folder and image / patient counts per split (from the manifests only)."""
    from meddenoise.data.cache import load_prepared

    described = []
    for site in sites:
        data = load_prepared(site.data)
        row: dict[str, Any] = {"name": site.name, "role": site.role, "data": site.data}
        for split in ("train", "val", "test"):
            rows = site_rows(site, data.records, data.splits, split)
            row[f"{split}_images"] = int(len(rows))
            row[f"{split}_patients"] = len({data.records[r]["patient_id"] for r in rows})
        row["groups"] = list(site.groups) if site.groups is not None else None
        described.append(row)
    return described
