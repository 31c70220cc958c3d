"""cellflow segment: a folder of images in, one label TIFF per image out, equal to the eager kernel."""

from __future__ import annotations

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from rich.console import Console

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


def test_a_stores_own_labels_are_never_replaced_silently(tmp_path):
    """Segmenting a store that already holds labels_nuclei (the stains' auto labels) needs --overwrite."""
    from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

    screen = write_synthetic_screen(tmp_path / "p.zarr", SyntheticSpec(
        wells=("A01",), sites=2, shape_yx=(96, 96), channels=("DNA",), n_z=1, nuclei_per_field=600, seed=4))
    store, threads = screen.path, ClusterSpec(kind="threads")
    segment(store, None, params=AutolabelParams(diameter_px=12, illumination=False), cluster=threads, progress=False)
    keys = screen.fields()
    before = [screen.read("labels_nuclei", **k._asdict()) for k in keys]
    strict = AutolabelParams(diameter_px=12, illumination=False, nuclei={"threshold": 1e6})  # finds nothing
    with pytest.raises(StoreExistsError, match=r"already holds 'labels_nuclei'.*pass --overwrite"):
        segment(store, None, params=strict, cluster=threads, progress=False)
    for key, labels in zip(keys, before):
        np.testing.assert_array_equal(screen.read("labels_nuclei", **key._asdict()), labels)
    segment(store, None, params=strict, cluster=threads, overwrite=True, progress=False)
    assert all(int(b.max()) > 0 for b in before)
    assert all(not screen.read("labels_nuclei", **k._asdict()).any() for k in keys)  # replaced, as asked


