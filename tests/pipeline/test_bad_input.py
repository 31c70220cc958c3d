"""Bad input gets a clear error naming the file or field, and nothing else is lost (issue 6, item 3).

Each case spoils one file of a small plate of TIFFs (or the model), runs the spec, and checks
the message and that every other field was segmented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cellflow.errors import SpecError
from cellflow.pipeline import parse_spec, run_spec
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field

WELLS = ("A01", "B02")
SITES = 3
CHANNELS = ("DNA", "Cyto")


def _plate(folder: Path) -> dict[tuple[str, int, str], Path]:
    """Two wells x three sites x two channels of synthetic cells as single-page uint16 TIFFs."""
    spec = SyntheticSpec(wells=WELLS, sites=SITES, shape_yx=(96, 128), channels=CHANNELS, n_z=1, seed=9)
    folder.mkdir(parents=True)
    files = {}
    for well in WELLS:
        for site in range(SITES):
            images = synthesize_field(spec, plate="P1", well=well, site=site).images
            for c, channel in enumerate(CHANNELS):
                path = folder / f"P1_{well}_s{site}_{channel}.tif"
                tifffile.imwrite(path, images[0, c, 0])
                files[well, site, channel] = path
    return files


def _spec(tmp_path: Path, stages: dict | None = None):
    return parse_spec({
        "name": "bad-input",
        "input": {"store": str(tmp_path / "p.zarr"), "folder": str(tmp_path / "tiffs"),
                  "pattern": "{plate}_{well}_s{site}_{channel}.tif"},
        "stages": stages or {"autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto",
                                           "diameter_px": 12}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path: Path, change) -> None:
    tifffile.imwrite(path, change(tifffile.imread(path)))


def _saturate(image: np.ndarray) -> np.ndarray:
    out = np.full_like(image, np.iinfo(image.dtype).max)
    out[:4] = image[:4]
    return out


def _with_nan(image: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out[10:20, 10:20] = np.nan
    return out


CASES = {
    # case: (how to spoil P1_B02_s1 channel DNA, stage that reports it, text of the message)
    "truncated TIFF": (_truncate, "ingest", "cannot read pixels"),
    "corrupt TIFF": (lambda p: p.write_bytes(b"II*\x00" + bytes(range(256)) * 8), "ingest", "cannot read"),
    "wrong shape": (lambda p: _rewrite(p, lambda a: a[:80]), "ingest", "is 80x128 pixels; expected 96x128"),
    "wrong dtype": (lambda p: _rewrite(p, lambda a: a.astype(np.float32) + 0.5), "ingest", "float"),
    "NaN pixels": (lambda p: _rewrite(p, _with_nan), "ingest", "holds 100 NaN or infinite pixels"),
    "missing channel": (lambda p: p.unlink(), "autolabel", "channel 'DNA' is blank: every pixel is 0"),
    "all-zero field": (lambda p: _rewrite(p, np.zeros_like), "autolabel", "channel 'DNA' is blank"),
    "saturated field": (lambda p: _rewrite(p, _saturate), "autolabel", "is saturated: 96% of pixels at"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_bad_file_is_reported_and_every_other_field_completes(tmp_path, case):
    files = _plate(tmp_path / "tiffs")
    spoil, stage, text = CASES[case]
    bad = files["B02", 1, "DNA"]
    spoil(bad)
    result = run_spec(_spec(tmp_path), progress=False)
    assert result.status == "quarantined" and result.exit_code == 3
    reported = [q for q in result.quarantined if q["stage"] == stage]
    assert len(reported) == 1, result.quarantined
    assert text in reported[0]["error"]
    if stage == "ingest":
        assert reported[0]["field"] == str(bad)  # names the file
    else:
        assert reported[0]["field"] == "P1/B02/1/0" and "P1/B02/1/0" in reported[0]["error"]
    # every other field was segmented and recorded in the ledger
    others = [k for k in result.screen.fields(acquired_only=False) if (k.well, k.site) != ("B02", 1)]
    assert result.stages["autolabel"]["done"] == len(others) == len(WELLS) * SITES - 1
    completed = result.screen.ledger("labels_nuclei")
    for key in others:
        assert result.screen.read("labels_nuclei", **key._asdict()).max() > 0
    # exactly the other fields' chunks are recorded complete; none of the bad field's
    assert int(completed.completed().sum()) == len(others) * int(np.prod(completed.grid_shape[-2:]))


def test_unreadable_model_file_is_a_clear_error(tmp_path):
    _plate(tmp_path / "tiffs")
    model = tmp_path / "model.pt"
    model.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match=r"model\.pt"):
        run_spec(_spec(tmp_path, {"predict": {"model": str(model)}}), progress=False)


def test_model_refused_when_its_channels_are_not_in_the_screen(tmp_path):
    from cellflow.nn.checkpoint import save_checkpoint
    from cellflow.nn.models import ModelConfig
    from cellflow.nn.normalize import Normalization

    _plate(tmp_path / "tiffs")
    torch.manual_seed(0)
    config = ModelConfig("unet", 1, 3, {"width": 2, "levels": 2})
    path = tmp_path / "bf.pt"
    save_checkpoint(path, config.build(), normalization=Normalization(), channels=("BF",),
                    class_names=("background", "interior", "boundary"))
    with pytest.raises(ValueError, match=r"BF.*not in|channels"):
        run_spec(_spec(tmp_path, {"predict": {"model": str(path)}}), progress=False)


def test_pickle_payloads_are_never_executed(tmp_path):
    """weights_only loading: a checkpoint that would run code on unpickling is refused."""
    import pickle

    _plate(tmp_path / "tiffs")

    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": Boom()}, handle)
    with pytest.raises(Exception, match=r"evil\.pt"):
        run_spec(_spec(tmp_path, {"predict": {"model": str(path)}}), progress=False)
    assert not (tmp_path / "pwned").exists()


def test_mistyped_spec_field_names_the_yaml_line(tmp_path):
    from cellflow.pipeline import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text("name: x\ninput:\n  store: p.zarr\nstages:\n  autolabel:\n    nuclear_chanel: DNA\n")
    with pytest.raises(SpecError, match=r"spec\.yaml:6: stages\.autolabel.*nuclear_chanel"):
        load_spec(path)
