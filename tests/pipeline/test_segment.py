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
