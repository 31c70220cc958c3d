"""The command line as a user types it: exit codes, outputs, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from cellflow.cli import main
from cellflow.screen import Screen


def test_synth_info_export_and_reingest(tmp_path, capsys):
    store = tmp_path / "p.zarr"
    assert main(["synth", str(store), "--wells", "A01,B03", "--sites", "1", "--size", "128", "--z", "1",
                 "--scheduler", "synchronous"]) == 0
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "is a valid cellflow screen" in out and "acquired fields: 2 of 2" in out
    assert main(["export", str(store), str(tmp_path / "ome")]) == 0
    assert main(["ingest", str(tmp_path / "ome"), str(tmp_path / "back.zarr"), "--ome-zarr"]) == 0
    a, b = Screen.open(store).dataset(), Screen.open(tmp_path / "back.zarr").dataset()
    np.testing.assert_array_equal(a.images.values, b.images.values)


def test_ingest_pattern_and_bad_file_exit_status(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for well in ("A01", "A02"):
        for w in (1, 2):
            tifffile.imwrite(folder / f"{well}_s1_w{w}.tif", rng.integers(0, 4000, (32, 48), dtype=np.uint16))
    (folder / "A02_s1_w2.tif").write_bytes((folder / "A02_s1_w2.tif").read_bytes()[:50])
    code = main(["ingest", str(folder), str(tmp_path / "s.zarr"), "--pattern", "{well}_s{site}_w{channel}.tif",
                 "--channel-names", "1=DNA,2=Cyto"])
    assert code == 3  # finished, but a file was bad
    out = capsys.readouterr().out
    assert "A02_s1_w2.tif" in out
    screen = Screen.open(tmp_path / "s.zarr")
    assert [f.well for f in screen.fields()] == ["A01"] and list(screen.layout.channels) == ["DNA", "Cyto"]


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    assert "error: no screen store at" in capsys.readouterr().out
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    assert main(["info", str(tmp_path / "plain.zarr")]) == 2
    assert "is not a cellflow screen store" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {store: a.zarr}\ncluster: {kind: gpu}\n")
    assert main(["run", str(bad)]) == 2
    assert "bad.yaml:3: cluster.kind" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path):
    assert main(["segment", str(tmp_path), str(tmp_path / "out")]) == 2  # no method chosen
    assert main(["synth"]) == 2  # missing argument


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys, nuclei_data):
    monkeypatch.setenv("CELLFLOW_NUCLEI_DATA", str(nuclei_data))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "synthetic plate: labels_nuclei vs truth" in out and "real nuclei: labels_nuclei vs truth" in out
    for name in ("labels_nuclei", "labels_cells"):
        assert (tmp_path / "demo" / "tables" / name / "scores_plates.parquet").is_file()
    assert (tmp_path / "demo" / "demo.ome.zarr" / "DEMO.ome.zarr" / "zarr.json").is_file()
    report = tmp_path / "demo" / "demo.zarr" / "report.html"
    assert report.is_file() and "Runs of this screen" in report.read_text()
