"""Assemble the report of a folder of runs: `report.md`, its HTML twin, `figures/*.png` and `tables/*.csv`.

    build_report("runs/quick")   # reads runs/quick/**/evaluation.json, the runs' files and reproduce.json

Sections: the summary of findings (`meddenoise.report.summary`: the test-backed sentences of the sections
below, each linking to its section), set-up (hardware, versions, data, split policy, noise, LPIPS status,
what was not run and why), Tables III-VI with their paired tests, the clean-free and federated sections, the
U-Net++ head table, the figures, the privacy audit and the privacy modes when present, and the list of files
every number was read from.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meddenoise.evaluation import files
from meddenoise.evaluation.environment import describe_hardware
from meddenoise.fileio import atomic_write_text, ensure_writable_dir, read_json
from meddenoise.report import figures, scaling, summary, tables
from meddenoise.report.clean_free import SECTION_TITLE as CLEAN_FREE_TITLE
from meddenoise.report.clean_free import clean_free_section, table_clean_free
from meddenoise.report.collect import Collection, collect, method_label
from meddenoise.report.document import Block, BulletList, Figure, Heading, Paragraph, Table, render_markdown
from meddenoise.report.federated import SECTION_TITLE as FEDERATED_TITLE
from meddenoise.report.federated import federated_section, table_federated
from meddenoise.report.html import render_html
from meddenoise.report.privacy_modes import SECTION_TITLE as MODES_TITLE
from meddenoise.report.privacy_modes import privacy_modes_section
from meddenoise.report.summary import Finding
from meddenoise.reprodir import AUDIT_FILE, ReproDir

REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"
TABLES_DIR = "tables"


@dataclasses.dataclass
class Report:
    markdown: Path
    html: Path
    blocks: list[Block]
    figures: list[Path]


def _first(collection: Collection, key: str) -> Any:
    for evaluation in collection.evaluations:
        if evaluation.info.get(key):
            return evaluation.info[key]
    return None


def setup_section(collection: Collection) -> list[Block]:
    plan = collection.plan
    environment = plan.get("environment") or _first(collection, "environment") or {}
    versions = environment.get("versions", {})
    data = plan.get("data") or _first(collection, "data") or {}
    noise = _first(collection, "noise") or {}
    items = [
        f"Hardware: {describe_hardware(environment)}." if environment else "Hardware: not recorded.",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()) + "."
        if versions
        else "Versions: not recorded.",
    ]
    if data:
        counts, patients, groups = (data.get(key) or {} for key in ("counts", "patients", "groups"))

        from meddenoise.data.split_claims import UNIT_IMAGE_UNKNOWN

        ids_unknown = data.get("split_unit") == UNIT_IMAGE_UNKNOWN

        def split_counts(name: str) -> str:
            if ids_unknown:  # each image counted as its own patient: no count of patients is known
                return f"{name} {counts.get(name, '?')} images"
            text = f"{name} {counts.get(name, '?')} images, {patients.get(name, '?')} patients"
            return text + (f", {groups[name]} groups" if name in groups else "")

        items.append(
            f"Data: source `{data.get('source', '?')}`, {data.get('height', '?')}x{data.get('width', '?')} "
            f"pixels ({data.get('dtype', '?')}), prepared folder `{data.get('folder', '?')}`; split by "
            f"**{data.get('split_unit') or data.get('split_by', '?')}**: "
            + "; ".join(split_counts(n) for n in ("train", "val", "test"))
            + "."
        )
        items.append(_split_policy_sentence(data))
    if noise:
        items.append(
            f"Noise: {noise.get('kind', 'gaussian')} with mean {noise.get('mean')}, std per row of the "
            f"tables, "
            f"clamped to [0, 1]: {noise.get('clamp')}; test inputs use the `fixed` mode with seed "
            f"{noise.get('seed')}, so every method sees the same noisy images."
        )
    items.append(_lpips_sentence(collection))
    if environment and not environment.get("gpus"):
        items.append(_threads_sentence(environment))
    blocks: list[Block] = [Heading(2, "Set-up"), BulletList(items)]
    if plan:
        blocks.append(
            Paragraph(
                f"Preset `{plan.get('preset', '?')}`: {plan.get('description', '')} Seeds per configuration: "
                f"{plan.get('seeds', 1)}. Wall time of the whole grid: "
                f"{_seconds_text(plan.get('wall_seconds'))}."
            )
        )
        skipped = plan.get("skipped") or []
        if skipped:
            blocks.append(Paragraph("Not run, with the reason:"))
            blocks.append(BulletList([f"{item['what']}: {item['reason']}" for item in skipped]))
    return blocks


def failures_section(collection: Collection) -> list[Block]:
    """The jobs of the reproduction that failed, with their errors, before anything else: the tables below
    lack their numbers."""
    failed = collection.plan.get("failed") or []
    if not failed:
        return []
    return [
        Heading(2, "Failed jobs"),
        Paragraph(
            f"**{len(failed)} job(s) failed**; their results are missing from every table and figure below. "
            "Fix the cause and rerun with `--resume` to add them (finished jobs are kept)."
        ),
        BulletList([f"`{item['what']}`: {item['reason']}" for item in failed]),
    ]


def _threads_sentence(environment: dict[str, Any]) -> str:
    return (
        f"CPU threads: one-device runs, evaluation and the audit use torch's pool of "
        f"{environment.get('torch_threads', '?')} thread(s) (OMP_NUM_THREADS when set, else one per core); "
        "each CPU DDP worker runs one thread (the engine's launcher sets OMP_NUM_THREADS=1 unless it is "
        "set), so two DDP processes on two cores do not oversubscribe them."
    )


def _seconds_text(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "not recorded"
    return (
        f"{seconds:.0f} s ({seconds / 60:.1f} min; data preparation included, building this report excluded)"
    )


def _split_policy_sentence(data: dict[str, Any]) -> str:
    from meddenoise.data.split_claims import split_sentence

    return "Split policy: " + split_sentence(data)


def _seeds_per_configuration(collection: Collection) -> list[int]:
    """Training seeds of each network configuration (method, noise level, strategy) that was evaluated."""
    seeds: dict[tuple[str, float, str], set[int | None]] = {}
    for evaluation in collection.networks():
        key = (evaluation.method, evaluation.noise_std, evaluation.strategy)
        seeds.setdefault(key, set()).add(evaluation.seed)
    return [len(found) for found in seeds.values()]


def _lpips_limit(collection: Collection) -> str:
    """A summary line when LPIPS was not computed everywhere ("" when it was)."""
    sentence = _lpips_sentence(collection)
    return "" if sentence.startswith("LPIPS (AlexNet, v0.1): computed") else sentence


def _lpips_sentence(collection: Collection) -> str:
    statuses = {}
    for evaluation in collection.evaluations:
        lpips = evaluation.info.get("lpips") or {}
        statuses[bool(lpips.get("available"))] = lpips.get("reason") or lpips.get("weights") or ""
    if statuses.get(True) is not None and False not in statuses:
        return f"LPIPS (AlexNet, v0.1): computed ({statuses[True]})."
    if True not in statuses:
        return f"LPIPS (AlexNet, v0.1): not available, shown as n/a: {statuses.get(False, 'not recorded')}."
    return f"LPIPS: computed for some evaluations only; elsewhere n/a: {statuses[False]}."


def _write_table_csv(result: tables.TableResult, name: str, tables_dir: Path) -> None:
    if result.rows:
        columns = list(dict.fromkeys(key for row in result.rows for key in row))  # first-seen order
        files.write_rows(tables_dir / f"{name}.csv", columns, result.rows)


def _table_blocks(result: tables.TableResult, name: str, tables_dir: Path) -> list[Block]:
    _write_table_csv(result, name, tables_dir)
    if not result.table.rows:
        return [Paragraph(f"{result.table.caption}: nothing to show (no matching runs).")]
    return [result.table]


def tables_section(collection: Collection, tables_dir: Path, findings: list[Finding]) -> list[Block]:
    """The paper's tables and the sections beside them; their test-backed sentences also go to `findings`."""
    skipped = collection.plan.get("skipped") or []
    blocks: list[Block] = [Heading(2, "Quality (Table III)")]
    blocks += _table_blocks(tables.table_quality(collection), "table3_quality", tables_dir)
    blocks += [Heading(2, "Configurations (Table IV)")]
    blocks += _table_blocks(tables.table_configurations(collection), "table4_configurations", tables_dir)
    speed_title = "Speed-up of DP and DDP+AMP (Table V)"
    blocks += [Heading(2, speed_title)]
    speedup, speedup_sentences = scaling.table_speedup(collection, skipped)
    blocks += _table_blocks(speedup, "table5_speedup", tables_dir)
    if speedup_sentences:
        blocks.append(BulletList(speedup_sentences))
        findings += [summary.Finding(sentence, speed_title) for sentence in speedup_sentences]
    elif speedup.rows:
        findings.append(
            summary.Finding(
                "No speed-up is claimed: Table V's figures lack 2 repeats each or their ranges overlap "
                "(within 10%).",
                speed_title,
            )
        )
    baselines_title = "Baselines on the same test images (Table VI)"
    blocks += [Heading(2, baselines_title)]
    baselines, tests = tables.table_baselines(collection)
    blocks += _table_blocks(baselines, "table6_baselines", tables_dir)
    comparisons = tables.learned_vs_classical(collection)
    wins = [c["text"] for c in comparisons if c["classical_leads"] and c["shown"]]
    if wins:
        blocks.append(Paragraph("**Classical methods win here.** " + " ".join(wins)))
    others = [c["text"] for c in comparisons if not (c["classical_leads"] and c["shown"])]
    if others:
        blocks.append(Paragraph("Best network against best classical method: " + " ".join(others)))
    findings += summary.learned_vs_classical(comparisons, baselines_title)
    blocks += _table_blocks(tests, "table6_paired_tests", tables_dir)
    clean_free_table = table_clean_free(collection)
    if clean_free_table is not None:
        _write_table_csv(clean_free_table, "clean_free_gaps", tables_dir)
        blocks += clean_free_section(collection, clean_free_table)
        findings += summary.clean_free(clean_free_table.rows, CLEAN_FREE_TITLE)
    federated_table = table_federated(collection)
    if federated_table is not None:
        _write_table_csv(federated_table, "federated", tables_dir)
        blocks += federated_section(collection, federated_table)
        findings += summary.federated(federated_table.rows, FEDERATED_TITLE)
    robustness = tables.table_robustness(collection)
    if robustness is not None:
        blocks += [Heading(2, tables.ROBUSTNESS_TITLE)]
        blocks += _table_blocks(robustness, "robustness", tables_dir)
        findings += summary.robustness(robustness.rows, tables.ROBUSTNESS_TITLE)
    heads = tables.table_heads(collection)
    if heads is not None:
        blocks += [Heading(2, "U-Net++ heads (pruned networks)")]
        blocks += _table_blocks(heads, "unetpp_heads", tables_dir)
    return blocks


