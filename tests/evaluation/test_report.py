"""`audiotokens report`: one self-contained HTML page that opens with the answer (every model beside the
baselines, validation and test) and holds every section the workdir has files for, settings last."""
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
from audiotokens.evaluation.html_report import (
    ANSWER,
    SECTIONS,
    TEST_GAP,
    VALIDATION_GAP,
    Scorer,
    best_baseline,
    gaps,
    write_report,
)
from audiotokens.evaluation.robustness import evaluate_robustness
from audiotokens.pipeline.run import execute

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
METRIC = "accuracy"  # the primary metric of the single-label project


class Page(HTMLParser):
    """What the page holds: section ids, headings, table cells and rows, image sources, links to anything,
    and which tables sit inside a folded <details>."""

    def __init__(self):
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.cells: list[str] = []
        self.headings: list[str] = []
        self.section_cells: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[list[str]]]] = {}  # section -> tables -> rows -> cells
        self.folded: dict[str, list[bool]] = {}  # section -> whether each of its tables is inside <details>
        self.paragraphs: dict[str, list[str]] = {}  # section -> text of its <p> elements
        self._in: str | None = None
        self._details = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
            for store in (self.section_cells, self.tables, self.folded, self.paragraphs):
                store[self.sections[-1]] = []
        if tag == "details":
            self._details += 1
        if tag == "table":
            self.tables[self.sections[-1]].append([])
            self.folded[self.sections[-1]].append(self._details > 0)
        if tag == "tr":
            self.tables[self.sections[-1]][-1].append([])
        if tag in ("td", "th"):
            self.tables[self.sections[-1]][-1][-1].append("")
        if tag == "p" and self.sections:
            self.paragraphs[self.sections[-1]].append("")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)
        if tag in ("td", "th", "h2", "h3", "h4", "p"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == "details":
            self._details -= 1
        if tag in ("td", "th", "h2", "h3", "h4", "p"):
            self._in = None

    def handle_data(self, data):
        if self._in in ("td", "th"):
            self.cells.append(data)
            self.section_cells[self.sections[-1]].append(data)
            self.tables[self.sections[-1]][-1][-1][-1] += data
        elif self._in in ("h2", "h3", "h4"):
            self.headings.append(data)
        elif self._in == "p" and self.sections:
            self.paragraphs[self.sections[-1]][-1] += data

    def answer_rows(self) -> list[dict[str, str]]:
        """The answer table (the first table of the first section) as header -> cell, one dict per row."""
        header, *rows = self.tables[self.sections[0]][0]
        return [dict(zip(header, row)) for row in rows]


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def parse_file(path: Path) -> Page:
    return parse(path.read_text(encoding="utf-8"))


def figure(value: float) -> str:
    return f"{value:.4g}"  # as the page writes a figure


def metrics(workdir: Path, source: str) -> dict:
    return json.loads((workdir / "output" / source / "metrics.json").read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A trained project with baselines and a robustness table added, so every section has its files."""
    root = copy_project(trained_project(tmp_path_factory, "singlelabel"), tmp_path_factory.mktemp("report") / "p")
    config = project_config(root, "baseline.models=logreg", "baseline.workers=1")
    execute("baseline", config)
    evaluate_robustness(config, "validation", ["noise:snr=5"])
    return root / "work"


@pytest.fixture(scope="module")
def siblings(tmp_path_factory) -> dict[str, Path]:
    """Workdirs beside full_run's on the same split: a frames control and a CNN on frames, trained and
    evaluated (no baselines of their own)."""
    found = {}
    for name, settings in (("frames", ["model.input=frames", "model.pooling=mean"]),
                           ("cnn", ["model.input=frames", "model.encoder=cnn", "model.pooling=mean"])):
        root = copy_project(trained_project(tmp_path_factory, "singlelabel"), tmp_path_factory.mktemp(name) / name)
        config = project_config(root, *settings)
        execute("train", config)
        execute("evaluate", config)
        found[name] = root / "work"
    return found


def test_report_holds_every_section_self_contained(full_run):
    result = CliRunner().invoke(main, ["report", "--workdir", str(full_run)])
    assert result.exit_code == 0, result.output
    path = full_run / "output/report.html"
    page = parse_file(path)
    assert page.sections == [ANSWER[0], *(key for key, _, _ in SECTIONS if key != "tune")]  # tune's: tests/tuning/
    assert page.sections[0] == "answer" and page.sections[-1] == "settings"
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
    assert (full_run / "tokenized/histogram_train.png").is_file()  # drawn by the report, not by tokenize
    with open(full_run / "output/eval/validation/robustness/model/robustness.csv", newline="") as handle:
        conditions = [row["condition"] for row in csv.DictReader(handle)]
    assert len(conditions) == 2 and set(conditions) <= set(page.section_cells["robustness"])
    assert any("logreg" in heading for heading in page.headings)


def test_the_first_section_is_the_answer_table_of_the_metrics_files(full_run, tmp_path):
    page = parse_file(write_report(full_run, tmp_path / "report.html"))
    assert page.sections[0] == "answer"
    header = page.tables["answer"][0][0]
    assert header[:4] == ["model", "run", f"validation {METRIC}", f"test {METRIC}"]
    rows = {row["model"]: row for row in page.answer_rows()}
    assert list(rows) == ["token model", "MFCC + logistic regression"]
    model, baseline = rows["token model"], rows["MFCC + logistic regression"]
    for split in ("validation", "test"):
        assert model[f"{split} {METRIC}"] == figure(metrics(full_run, f"eval/{split}")[METRIC])
        assert baseline[f"{split} {METRIC}"] == figure(metrics(full_run, f"baselines/logreg/{split}")[METRIC])
    # robustness: each scorer under the corruption, as its robustness table states it
    for scorer, row in (("model", model), ("baseline_logreg", baseline)):
        table = json.loads((full_run / f"output/eval/validation/robustness/{scorer}/robustness.json").read_text())
        noisy = [c for c in table["conditions"] if c["condition"] != "clean"]
        assert len(noisy) == 1
        assert row[f"validation {METRIC} under {noisy[0]['condition']}"] == figure(noisy[0][METRIC])
    # the gap to the best (here: the only) baseline, on validation and on test
    for split, gap in (("validation", VALIDATION_GAP), ("test", TEST_GAP)):
        expected = metrics(full_run, f"eval/{split}")[METRIC] - metrics(full_run, f"baselines/logreg/{split}")[METRIC]
        assert model[gap] == f"{expected:+.4g}" and baseline[gap] == ""
    assert "reported, not chosen" in TEST_GAP
    answer_text = " ".join(page.paragraphs["answer"])
    said = f"On validation the token model scores {METRIC} {figure(metrics(full_run, 'eval/validation')[METRIC])}"
    assert said in answer_text and "the best baseline, MFCC + logistic regression" in answer_text
    # best and worst classes: validation AP from evaluate's per-class table, best first
    with open(full_run / "output/eval/validation/per_class.csv", newline="") as handle:
        per_class = [row for row in csv.DictReader(handle) if row["ap"]]
    ranked = page.tables["answer"][1]
    assert ranked[0] == ["rank", "class", "validation positives", "validation AP", "validation F1"]
    assert [row[1] for row in ranked[1:]] == [row["class"] for row in sorted(per_class, key=lambda r: -float(r["ap"]))]
    assert [row[3] for row in ranked[1:]] == [figure(float(row["ap"])) for row in
                                              sorted(per_class, key=lambda r: -float(r["ap"]))]
    assert any("Training curves" in heading for heading in page.headings)
    assert "run `audiotokens baseline`" not in answer_text and "--corrupt" not in answer_text


def test_settings_come_last_and_folded(full_run, tmp_path):
    page = parse_file(write_report(full_run, tmp_path / "report.html"))
    assert page.sections[-1] == "settings"
    assert page.folded["settings"] and all(page.folded["settings"])
    assert not any(folded for section, tables in page.folded.items() if section != "settings" for folded in tables)
    record = json.loads((full_run / "output/model.meta.json").read_text())
    assert "model.input" in page.section_cells["settings"]
    assert record["params"]["model.input"] == "tokens"


def test_absent_pieces_are_absent_with_the_command_that_makes_them(tmp_path, full_run):
    work = tmp_path / "work"  # the run without baselines, robustness or test figures
    shutil.copytree(full_run, work, ignore=shutil.ignore_patterns("baselines", "robustness", "test", "checkpoints"))
    page = parse_file(write_report(work, tmp_path / "bare.html"))
    rows = page.answer_rows()
    assert [row["model"] for row in rows] == ["token model"]
    assert list(rows[0]) == ["model", "run", f"validation {METRIC}"]  # no test, robustness or gap columns
    hints = " ".join(page.paragraphs["answer"])
    assert "run `audiotokens baseline`" in hints and "evaluate --corrupt" in hints and "--compare DIR" in hints
    assert "baselines" not in page.sections and "robustness" not in page.sections
    assert not any("logreg" in cell or "under" in cell for cell in page.section_cells["answer"])

    with open(work / "output/metrics.jsonl", "a") as log:  # a line cut by a killed run: the answer says so,
        log.write('{"epoch": 9, "tra')  # the rest of the page stands
    page = parse_file(write_report(work, tmp_path / "cut.html"))
    assert page.sections[0] == "answer" and "training" in page.sections
    assert any("metrics.jsonl line" in line and "re-run `audiotokens train`" in line
               for line in page.paragraphs["answer"])

    shutil.rmtree(work / "output")  # the split and the frames only: nothing to answer with yet
    shutil.rmtree(work / "tokenized")
    page = parse_file(write_report(work, tmp_path / "partial.html"))
    assert page.sections == ["splits", "settings"]
    with pytest.raises(UserError, match="no run to report on"):
        write_report(tmp_path / "nothing")


def test_compare_adds_the_sibling_runs_models(full_run, siblings, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--workdir", str(full_run), "--out", str(out),
                                       "--compare", str(siblings["frames"]), "--compare", str(siblings["cnn"])])
    assert result.exit_code == 0, result.output
    page = parse_file(out)
    rows = page.answer_rows()
    assert [(row["model"], row["run"]) for row in rows] == [  # every workdir is called work: labelled by path
        ("token model", str(full_run)), ("frames control", str(siblings["frames"])),
        ("CNN on frames", str(siblings["cnn"])), ("MFCC + logistic regression", str(full_run))]
    for row, workdir in zip(rows[1:3], (siblings["frames"], siblings["cnn"])):
        for split in ("validation", "test"):
            assert row[f"{split} {METRIC}"] == figure(metrics(workdir, f"eval/{split}")[METRIC])
        gap = metrics(workdir, "eval/validation")[METRIC] - metrics(full_run, "baselines/logreg/validation")[METRIC]
        assert row[VALIDATION_GAP] == f"{gap:+.4g}"
    assert "--compare DIR" not in " ".join(page.paragraphs["answer"])  # every kind of model is there

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["report", "--workdir", str(full_run), "--compare", str(empty)])
    assert result.exit_code != 0 and "is it a workdir of a run?" in result.output


def test_the_best_baseline_is_chosen_on_validation_never_on_test():
    model = Scorer("token model", "run", False, {"validation mAP": 0.80, "test mAP": 0.90})
    svm = Scorer("MFCC + SVM", "run", True, {"validation mAP": 0.85, "test mAP": 0.70})
    logreg = Scorer("MFCC + logistic regression", "run", True, {"validation mAP": 0.75, "test mAP": 0.95})
    assert best_baseline([model, svm, logreg], "mAP") is svm  # the best on validation, though the worst on test
    assert gaps(model, svm, "mAP") == {VALIDATION_GAP: "-0.05", TEST_GAP: "+0.2"}
    assert gaps(svm, svm, "mAP") == {}


def test_a_kfold_run_joins_with_its_mean_and_spread(full_run, tmp_path):
    from audiotokens.evaluation.compare import write_kfold_summary

    folds = []
    for k, value in enumerate((0.5, 0.7)):  # each fold's validation figure, set by hand
        fold = tmp_path / f"fold_{k}"
        shutil.copytree(full_run / "output/eval/validation", fold / "output/eval/validation")
        shutil.copy(full_run / "output/model.meta.json", fold / "output/model.meta.json")
        path = fold / "output/eval/validation/metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), METRIC: value}))
        folds.append(fold)
    write_kfold_summary(tmp_path / "kfold", folds)
    page = parse_file(write_report(full_run, tmp_path / "report.html", compare=[tmp_path / "kfold"]))
    row = next(row for row in page.answer_rows() if row["run"] == "kfold")
    assert row["model"] == "token model" and row[f"validation {METRIC}"] == f"0.6 ± {np.std([0.5, 0.7], ddof=1):.2g}"
    gap = 0.6 - metrics(full_run, "baselines/logreg/validation")[METRIC]
    assert row[VALIDATION_GAP] == f"{gap:+.4g}" and row[f"test {METRIC}"] == ""


def test_report_renders_in_headless_chromium(full_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian package `chromium`)")
    from PIL import Image

    path = write_report(full_run, tmp_path / "report.html")
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", path.resolve().as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    rendered, written = parse(dom), parse_file(path)
    assert rendered.sections == written.sections and rendered.sections[0] == "answer"
    assert rendered.answer_rows() == written.answer_rows()
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,900", path.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # the first screen holds text, tables and lines, not one flat colour
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
    cells = parse_file(write_report(work, tmp_path / "report.html")).section_cells["training"]
    assert (cells.count("train"), cells.count("validation"), cells.count("test")) == (len(epochs), len(epochs), 1)