def test_a_folder_of_z_stacks_is_segmented_on_the_z_mean(folder, tmp_path):
    """Multi-page TIFFs (a nuclear stain imaged at several focal planes) are z-stacks: labelled on their mean,
    as the classical auto labels of a store are; a file of another depth or of channels is named, never mixed in."""
    rng = np.random.default_rng(23)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    expected = {}
    for i, source in enumerate(sorted(folder.iterdir())):
        image = iio.imread(source)
        plane = (image[..., 0] if image.ndim == 3 else image).astype(np.float32)
        # three focal planes: in focus, and two dimmer, noisier ones
        stack = np.stack([plane, 0.7 * plane + rng.normal(0, 2, plane.shape), 0.5 * plane + 5]).clip(0, 255)
        stack = np.rint(stack).astype(np.uint16)
        if i == 0:
            tifffile.imwrite(stacks / f"{source.stem}.tif", stack, imagej=True, metadata={"axes": "ZYX"})
        else:
            tifffile.imwrite(stacks / f"{source.stem}.tif", stack, photometric="minisblack")
        expected[source.stem] = segment_nuclei(stack.astype(np.float32).mean(axis=0, dtype=np.float32))
    tifffile.imwrite(stacks / "two_planes.tif", np.zeros((2, 40, 40), np.uint16))
    tifffile.imwrite(stacks / "channels.tif", np.zeros((3, 40, 40), np.uint16), imagej=True,
                     metadata={"axes": "CYX"})
    out = tmp_path / "labels"
    result = segment(stacks, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    reasons = dict(result.failed)
    assert sorted(reasons) == [str(stacks / "channels.tif"), str(stacks / "two_planes.tif")]
    assert "along axis 'C' (channels)" in reasons[str(stacks / "channels.tif")]
    assert reasons[str(stacks / "two_planes.tif")].startswith("has 2 planes (pages); expected 3 like ")
    assert sorted(p.stem for p in result.label_files) == sorted(expected)
    for stem, labels in expected.items():
        written = tifffile.imread(out / f"{stem}.tif")
        assert written.shape == labels.shape and labels.max() > 0
        np.testing.assert_array_equal(written, labels)
        # the mean is not the in-focus plane alone: the oracle is not trivially met
    assert any(not np.array_equal(labels, segment_nuclei(iio.imread(folder / f"{stem}.png")[..., 0].astype(
        np.float32))) for stem, labels in expected.items())


def test_a_colour_composite_is_noted_or_reduced_to_the_chosen_channel(folder, tmp_path, capsys):
    """A DAPI-blue + GFP-green composite: the default mean mixes the stains, so each such file is named; --rgb blue
    segments the nuclear channel alone. Grey images stored as RGB (the real ones here) get no note."""
    from scipy import ndimage as ndi

    from cellflow.cli import main

    source = sorted(folder.iterdir())[0]
    grey = iio.imread(source)[..., 0]
    green = np.clip(ndi.grey_dilation(grey, size=(15, 15)) * 0.6, 0, 255)  # a cytoplasm-like stain around them
    composite = np.stack([np.zeros_like(grey), green.astype(np.uint8), grey], axis=-1)
    iio.imwrite(folder / "composite.png", composite)
    out = tmp_path / "mean"
    result = segment(folder, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    assert len(result.notes) == 1 and result.notes[0].startswith(f"{folder / 'composite.png'}: colour image")
    mean = np.rint(composite.astype(np.float64).mean(axis=-1)).astype(np.float32)
    np.testing.assert_array_equal(tifffile.imread(out / "composite.tif"), segment_nuclei(mean))
    blue = tmp_path / "blue"
    assert main(["segment", str(folder), str(blue), "--classical", "--rgb", "blue", "--workers", "0"]) == 0
    assert "note:" not in capsys.readouterr().out
    expected = segment_nuclei(grey.astype(np.float32))
    np.testing.assert_array_equal(tifffile.imread(blue / "composite.tif"), expected)
    assert not np.array_equal(expected, segment_nuclei(mean))  # the choice matters on this image
    # the CLI names the colour file under the default
    assert main(["segment", str(folder), str(tmp_path / "cli"), "--classical", "--workers", "0"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "note: " in printed and "composite.png: colour image (R, G, B differ)" in printed
    assert main(["segment", str(folder), str(tmp_path / "bad"), "--classical", "--rgb", "purple"]) == 2


def test_a_bad_image_is_named_and_the_rest_are_segmented(folder, tmp_path):
    bad = folder / "broken.tif"
    tifffile.imwrite(bad, np.ones((64, 64), np.uint16))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    out = tmp_path / "labels"
    result = segment(folder, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    assert [path for path, _ in result.failed] == [str(bad)]
    assert len(result.label_files) == 3 and not (out / "broken.tif").exists()


def test_floating_point_images_are_segmented_like_their_integer_twins(folder, tmp_path):
    """A float32 TIFF (a deconvolved or corrected export) is neither refused nor rounded: in a folder
    mixed with integer images, each gets the labels of the eager kernel on its own pixels."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    sources = sorted(folder.iterdir())
    for source in sources[:2]:  # integer PNGs, unchanged
        shutil.copy(source, mixed / source.name)
    image = iio.imread(sources[2])[..., :3].astype(np.float64).mean(axis=-1)
    floats = (np.rint(image) / 255.0).astype(np.float32)  # values no integer store holds
    floats[0, 0] = np.float32(0.1234567)
    tifffile.imwrite(mixed / "exported.tif", floats)
    out = tmp_path / "labels"
    result = segment(mixed, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    assert not result.failed and len(result.label_files) == 3
    np.testing.assert_array_equal(tifffile.imread(out / "exported.tif"), segment_nuclei(floats))
    for source in sources[:2]:
        np.testing.assert_array_equal(tifffile.imread(out / f"{source.stem}.tif"), _eager(source))
    assert result.objects["exported"] > 0


def test_an_image_no_analysis_can_use_is_reported_and_gets_no_label_file(folder, tmp_path, capsys):
    """A blank frame or one with NaN pixels is quarantined by the QC: named with its reason, no
    all-zero label file (it would read as "no nuclei"), exit status 3; the others are segmented."""
    from cellflow.cli import main

    blank, holes = folder / "blank.tif", folder / "holes.tif"
    tifffile.imwrite(blank, np.zeros((64, 80), np.uint16))
    with_nan = np.random.default_rng(1).random((64, 80)).astype(np.float32)
    with_nan[5:9, 5:9] = np.nan
    tifffile.imwrite(holes, with_nan)
    out = tmp_path / "labels"
    result = segment(folder, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    reasons = dict(result.failed)
    assert set(reasons) == {str(blank), str(holes)}
    assert "blank" in reasons[str(blank)] and "16 NaN or infinite pixels" in reasons[str(holes)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.stem + ".tif" for p in folder.iterdir() if p not in (blank, holes))
    for source in folder.iterdir():
        if source not in (blank, holes):
            np.testing.assert_array_equal(tifffile.imread(out / f"{source.stem}.tif"), _eager(source))
    assert main(["segment", str(folder), str(tmp_path / "cli"), "--classical", "--workers", "0"]) == 3
    said = capsys.readouterr().out
    assert f"not segmented: {blank}" in said and f"not segmented: {holes}" in said
    assert "wrote 3 label files" in said


def test_jpeg_images_are_segmented_and_files_left_alone_are_named(folder, tmp_path, capsys):
    from cellflow.cli import main

    first = sorted(folder.iterdir())[0]
    grey = np.rint(iio.imread(first)[..., :3].astype(np.float64).mean(axis=-1)).astype(np.uint8)
    iio.imwrite(folder / "exported.jpg", grey, quality=95)
    (folder / "notes.txt").write_text("plate map")
    (folder / "old").mkdir()
    shutil.copy(first, folder / "old" / first.name)
    out = tmp_path / "labels"
    result = segment(folder, out, params=AutolabelParams(nuclear_channel="image", illumination=False),
                     cluster=ClusterSpec(kind="threads"), progress=False)
    assert not result.failed
    assert sorted(result.skipped) == sorted([str(folder / "notes.txt"), str(folder / "old" / first.name)])
    decoded = iio.imread(folder / "exported.jpg")  # the lossy pixels, decoded independently
    np.testing.assert_array_equal(tifffile.imread(out / "exported.tif"), segment_nuclei(decoded.astype(np.float32)))
    assert main(["segment", str(folder), str(tmp_path / "cli"), "--classical", "--workers", "0"]) == 0
    said = capsys.readouterr().out
    assert "skipped 2 file(s)" in said and "notes.txt" in said and f"old/{first.name}" in said


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


def test_a_network_trained_on_bright_field_z_stacks_segments_a_folder_of_them(folder, tmp_path):
    """Sadanandan's use: a network trained on a plate's 3-plane bright-field stacks (inputs BF@z0..2) segments a
    folder of 3-page TIFFs; each file's planes are its inputs, equal to whole-image inference on that stack."""
    import torch

    from cellflow.errors import IngestError
    from cellflow.graph.predict import PredictParams
    from cellflow.nn.checkpoint import save_checkpoint
    from cellflow.nn.models import build_model
    from cellflow.nn.normalize import Normalization, normalize
    from cellflow.nn.predict import whole_image_probabilities
    from cellflow.ops import probabilities_to_labels
    from cellflow.pipeline.predict import predict

    torch.manual_seed(4)
    model = build_model("resunet", in_channels=3, classes=3, width=4).eval()
    norm = Normalization(method="percentile")
    save_checkpoint(tmp_path / "bf.pt", model, normalization=norm, channels=["BF@z0", "BF@z1", "BF@z2"],
                    class_names=["background", "interior", "boundary"])
    rng = np.random.default_rng(31)
    stacks = tmp_path / "bf"
    stacks.mkdir()
    written = {}
    for source in sorted(folder.iterdir())[:2]:
        plane = iio.imread(source)[..., 0].astype(np.float32)
        stack = np.stack([plane, 255 - plane, rng.normal(100, 10, plane.shape)]).clip(0, 255).astype(np.uint16)
        tifffile.imwrite(stacks / f"{source.stem}.tif", stack, photometric="minisblack")
        written[source.stem] = stack
    out = tmp_path / "labels"
    result = segment(stacks, out, model=tmp_path / "bf.pt", tile=64, cluster=ClusterSpec(kind="threads"),
                     progress=False)
    assert not result.failed and sorted(p.stem for p in result.label_files) == sorted(written)
    probs = tmp_path / "probs"
    predicted = predict(stacks, probs, PredictParams(model=str(tmp_path / "bf.pt"), tile=64),
                        cluster=ClusterSpec(kind="threads"), progress=False)
    assert not predicted.failed
    for stem, stack in written.items():
        expected = whole_image_probabilities(model, normalize(stack.astype(np.float32), norm))
        stored = tifffile.imread(probs / f"{stem}_prob.tif")
        np.testing.assert_allclose(stored, expected, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}.tif"), probabilities_to_labels(stored))
    # single planes for a z-stack network, or a network of two stains: named before any result is written
    with pytest.raises(IngestError, match=r"takes z-stacks of 3 planes .* have 1 plane\(s\) each"):
        segment(folder, tmp_path / "flat", model=tmp_path / "bf.pt", cluster=ClusterSpec(kind="threads"),
                progress=False)
    save_checkpoint(tmp_path / "two.pt", build_model("unet", in_channels=2, classes=3, width=2), normalization=norm,
                    channels=["DNA", "Cyto"], class_names=["background", "interior", "boundary"])
    with pytest.raises(IngestError, match=r"takes channels \['DNA', 'Cyto'\]; a folder holds one channel"):
        segment(stacks, tmp_path / "two", model=tmp_path / "two.pt", progress=False)
    assert not (tmp_path / "flat").exists() or not any((tmp_path / "flat").iterdir())


def test_segment_stage_equals_predict_then_labels(tmp_path):
    """The one-task `segment` stage writes exactly the labels of the `predict` + `labels` stages
    (same kernels, probabilities kept in memory), and no probabilities."""
    import torch

    from cellflow.nn.checkpoint import save_checkpoint
    from cellflow.nn.models import build_model
    from cellflow.nn.normalize import Normalization
    from cellflow.pipeline.runner import build_graphs, execute_graphs
    from cellflow.pipeline.spec import InputSpec, PipelineSpec
    from cellflow.screen import Screen
    from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

    torch.manual_seed(5)
    model = build_model("unet", in_channels=1, classes=3, width=2)
    save_checkpoint(tmp_path / "m.pt", model, normalization=Normalization("percentile"), channels=["DNA"],
                    class_names=["background", "interior", "boundary"])
    spec = SyntheticSpec(shape_yx=(64, 80), wells=("A01",), sites=2, channels=("DNA",), nuclei_per_field=6, seed=2)
    write_synthetic_screen(tmp_path / "a.zarr", spec, scheduler="synchronous")
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    predict = {"model": str(tmp_path / "m.pt"), "tile": 32}
    # low thresholds: an untrained net's interior probability hovers near 1/3, and the test needs objects
    post = {"min_area": 1, "min_marker_area": 1, "foreground_threshold": 0.3, "marker_threshold": 0.34, "shrink_px": 0}
    runs = {"a.zarr": {"predict": predict, "labels": {"postprocess": post}},
            "b.zarr": {"segment": {"predict": predict, "postprocess": post}}}
    for name, stages in runs.items():
        screen = Screen.open(tmp_path / name)
        graphs = build_graphs(screen, PipelineSpec(name=name, input=InputSpec(store=screen.path), stages=stages))
        results = execute_graphs(graphs, None, Console(quiet=True), False)
        assert [r.error for r in results if r.error is not None] == []
    two, one = Screen.open(tmp_path / "a.zarr"), Screen.open(tmp_path / "b.zarr")
    assert "probabilities" in two.variables and "probabilities" not in one.variables
    for key in two.fields():
        expected = two.read("labels_nuclei", **key._asdict())
        np.testing.assert_array_equal(one.read("labels_nuclei", **key._asdict()), expected)
    assert sum(int(two.read("labels_nuclei", **k._asdict()).max()) for k in two.fields()) > 0


def test_segment_params_name_what_is_wrong():
    from cellflow.graph.segment import SegmentParams

    params = SegmentParams.from_dict({"predict": {"model": "m.pt", "tile": 64}, "postprocess": {"min_area": 3}})
    assert SegmentParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match=r"SegmentParams.predict is required"):
        SegmentParams.from_dict({"output": "labels_nuclei"})
    with pytest.raises(ValueError, match=r"SegmentParams.output must be a labels_\* variable, got 'nuclei'"):
        SegmentParams.from_dict({"predict": {"model": "m.pt"}, "output": "nuclei"})
    with pytest.raises(ValueError, match=r"PredictParams.tile must be an int >= 1"):
        SegmentParams.from_dict({"predict": {"model": "m.pt", "tile": 0}})


def test_a_wrong_input_is_named_before_any_cluster_starts(tmp_path, monkeypatch):
    """A missing path, a file, an empty folder and a folder whose images sit in sub-folders each
    get one line saying so, at once: no cluster (whose start takes seconds) is started first."""
    import cellflow.pipeline.segment as module
    from cellflow.errors import IngestError

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started for an input that cannot be segmented")

    monkeypatch.setattr(module, "cluster_client", no_cluster)
    params = AutolabelParams(nuclear_channel="image", illumination=False)
    nested = tmp_path / "dataset"
    for sub in ("images", "masks"):
        (nested / sub).mkdir(parents=True)
        for stem in ("a", "b"):
            iio.imwrite(nested / sub / f"{stem}.png", np.zeros((8, 8), np.uint8))
    (nested / "index.csv").write_text("name\n")
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "nowhere": r"nowhere does not exist$",
        nested / "index.csv": r"index\.csv is a file; give the folder of images it is in",
        tmp_path / "empty": r"no \.png/\.tif/\.jpg images directly in \S+empty$",
        nested: r"directly in \S+dataset; its sub-folders images/ has 2, masks/ has 2: give one of them",
        nested / "images" / "a.png": r"a\.png is a file",
    }
    for source, message in cases.items():
        with pytest.raises(IngestError, match=message):
            segment(source, tmp_path / "out", params=params, progress=False)
    assert not (tmp_path / "out").exists()
