"""The preprocessing cache: decode a source once, resize, store as one integer array with a manifest.

`prepare(source, config)` lists the source's records, assigns splits (before decoding, so an image's split
never depends on which other files failed), decodes in parallel worker processes and writes the folder through
`PreparedWriter`. It reuses an existing folder when the parameters and the input fingerprint (paths, sizes and
modification times of the files) are unchanged. The on-disk format lives in `meddenoise.data.manifest` and is
re-exported here because callers think of it as "the cache".
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from meddenoise.config import config_to_dict
from meddenoise.data import split_claims
from meddenoise.data.decode import (
    DEFAULT_MAX_PIXELS,
    UnreadableImage,
    fit_square,
    resize_quantized,
    stretch_minmax,
)
from meddenoise.data.manifest import (
    MANIFEST_COLUMNS,
    PreparedData,
    PreparedWriter,
    load_prepared,
    read_prepare_info,
    write_prepared,
)
from meddenoise.data.prepare_config import RUN_ONLY_FIELDS, PrepareConfig
from meddenoise.data.splits import SPLIT_NAMES, assign_splits
from meddenoise.errors import DataError, DiskFullError, MeddenoiseError
from meddenoise.fileio import atomic_write_text, ensure_writable_dir, format_size, free_bytes, is_space_error
from meddenoise.locking import folder_lock

__all__ = [
    "MANIFEST_COLUMNS",
    "PrepareConfig",
    "PrepareResult",
    "PreparedData",
    "PreparedWriter",
    "load_prepared",
    "prepare",
    "read_prepare_info",
    "write_prepared",
]

SKIPPED_FILE = "skipped.csv"


@dataclasses.dataclass
class PrepareResult:
    folder: Path
    reused: bool
    info: dict[str, Any]  # prepare.json of the folder
    skipped: list[tuple[str, str]]  # (path, reason)
    notes: list[str]
    seconds: float
    workers: int


def prepare(source, config: PrepareConfig) -> PrepareResult:
    """Build (or reuse) the prepared folder `config.out` from `source`."""
    started = time.perf_counter()
    out = ensure_writable_dir(config.out, what="output folder", parameter="out")
    with folder_lock(out):
        try:
            return _prepare_locked(source, config, out, started)
        except OSError as exc:
            if not is_space_error(exc) and exc.errno not in (errno.EIO, errno.EROFS):
                raise
            # The writer has removed its partial files on the way out; say where and why it stopped.
            raise DiskFullError(
                f"writing the prepared folder {out} failed: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}; its partial files were removed "
                f"({format_size(free_bytes(out))} free now). Free some space and run prepare again"
            ) from None


def _prepare_locked(source, config: PrepareConfig, out: Path, started: float) -> PrepareResult:
    records = source.records()
    notes = list(getattr(source, "notes", []))
    if not records:
        raise DataError(f"source {source.name} has no images")
    params = preprocessing_params(source, config, len(records))
    fingerprint = input_fingerprint(source, records)
    reusable = None if config.force else _reusable(out, params, fingerprint)
    if reusable is not None:
        check_split_counts(reusable.get("counts", {}), config, out)
        return PrepareResult(out, True, reusable, _read_skipped(out), notes, time.perf_counter() - started, 0)

    splits = assign_splits(records, config.fractions, config.seed, config.split_by)
    check_split_counts(_counts(splits), config, out)  # before decoding, when the split alone decides
    if callable(getattr(source, "render", None)):
        skipped, workers = [], 1
        _render_into(out, source, records, splits, params, fingerprint, config)
    else:
        skipped, workers = _decode_into(out, source, records, splits, params, fingerprint, config)
    info = read_prepare_info(out) or {}
    return PrepareResult(out, False, info, skipped, notes, time.perf_counter() - started, workers)


def preprocessing_params(source, config: PrepareConfig, record_count: int) -> dict[str, Any]:
    """Everything that determines the prepared images (the reuse key, stored in prepare.json)."""
    params = {k: v for k, v in config_to_dict(config).items() if k not in RUN_ONLY_FIELDS}
    if params.get("max_pixels") == DEFAULT_MAX_PIXELS:
        del params["max_pixels"]  # so caches made before the option existed stay reusable
    if not params.get("group_similar"):
        params.pop("similar_margin", None)  # the same: it changes nothing without --group-similar
    if getattr(source, "root", None) is not None:
        params["root"] = str(source.root)
    params["record_count"] = record_count
    params["source_version"] = getattr(source, "version", None)
    describe = getattr(source, "describe", None)
    if callable(describe):  # the renderer's full settings, defaults included
        params["source_description"] = describe()
    origins = getattr(source, "patient_id_origins", None)
    if origins is None and callable(getattr(source, "render", None)):
        origins = {split_claims.RENDERED: record_count}
    if origins is not None:  # where patient ids came from, and so what the split really keeps together
        params["patient_id_origin"] = dict(origins)
        params["split_unit"] = split_claims.effective_split_unit(config.split_by, origins, config.source)
    return json.loads(json.dumps(params, default=str))


def input_fingerprint(source, records) -> str:
    """sha256 over image ids and, for files, their path, size and modification time."""
    digest = hashlib.sha256()
    for record in records:
        line = f"{record.image_id}\t{record.patient_id}\t{record.group}\t{record.path}"
        if record.path and os.path.isfile(record.path):
            stat = os.stat(record.path)
            line += f"\t{stat.st_size}\t{stat.st_mtime_ns}"
        digest.update(line.encode("utf-8") + b"\n")
    extra = getattr(source, "fingerprint", None)
    if callable(extra):
        digest.update(str(extra()).encode("utf-8"))
    return digest.hexdigest()


def _reusable(out: Path, params: dict, fingerprint: str) -> dict | None:
    info = read_prepare_info(out)
    if not info or info.get("params") != params or info.get("input_fingerprint") != fingerprint:
        return None
    try:
        load_prepared(out)
    except MeddenoiseError:
        return None
    return info


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _render_into(out, source, records, splits, params, fingerprint, config) -> None:
    images = np.asarray(source.render(records, config.size, resolve_device(config.device)))
    expected = (len(records), config.size, config.size)
    if images.shape != expected or images.dtype != np.uint8:
        raise DataError(
            f"source {source.name} rendered {images.shape} {images.dtype}, expected {expected} uint8"
        )
    write_prepared(out, images, records, splits, params, fingerprint=fingerprint)


# ---- parallel decoding -------------------------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}


def _init_worker(source, options: dict[str, Any], parent: int) -> None:
    _exit_with_parent(parent)
    _WORKER_STATE["source"], _WORKER_STATE["options"] = source, options


def _exit_with_parent(parent: int) -> None:
    """Have the kernel end this worker when the prepare process dies (Linux), so no orphan keeps decoding or
    keeps the deleted partial file (mapped at fork) taking disk space."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _process_chunk(chunk: list[tuple[int, Any]]) -> list[tuple]:
    source, options = _WORKER_STATE["source"], _WORKER_STATE["options"]
    return [_process_one(source, index, record, options) for index, record in chunk]


