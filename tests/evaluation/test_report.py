"""`audiotokens report`: one self-contained HTML page holding every section the workdir has files for."""
from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from projects import copy_project, project_config, trained_project

from audiotokens.cli import main
from audiotokens.errors import UserError
from audiotokens.pipeline.run import execute
from audiotokens.evaluation.html_report import SECTIONS, write_report
from audiotokens.evaluation.robustness import evaluate_robustness

CHROMIUM = Path("/usr/bin/chromium")


class Page(HTMLParser):
    """What the page holds: section ids, headings, table cells, image sources, links to anything."""

    def __init__(self):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.cells: list[str] = []
        self.headings: list[str] = []
        self.section_cells: dict[str, list[str]] = {}
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
            self.section_cells[self.sections[-1]] = []
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)
        self._in = tag if tag in ("td", "th", "h2", "h3", "h4") else None

    def handle_data(self, data):
        if self._in in ("td", "th"):
            self.cells.append(data)
            self.section_cells[self.sections[-1]].append(data)
        elif self._in in ("h2", "h3", "h4"):
            self.headings.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A trained project with baselines and a robustness table added, so every section has its files."""
    root = copy_project(trained_project(tmp_path_factory, "singlelabel"), tmp_path_factory.mktemp("report") / "p")
    config = project_config(root, "baseline.models=logreg", "baseline.workers=1")
    execute("baseline", config)
    evaluate_robustness(config, "validation", ["noise:snr=5"])
    return root / "work"


def test_report_holds_every_section_self_contained(full_run):
    result = CliRunner().invoke(main, ["report", "--workdir", str(full_run)])
    assert result.exit_code == 0, result.output
    path = full_run / "output/report.html"
    page = parse(path)
    assert page.sections == [key for key, _, _ in SECTIONS]
    assert not page.external
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:  # each embedded picture is a whole PNG
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    record = json.loads((full_run / "processed/split.meta.json").read_text())
    sizes = page.section_cells["splits"]
    for split in ("train", "validation", "test"):
        row = sizes.index(split)  # the split-size table: name, then its count
        assert sizes[row + 1] == str(record["counts"][split])
    with open(full_run / "output/eval/validation/per_class.csv", newline="") as handle:
        classes = [row["class"] for row in csv.DictReader(handle)]
    assert set(classes) <= set(page.cells)
    assert {"per-class table", "threshold sweep", "confusion matrix"} <= set(page.headings)
    stats = json.loads((full_run / "tokenized/stats.json").read_text())
    perplexity = stats["splits"]["train"]["codebooks"][0]["perplexity"]
    assert f"{perplexity:.4g}" in page.section_cells["tokens"]
    with open(full_run / "output/eval/validation/robustness/model/robustness.csv", newline="") as handle:
        conditions = [row["condition"] for row in csv.DictReader(handle)]
    assert len(conditions) == 2 and set(conditions) <= set(page.section_cells["robustness"])
    assert any("logreg" in heading for heading in page.headings)


def test_only_the_sections_with_files(tmp_path, full_run):
    work = tmp_path / "work"
    shutil.copytree(full_run / "processed", work / "processed", ignore=shutil.ignore_patterns("frames"))
    page = parse(write_report(work, tmp_path / "partial.html"))
    assert page.sections == ["settings", "splits"]
    with pytest.raises(UserError, match="no run to report on"):
        write_report(tmp_path / "nothing")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package `chromium`)")
    from PIL import Image

    path = write_report(full_run)
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", path.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # text, tables and plots, not one flat colour
    assert (pixels < 128).mean() > 0.01  # enough dark pixels to be drawn content


def test_compare_links_each_runs_report(full_run, tmp_path):
    from audiotokens.evaluation.compare import compare_workdirs, comparison_markdown

    other = tmp_path / "other"
    shutil.copytree(full_run, other, ignore=shutil.ignore_patterns("report.html", "frames", "checkpoints"))
    write_report(full_run)
    markdown = comparison_markdown(compare_workdirs([full_run, other]))
    links = markdown.split("Reports: ", 1)[1]
    assert str(full_run / "output/report.html") in links and str(other) not in links


def test_the_training_table_keeps_the_test_line_that_states_clips_left_out(tmp_path_factory, tmp_path):
    """The test line of metrics.jsonl carries figures the epoch lines lack (accuracy_kept_classes,
    left_out_clips): it still shows, beside every epoch's train and validation rows."""
    from projects import left_out_project

    work = left_out_project(tmp_path_factory) / "work"
    lines = [json.loads(line) for line in (work / "output/metrics.jsonl").read_text().splitlines()]
    epochs, test = [row for row in lines if "train" in row], lines[-1]["test"]
    assert test["left_out_clips"] == 2 and "left_out_clips" not in epochs[0]["validation"]
    cells = parse(write_report(work, tmp_path / "report.html")).section_cells["training"]
    assert (cells.count("train"), cells.count("validation"), cells.count("test")) == (len(epochs), len(epochs), 1)
