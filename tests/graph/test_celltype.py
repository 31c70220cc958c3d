"""The celltype stage: a cell-type checkpoint classifies the cells of a store (synthetic co-culture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellflow.graph.celltype import CelltypeParams, build_celltype, celltype_tables, type_names
from cellflow.live.celltype import SemanticTrainParams, celltype_classes, celltype_targets, train_semantic
from cellflow.live.synthetic import COCULTURE_TYPES, synthesize_coculture_field
from cellflow.nn.checkpoint import load_checkpoint, save_checkpoint
from cellflow.nn.normalize import Normalization, normalize
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

SPEC = SyntheticSpec(wells=("A01",), sites=8, shape_yx=(96, 96), n_z=1, channels=("DNA", "BF"),
                     nuclei_per_field=1200, pixel_size_um=1.3, seed=11)


def test_stage_classifies_held_out_cells_of_a_coculture(tmp_path):
    import dask

    screen = write_synthetic_screen(tmp_path / "p.zarr", SPEC)
    screen.add_variable("labels_cells", dims=("plate", "well", "site", "t", "y", "x"), dtype="uint32", exist_ok=True)
    fields = {key: synthesize_coculture_field(SPEC, plate=key.plate, well=key.well, site=key.site)
              for key in screen.fields()}
    for key, field in fields.items():  # the co-culture's pixels and cells go into the store
        pixels = np.clip(np.rint(field.image), 0, 65535).astype(np.uint16)[:, None]  # (c, z, y, x)
        screen.write("images", pixels, **key._asdict())
        screen.write("labels_cells", field.cells, **key._asdict())
    keys = sorted(fields)
    normalization = Normalization()
    images = [normalize(np.clip(np.rint(fields[k].image), 0, 65535).astype(np.float32), normalization) for k in keys]
    pairs = [celltype_targets(fields[k].cells, fields[k].cell_type, n_types=2) for k in keys[:4]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_semantic(images[:4], [t for t, _ in pairs], [w for _, w in pairs], classes=4,
                               params=SemanticTrainParams(steps=150, batch_size=4, crop_size=48, seed=0))
    finally:
        torch.set_num_threads(threads)
    path = tmp_path / "celltype.pt"
    save_checkpoint(path, model, normalization=normalization, channels=("DNA", "BF"),
                    class_names=celltype_classes(COCULTURE_TYPES))
    assert type_names(load_checkpoint(path)) == tuple(COCULTURE_TYPES)

    params = CelltypeParams.from_dict({"predict": {"model": str(path), "tile": 64}})
    graph = build_celltype(screen, params, fields=keys[4:])
    results = dask.compute(*graph.tasks, scheduler="synchronous")
    assert all(r.error is None for r in results), [r.error for r in results]
    tables, _ = celltype_tables([row for r in results for row in r.rows], tmp_path / "tables")
    cells = tables["celltype/cells"]
    truth = [COCULTURE_TYPES[fields[(r.plate, r.well, r.site, r.t)].cell_type[r.label]] for r in cells.itertuples()]
    assert len(truth) >= 30 and len(set(truth)) == 2
    assert (cells["cell_type"].to_numpy() == np.array(truth)).mean() >= 0.9  # the bar, through the stage
    wells = tables["celltype/wells"]
    assert wells[[f"n_{t}" for t in COCULTURE_TYPES]].to_numpy().sum() == len(cells)


def test_a_model_without_type_classes_is_refused(tmp_path):
    from cellflow.nn.models import ModelConfig

    screen = write_synthetic_screen(tmp_path / "p.zarr", SPEC)
    path = tmp_path / "nuclei.pt"
    save_checkpoint(path, ModelConfig("unet", 2, 3, {"width": 2, "levels": 2}).build(), normalization=Normalization(),
                    channels=("DNA", "BF"), class_names=("background", "interior", "boundary"))
    with pytest.raises(ValueError, match="a cell-type model has classes"):
        build_celltype(screen, CelltypeParams.from_dict({"predict": {"model": str(path)}}))