def _process_one(source, index: int, record, options: dict[str, Any]) -> tuple:
    """-> (index, image (size, size) uint8|uint16 or None, bit_depth, original (h, w), source hash, error)."""
    try:
        decoded = source.decode(record)
        pixels = decoded.pixels
        original_shape = pixels.shape
        if options["normalize"] == "minmax" and pixels.dtype in (np.uint8, np.uint16):
            pixels = stretch_minmax(pixels)
        pixels = fit_square(pixels, options["fit"])
        out_dtype = "uint16" if decoded.bit_depth > 8 else "uint8"
        image = resize_quantized(pixels, options["size"], options["resize_filter"], out_dtype)
        return index, image, decoded.bit_depth, original_shape, decoded.source_hash, ""
    except UnreadableImage as exc:
        return index, None, 0, (0, 0), "", str(exc)
    except Exception as exc:  # one odd file must not stop a 15,000-image prepare; it is listed instead
        return index, None, 0, (0, 0), "", f"{record.path}: unexpected {type(exc).__name__}: {exc}"


def _chunks(records, workers: int) -> list[list[tuple[int, Any]]]:
    size = max(1, min(64, len(records) // (workers * 8) or 1))
    indexed = list(enumerate(records))
    return [indexed[i : i + size] for i in range(0, len(indexed), size)]


def _decode_into(out, source, records, splits, params, fingerprint, config) -> tuple[list, int]:
    from tqdm import tqdm

    options = {k: getattr(config, k) for k in ("size", "fit", "resize_filter", "normalize")}
    workers = min(config.workers or available_cpus(), len(records))
    count = len(records)
    writer = PreparedWriter(out, count, config.size, config.size, "uint8")
    keep = np.zeros(count, dtype=bool)
    bit_depths, shapes, hashes = [""] * count, [("", "")] * count, [""] * count
    skipped: list[tuple[str, str]] = []
    progress = tqdm(total=count, unit="img", desc="prepare", disable=config.quiet or not sys.stderr.isatty())
    try:
        # closing(): on an error the pool is shut down now, not whenever the generator is collected.
        with contextlib.closing(_results(source, records, options, workers)) as results:
            for index, image, bit_depth, shape, source_hash, error in results:
                if image is None:
                    skipped.append((records[index].path, error))
                else:
                    writer.put(index, image)
                    keep[index] = True
                    bit_depths[index], shapes[index], hashes[index] = bit_depth, shape, source_hash
                progress.update(1)
        skipped.sort()
        _write_skipped(out, skipped)
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    if not keep.any() or (config.strict and skipped):
        writer.abort()
        raise _skip_failure(out, skipped, count, config.strict)
    try:  # skipped files can empty a split the assignment had filled
        check_split_counts(_counts([s for s, kept in zip(splits, keep) if kept]), config, out, skipped)
    except DataError:
        writer.abort()
        raise
    extra = {
        "bit_depth": bit_depths,
        "original_height": [s[0] for s in shapes],
        "original_width": [s[1] for s in shapes],
        "source_sha256": hashes,
    }
    writer.commit(records, splits, params, keep=keep, extra_columns=extra, fingerprint=fingerprint)
    return skipped, workers


def _results(source, records, options, workers):
    """Yield per-image results; in this process when workers == 1, else from worker processes (any order).

    ProcessPoolExecutor (not multiprocessing.Pool) because a worker that dies inside a C decoder, or is killed
    for memory, then raises BrokenProcessPool instead of leaving the prepare waiting forever.
    """
    if workers <= 1:
        for index, record in enumerate(records):
            yield _process_one(source, index, record, options)
        return
    import concurrent.futures
    import multiprocessing

    executor = concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(),
        initializer=_init_worker,
        initargs=(source, options, os.getpid()),
    )
    try:
        futures = {executor.submit(_process_chunk, chunk): chunk for chunk in _chunks(records, workers)}
        for future in concurrent.futures.as_completed(futures):
            try:
                chunk_result = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                paths = ", ".join(record.path for _, record in futures[future][:3])
                raise DataError(
                    "a decoding worker process died (a crash in an image decoder, or killed for lack of "
                    f"memory) while reading one of: {paths} ...; rerun with workers 1 to find the file",
                    parameter="workers",
                ) from None
            yield from chunk_result
    finally:
        _end_pool(executor)


def _end_pool(executor) -> None:
    """Stop the workers now: after an error nobody wants the rest of their chunks (and a full disk wants its
    space back). On a normal end they are idle and leave at once."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def _counts(splits) -> dict[str, int]:
    return {name: sum(1 for s in splits if s == name) for name in SPLIT_NAMES}


def check_split_counts(counts: dict[str, int], config: PrepareConfig, out: Path, skipped=()) -> None:
    """An empty train split is an error; so is an empty val or test split with a non-zero fraction, unless
    `allow_empty_split` (--allow-empty-split)."""
    empty = [
        name
        for name, fraction in zip(SPLIT_NAMES, config.fractions)
        if counts.get(name, 0) == 0 and (name == "train" or (fraction > 0 and not config.allow_empty_split))
    ]
    if not empty:
        return
    total = sum(counts.values())
    cause = f" after skipping {len(skipped)} unreadable file(s)" if skipped else ""
    advice = "add images or patients, or change the fractions"
    if empty != ["train"]:
        advice += "; allow_empty_split accepts an empty val or test split (never an empty train split)"
    raise DataError(
        f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of {out} would be empty: "
        f"{total} image(s) in "
        f"{', '.join(f'{n} {counts.get(n, 0)}' for n in SPLIT_NAMES)}{cause} with fractions "
        f"{' '.join(f'{f:g}' for f in config.fractions)}, split by {config.split_by}; {advice}",
        parameter="fractions",
    )


def _skip_failure(out: Path, skipped, count: int, strict: bool) -> DataError:
    first = "; ".join(reason for _, reason in skipped[:3])
    where = f"the full list is in {out / SKIPPED_FILE}"
    if strict and len(skipped) < count:
        return DataError(
            f"strict: {len(skipped)} of {count} image(s) could not be read ({first}); {where}",
            parameter="strict",
        )
    return DataError(f"none of the {count} image(s) could be read ({first}); {where}")


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    atomic_write_text(out / SKIPPED_FILE, buffer.getvalue())


def _read_skipped(out: Path) -> list[tuple[str, str]]:
    path = out / SKIPPED_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["path"], row["reason"]) for row in csv.DictReader(handle)]
