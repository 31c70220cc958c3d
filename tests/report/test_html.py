"""The HTML report: key numbers of a hand-made run appear, every image is an inline PNG,
old and new run.json formats both render, bad run folders fail clearly, and a real run reports."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellflow.cli import main
from cellflow.metrics import ScoreOptions, write_tables
from cellflow.pipeline import parse_spec, run_spec
from cellflow.report import ReportError, Section, TableView, build_report, data_uri, load_summary, render_report

PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects every <img src> and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decoded_pngs(page: _Page) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert page.images and all(src.startswith(prefix) for src in page.images)
    pngs = [base64.b64decode(src[len(prefix):], validate=True) for src in page.images]
    assert all(png.startswith(PNG) for png in pngs)
    return pngs


def make_run_dir(root: Path) -> Path:
    """A run folder in the full run.json format, with score, measurement tables and a training history."""
    run_dir = root / "tables"
    options = ScoreOptions()
    rng = np.random.default_rng(7)
    rows = []
    for i, well in enumerate(["A01", "A02", "B01"]):
        for site in (0, 1):
            row = {"plate": "P1", "well": well, "site": site, "t": 0.0}
            row.update({c: int(rng.integers(0, 5)) for c in options.columns})
            row.update({c: float(rng.uniform(0.2, 1.0)) for c in options.columns if c.startswith("f1_")})
            row["f1_mean"] = float(np.mean([row[c] for c in options.columns if c.startswith("f1_0")]))
            row["merges"] = i
            rows.append(row)
    write_tables(pd.DataFrame(rows), run_dir / "labels_nuclei")
    (run_dir / "measurements").mkdir(parents=True)
    pd.DataFrame({"plate": ["P1"] * 3, "well": ["A01", "A02", "B01"], "n_objects": [11, 22, 33],
                  "fraction_4n": [0.125, 0.5, 0.25]}).to_parquet(run_dir / "measurements" / "wells.parquet")
    pd.DataFrame({"readout": ["fraction_4n"], "z_prime": [0.6131], "pos_mean": [0.5], "pos_sd": [0.01],
                  "neg_mean": [0.125], "neg_sd": [0.02], "n_pos": [1], "n_neg": [1]}).to_parquet(
        run_dir / "measurements" / "zprime.parquet")
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "history.json").write_text(json.dumps(
        [{"epoch": e, "loss": 1.0 / e, "val_f1": 0.2 * e, "learning_rate": 1e-3, "seconds": 1.0} for e in (1, 2, 3)]))
    summary = {
        "run_id": "20261121T101500Z-ab12cd", "spec": {"name": "hand-made", "stages": {"score": {}}},
        "spec_path": "specs/x.yaml", "store": str(root / "missing.zarr"), "screen_id": "sid-42",
        "started": "2026-11-21T10:15:00Z", "finished": "2026-11-21T10:16:40Z",
        "status": "quarantined", "exit_code": 3,
        "versions": {"cellflow": "0.1.0", "numpy": "9.9.9"},
        "dashboard": "http://127.0.0.1:8787/status", "cluster": {"kind": "local", "workers": 2},
        "stages": {"autolabel": {"tasks": 6, "done": 5, "skipped": 0, "quarantined": 1, "seconds": 4.5,
                                 "chunks_written": 10, "fields_per_s": 1.25}},
        "seconds": {"input": 1.0, "build": 0.5, "compute": 98.5, "total": 100.0},
        "quarantined": [{"stage": "autolabel", "plate": "P1", "well": "B01", "site": 1, "t": 0.0,
                         "error": "ValueError: <bad> field & co"}],
        "tables": {"labels_nuclei/fields": str(run_dir / "labels_nuclei" / "scores_fields.parquet")},
        "models": [{"stage": "predict", "path": str(model_dir / "model.pt"), "sha256": "f00d" * 16,
                    "architecture": "unet"}],
        "illumination": False,
    }
    (run_dir / "run.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run_dir(tmp_path)


def test_report_of_a_hand_made_run_holds_its_numbers_and_inline_pngs(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    html = path.read_text(encoding="utf-8")
    page = parse_page(path)
    text = " ".join(page.text)
    plates = pd.read_parquet(run_dir / "labels_nuclei" / "scores_plates.parquet")
    for expected in ("quarantined", "20261121T101500Z-ab12cd", "sid-42", "2026-11-21T10:16:40Z", "100.0",
                     "1.250",  # fields_per_s, to 3 decimals
                     "0.613",  # Z'
                     f"{plates['f1_mean'].iloc[0]:.3f}", "ValueError: <bad> field & co", "f00d" * 16, "9.9.9"):
        assert expected in text, expected
    assert "<bad>" not in html and "&lt;bad&gt; field &amp; co" in html  # escaped
    assert '<a href="http://127.0.0.1:8787/status">' in html
    assert "could not be opened" in text  # store gone: its sections say so
    pngs = decoded_pngs(page)
    # F1 curve, errors, per-field F-score curve, F1 heat map, 2 readout heat maps, training curves
    assert len(pngs) == 7
    assert "http" not in "".join(page.images)


def test_old_run_json_renders_with_not_recorded_sections(tmp_path):
    run_dir = tmp_path / "tables"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "spec": {"name": "old"}, "store": str(tmp_path / "nowhere.zarr"), "screen_id": "s1",
        "tasks": {"autolabel": 4, "score": 4}, "chunks_recorded": {"labels_nuclei": 4},
        "seconds": {"input": 0.5, "compute": 2.0}, "tables": {},
    }))
    page = parse_page(build_report(run_dir, out=tmp_path / "r.html"))
    text = " ".join(page.text)
    assert "Quarantined fields: not recorded." in text and "Versions: not recorded." in text
    assert "not recorded by this runner" in text and "No score tables" in text
    assert page.images == []


def test_bad_run_dir_is_a_clear_error_and_exit_status_2(tmp_path, capsys):
    with pytest.raises(ReportError, match=str(tmp_path)):
        build_report(tmp_path)
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} holds no run.json" in capsys.readouterr().out.replace("\n", "")
    (tmp_path / "run.json").write_text("[1, 2")
    with pytest.raises(ReportError, match="not readable JSON"):
        load_summary(tmp_path)


def test_render_report_escapes_text_and_data_uri_needs_png():
    table = TableView("t<1>", ("a",), (("<x>",),), (False,))
    html = render_report(title="<script>alert(1)</script>", status="ok", header=[("k", "<v>")],
                         sections=[Section("S&S", "s", notes=("<n>",), tables=(table,))])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;x&gt;" in html and "S&amp;S" in html
    assert "status-ok" in html
    with pytest.raises(ValueError, match="expected PNG bytes"):
        data_uri(b"GIF89a")


@pytest.mark.slow
def test_end_to_end_run_then_cellflow_report(tmp_path, capsys):
    wells = ["A01", "B02"]
    spec = parse_spec({
        "name": "report-e2e",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": wells, "sites": 1, "shape_yx": [96, 128], "n_z": 1, "seed": 3}},
        "stages": {"illumination": {"method": "polynomial"},
                   "autolabel": {"nuclear_channel": "DNA", "diameter_um": 16},
                   "score": {"truth": "truth_nuclei", "pred": "labels_nuclei"}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })
    result = run_spec(spec, progress=False)
    assert main(["report", str(tmp_path / "tables")]) == 0
    path = tmp_path / "tables" / "report.html"
    assert str(path) in capsys.readouterr().out.replace("\n", "")
    page = parse_page(path)
    text = " ".join(page.text)
    plate = result.tables["labels_nuclei/plates"].iloc[0]
    assert f"{plate['f1_mean']:.3f}" in text and result.screen.screen_id in text
    for title in ("F1 vs IoU threshold", "Percentage of cells vs F-score", "Illumination functions",
                  *(f"P1 {w}" for w in wells)):
        assert title in text, title
    # F1 curve, errors, cells F-score, F1 heat map, illumination, one overlay per well
    assert len(decoded_pngs(page)) == 5 + len(wells)


def test_a_damaged_chunk_loses_one_overlay_not_the_report(tmp_path, capsys, monkeypatch):
    """After a night with a corrupt chunk the report must still be written, naming what it could not read."""
    import cellflow.report.build as build

    wells = ["A01", "B02"]
    spec = parse_spec({
        "name": "report-damaged",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": wells, "sites": 1, "shape_yx": [96, 128], "n_z": 1, "seed": 3,
                                "channels": ["DNA"]}},
        "stages": {"autolabel": {"nuclear_channel": "DNA", "diameter_um": 16}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })
    result = run_spec(spec, progress=False)
    assert result.status == "ok"
    chunk = tmp_path / "p.zarr" / "images" / "c" / "0" / "1" / "0" / "0" / "0" / "0" / "0" / "0"  # P1 B02 site 0
    assert chunk.is_file()
    chunk.write_bytes(b"\x28\xb5\x2f\xfd not a zstd frame")
    assert main(["report", str(tmp_path / "tables")]) == 0
    text = " ".join(parse_page(tmp_path / "tables" / "report.html").text)
    assert "P1 A01" in text and "Not shown, unreadable: P1 B02 site 0" in text

    def broken(*args, **kwargs):
        raise ValueError("an unreadable illumination array")

    monkeypatch.setattr(build, "_illumination_section", broken)
    assert main(["report", str(tmp_path / "tables")]) == 0
    text = " ".join(parse_page(tmp_path / "tables" / "report.html").text)
    assert "This section could not be built: ValueError: an unreadable illumination array" in text
    assert "P1 A01" in text  # the other sections are there


def test_plate_maps_are_drawn_per_labels_variable_and_long_tables_come_after_them(tmp_path, monkeypatch):
    """A measure run's well table has one row per well *and labels variable*: each map must show one variable's
    values (one map holding both painted one over the other, silently), the assay's Z' readouts come first,
    constant columns and histogram bins get no map, and a per-field histogram is one short cell, not 60 lines."""
    from cellflow.report import build as report_build

    run_dir = tmp_path / "tables"
    (run_dir / "measurements").mkdir(parents=True)
    rng = np.random.default_rng(11)
    well_names = ["A01", "A02", "B01", "B02"]
    wells = pd.concat([pd.DataFrame({
        "labels": labels, "plate": "P1", "well": well_names, "n_fields": 4,
        "n_objects": rng.integers(10, 99, 4), "area_mean": rng.uniform(100, 900, 4),
        "fraction_4n": rng.uniform(0, 1, 4), "dna_hist_0_0.25": rng.integers(0, 9, 4)})
        for labels in ("labels_cells", "labels_nuclei")], ignore_index=True)
    wells.to_parquet(run_dir / "measurements" / "wells.parquet")
    pd.DataFrame({"labels": ["labels_cells", "labels_nuclei"], "plate": "P1", "readout": "fraction_4n",
                  "z_prime": [0.25, 0.625]}).to_parquet(run_dir / "measurements" / "zprime.parquet")
    pd.DataFrame({"plate": ["P1"], "well": ["A01"], "site": [0], "dna_bins": [list(range(1000, 1060))]}).to_parquet(
        run_dir / "measurements" / "fields.parquet")
    (run_dir / "run.json").write_text(json.dumps({"status": "ok", "store": str(tmp_path / "gone.zarr")}))
    drawn: list[tuple[pd.DataFrame, str]] = []
    real = report_build.plots.plate_heatmap
    monkeypatch.setattr(report_build.plots, "plate_heatmap",
                        lambda frame, value, **kw: drawn.append((frame.copy(), value)) or real(frame, value, **kw))

    page = parse_page(build_report(run_dir))
    text = " ".join(page.text)
    assert [(f["labels"].unique().tolist(), value) for f, value in drawn] == [
        (["labels_cells"], "fraction_4n"), (["labels_cells"], "n_objects"), (["labels_cells"], "area_mean"),
        (["labels_nuclei"], "fraction_4n"), (["labels_nuclei"], "n_objects"), (["labels_nuclei"], "area_mean")]
    for frame, value in drawn:  # each map gets its own variable's values, one per well
        labels = frame["labels"].iloc[0]
        expected = wells[wells["labels"] == labels].set_index("well")[value]
        pd.testing.assert_series_equal(frame.set_index("well")[value], expected)
    assert "labels_nuclei: fraction_4n per well" in text and "Z' between the control wells: 0.62" in text
    assert "n_fields per well" not in text and "dna_hist_0_0.25 per well" not in text
    assert "[60 values]" in text and "1059" not in text
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.index("labels_nuclei: area_mean per well") < html.index("Readouts per well") < html.index(
        "Readouts per field")
