"""`meddenoise report DIR`: rebuild report.md / report.html from the evaluations and runs below DIR."""

from __future__ import annotations

import argparse
import dataclasses

from meddenoise.config import (
    add_config_arguments,
    command_config,
    option,
    print_config_option,
    quiet_option,
    save_config,
)


@dataclasses.dataclass
class ReportConfig:
    folder: str = option("", "folder holding evaluations (a `reproduce` output)", required=True, cli=False)
    out: str = option("", "where to write report.md, report.html, figures/ and tables/ (default: FOLDER)")
    split: str = option(
        "test", "which split's evaluations to report", choices=("train", "val", "test", "all")
    )
    quiet: bool = quiet_option()
    print_config: bool = print_config_option()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="build report.md / report.html (Tables III-VI, figures) from evaluated runs",
        description="Read every evaluation below FOLDER (evaluation.json + per_image.csv), the runs' "
        "metrics.jsonl / summary.csv and reproduce.json, and write the report. Nothing is re-run.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="folder written by `meddenoise reproduce`")
    add_config_arguments(parser, ReportConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise.report.build import build_report

    config = command_config(ReportConfig, args)
    say = (lambda text: None) if config.quiet else (lambda text: print(text, flush=True))
    report = build_report(config.folder, config.out or None, split=config.split, say=say)
    save_config(config, report.markdown.parent / "report_config.json")
    print(f"wrote {report.markdown} and {report.html} ({len(report.figures)} figures)")
    return 0