def figures_section(
    collection: Collection, report_dir: Path, say: Callable[[str], None] = lambda text: None
) -> tuple[list[Block], list[Path]]:
    figures_dir = ensure_writable_dir(report_dir / FIGURES_DIR, what="figures folder")
    blocks: list[Block] = [Heading(2, "Figures")]
    written: list[Path] = []

    def add(name: str, draw: Callable[[Path], str | None]) -> None:
        """Draw one figure; a figure whose inputs are unreadable (a truncated samples.npz, say) is skipped
        with the reason, and the rest of the report is still built."""
        import zipfile

        try:
            caption = draw(figures_dir / name)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            blocks.append(Paragraph(f"Figure `{name}` skipped: {type(exc).__name__}: {exc}."))
            say(f"report: figure {name} skipped ({exc})")
            return
        if caption is not None:
            blocks.append(Figure(f"{FIGURES_DIR}/{name}", caption))
            written.append(figures_dir / name)
            say(f"report: figure {name}")

    for level in collection.noise_levels():
        tag = f"{level:g}".replace(".", "p")
        add(
            f"qualitative_std{tag}.png", lambda path, lv=level: figures.qualitative_grid(collection, lv, path)
        )
        add(f"error_maps_std{tag}.png", lambda path, lv=level: figures.error_maps(collection, lv, path))
    add("training_curves.png", lambda path: figures.training_curves(collection, path))
    add("training_time.png", lambda path: figures.training_times(collection, path))
    add("metric_distributions.png", lambda path: figures.metric_distributions(collection, path))
    return blocks, written


