"""cellflow segment: a folder of images in, one label TIFF per image out, equal to the eager kernel."""

from __future__ import annotations

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from cellflow.errors import StoreExistsError
from cellflow.graph import AutolabelParams
from cellflow.ops import segment_nuclei
from cellflow.pipeline.segment import segment
from cellflow.pipeline.spec import ClusterSpec

PICK = ("dsb2018_stage1_train_subset", 3)  # three real grey fluorescence images of different sizes


@pytest.fixture
def folder(tmp_path, nuclei_data):
    source, n = PICK
    images = sorted((nuclei_data / source / "images").glob("*.png"))
    grey = [p for p in images if iio.imread(p)[..., :3].std(axis=-1).max() == 0][:n]  # R=G=B
    assert len(grey) == n
    out = tmp_path / "in"
    out.mkdir()
    for p in grey:
        shutil.copy(p, out / p.name)
    return out


def _eager(path):
    """Independent reference: read with imageio, reduce RGB by the rounded mean, run the kernel."""
    image = iio.imread(path)
    if image.ndim == 3:
        image = np.rint(image[..., :3].astype(np.float64).mean(axis=-1))
    return segment_nuclei(image.astype(np.float32))


@pytest.mark.parametrize("cluster", [ClusterSpec(kind="threads"), ClusterSpec(n_workers=2, dashboard_address="127.0.0.1:0")])
def test_folder_labels_equal_the_eager_kernel(folder, tmp_path, cluster):
    out = tmp_path / f"labels-{cluster.kind}"
    result = segment(folder, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=cluster, progress=False)
    assert not result.failed
    assert sorted(p.name for p in result.label_files) == sorted(p.stem + ".tif" for p in folder.iterdir())
    for source in folder.iterdir():
        labels = tifffile.imread(out / f"{source.stem}.tif")
        expected = _eager(source)
        assert labels.dtype == np.uint32 and labels.shape == expected.shape
        np.testing.assert_array_equal(labels, expected)
        assert result.objects[source.stem] == int(expected.max()) > 0


def test_existing_labels_are_never_overwritten_silently(folder, tmp_path):
    params = AutolabelParams(nuclear_channel="image", illumination=False)
    out = tmp_path / "labels"
    out.mkdir()
    victim = out / f"{next(folder.iterdir()).stem}.tif"
    victim.write_bytes(b"precious")
    with pytest.raises(StoreExistsError, match=r"1 label file\(s\) already exist .* pass --overwrite"):
        segment(folder, out, params=params, cluster=ClusterSpec(kind="threads"), progress=False)
    assert victim.read_bytes() == b"precious"
    segment(folder, out, params=params, cluster=ClusterSpec(kind="threads"), overwrite=True, progress=False)
    assert tifffile.imread(victim).dtype == np.uint32


def test_a_bad_image_is_named_and_the_rest_are_segmented(folder, tmp_path):
    bad = folder / "broken.tif"
    tifffile.imwrite(bad, np.ones((64, 64), np.uint16))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    out = tmp_path / "labels"
    result = segment(folder, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    assert [path for path, _ in result.failed] == [str(bad)]
    assert len(result.label_files) == 3 and not (out / "broken.tif").exists()


def test_folder_with_a_model_equals_eager_inference(folder, tmp_path):
    """--model path: tiled, blended probabilities equal whole-image inference (<= 1e-4, the tiling
    bar) and each label file equals the post-processing of those probabilities."""
    import torch

    from cellflow.nn.checkpoint import save_checkpoint
    from cellflow.nn.models import build_model
    from cellflow.nn.normalize import Normalization, normalize
    from cellflow.nn.predict import whole_image_probabilities
    from cellflow.ops import probabilities_to_labels
    from cellflow.screen import Screen

    torch.manual_seed(3)
    model = build_model("resunet", in_channels=1, classes=3).eval()
    norm = Normalization(method="percentile")
    save_checkpoint(tmp_path / "m.pt", model, normalization=norm, channels=["image"],
                    class_names=["background", "interior", "boundary"])
    out = tmp_path / "labels"
    result = segment(folder, out, model=tmp_path / "m.pt", tile=96, cluster=ClusterSpec(kind="threads"),
                     keep_store=tmp_path / "kept.zarr", progress=False)
    assert not result.failed and len(result.label_files) == 3
    screen = Screen.open(tmp_path / "kept.zarr")
    ds = screen.dataset()
    for key in screen.fields():
        where = key._asdict()
        name = str(ds.source_name.sel(plate=key.plate, well=key.well, site=key.site, t=key.t).values)
        h, w = (int(ds[v].sel(plate=key.plate, well=key.well, site=key.site, t=key.t)) for v in ("extent_y", "extent_x"))
        image = iio.imread(folder / f"{name}.png")
        grey = np.rint(image[..., :3].astype(np.float64).mean(axis=-1)) if image.ndim == 3 else image
        expected = whole_image_probabilities(model, normalize(grey[None].astype(np.float32), norm))
        stored = screen.read("probabilities", **where)[:, :h, :w]
        np.testing.assert_allclose(stored, expected, atol=1e-4, rtol=0)
        labels = tifffile.imread(out / f"{name}.tif")
        np.testing.assert_array_equal(labels, probabilities_to_labels(stored))