def privacy_section(collection: Collection, findings: list[Finding]) -> list[Block]:
    found = sorted(
        p
        for p in collection.root.rglob(AUDIT_FILE)
        if not any(part.startswith(".") for part in p.relative_to(collection.root).parts)
    )
    if not found:
        reason = collection.plan.get("privacy_skipped")
        return [Heading(2, "Privacy audit"), Paragraph(f"Not run: {reason}.")] if reason else []
    from meddenoise.privacy.verdict import TABLE_HEADER, level_sentences, summary_sentences, table_rows

    path = found[0]
    result = read_json(path, what="privacy audit")
    relative = path.relative_to(collection.root).with_suffix(".md").as_posix()
    blocks: list[Block] = [
        Heading(2, "Privacy audit of noise obfuscation"),
        Paragraph(
            f"From `{path.relative_to(collection.root).as_posix()}` (full text: [{relative}]({relative}))."
        ),
        Table(
            list(TABLE_HEADER),
            [list(row) for row in table_rows(result)],
            "Privacy audit per noise level",
            [
                "PSNR/SSIM: released image against the original; link@k: the original among the k best "
                "matches; "
                "reid@k: same patient among the k nearest other images; recv/outs PSNR: a denoiser's output; "
                "gauss PSNR: a Gaussian filter on the same queries."
            ],
        ),
        BulletList(summary_sentences(result)),
    ]
    findings += summary.privacy_audit(result, summary_sentences(result), "Privacy audit of noise obfuscation")
    for level in result.get("levels", []):
        blocks.append(Paragraph(f"Noise std {level['noise_std']:g}:"))
        blocks.append(BulletList(level_sentences(level, result.get("reference", {}))))
    return blocks


def sources_section(collection: Collection) -> list[Block]:
    items = []
    for evaluation in collection.evaluations:
        where = (
            evaluation.folder.relative_to(collection.root).as_posix()
            if evaluation.folder.is_relative_to(collection.root)
            else str(evaluation.folder)
        )
        label = method_label(evaluation.method)
        extra = f", {evaluation.strategy}, seed {evaluation.seed}" if evaluation.kind == "network" else ""
        items.append(f"`{where}/{files.PER_IMAGE_FILE}`: {label}, std {evaluation.noise_std:g}{extra}")
    blocks: list[Block] = [
        Heading(2, "Where the numbers come from"),
        Paragraph(
            "Every number above is aggregated from these per-image tables (written by `meddenoise "
            "evaluate`) and from the training engine's `summary.csv` / `metrics.jsonl` in each run folder; "
            f"full-precision copies of the tables are in `{TABLES_DIR}/`."
        ),
        BulletList(items),
    ]
    if collection.ignored:
        listed = ", ".join(f"`{folder}`" for folder in collection.ignored)
        blocks.append(Paragraph(f"Left out (evaluated on another prepared folder): {listed}."))
    return blocks


def build_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    split: str = "test",
    say: Callable[[str], None] = lambda text: None,
) -> Report:
    """Read every evaluation below `root` and write report.md, report.html, figures/ and tables/ to `out_dir`
    (default: `root`). `say` receives a line per stage (tables, each figure, privacy sections)."""
    say(f"report: reading the evaluations under {root}")
    collection = collect(root, split=split)
    report_dir = ensure_writable_dir(out_dir or root, what="report folder")
    tables_dir = ensure_writable_dir(report_dir / TABLES_DIR, what="tables folder")
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    title = "Deep denoising of obfuscated chest X-rays: reproduction report"
    blocks: list[Block] = [
        Heading(1, title),
        Paragraph(
            f"Built {created} from `{Path(root).resolve()}` ({len(collection.evaluations)} evaluations "
            f"of split "
            f"`{split}`, {len(collection.noise_levels())} noise levels). Rebuild with `meddenoise "
            f"report {root}`."
        ),
    ]
    findings: list[Finding] = []
    body = failures_section(collection)
    body += setup_section(collection)
    say(f"report: tables and paired tests ({len(collection.evaluations)} evaluations)")
    body += tables_section(collection, tables_dir, findings)
    figure_blocks, figure_paths = figures_section(collection, report_dir, say)
    body += figure_blocks
    body += privacy_section(collection, findings)
    body += privacy_modes_section(collection.root)

    findings += summary.privacy_modes(ReproDir(collection.root).read_privacy_modes(), MODES_TITLE)
    findings += summary.limits(
        seeds=_seeds_per_configuration(collection),
        ids_unknown=tables.ids_unknown(collection),
        lpips=_lpips_limit(collection),
    )
    blocks += summary.summary_blocks(findings)
    blocks += body
    blocks += sources_section(collection)
    markdown_path = report_dir / REPORT_MARKDOWN
    html_path = report_dir / REPORT_HTML
    atomic_write_text(markdown_path, render_markdown(blocks))
    atomic_write_text(html_path, render_html(blocks, title, report_dir))
    return Report(markdown_path, html_path, blocks, figure_paths)


__all__ = ["Report", "build_report", "Table"]
