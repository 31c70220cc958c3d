"""Training: a real learning check, determinism, the recorded metadata, and errors at the edge."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cellflow.nn.augment import AugmentParams
from cellflow.nn.checkpoint import load_checkpoint
from cellflow.nn.train import TrainParams, TrainResult, split_fields, train
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

# ~9 nuclei of ~25 px per 128 x 128 field (nuclei_per_field is per 1024 x 1024).
SPEC = SyntheticSpec(wells=("A01", "A02"), sites=2, shape_yx=(128, 128), channels=("DNA",), n_z=1,
                     nuclei_per_field=600, seed=3)
# Geometry only: intensity augmentations add nothing to a learning check this short.
AUGMENT = AugmentParams(p_elastic=0.0, p_illumination=0.0, p_blur=0.0, p_noise=0.0)
PARAMS = TrainParams(model_options={"width": 8, "levels": 2}, crop_size=64, batch_size=4, epochs=4,
                     steps_per_epoch=25, learning_rate=1e-2, schedule="none", augment=AUGMENT,
                     validation_wells=["A02"], validation_sites=[1], seed=7)


@pytest.fixture(scope="module")
def screen(tmp_path_factory: pytest.TempPathFactory) -> Screen:
    return write_synthetic_screen(tmp_path_factory.mktemp("train") / "s.zarr", SPEC, scheduler="synchronous")


@pytest.fixture(scope="module")
def trained(screen: Screen, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    torch.set_num_threads(2)
    return train(screen, PARAMS, out=tmp_path_factory.mktemp("run1"))


def test_training_learns(trained: TrainResult) -> None:
    losses = [r.loss for r in trained.history]
    # Untrained, the network puts no pixel above the foreground threshold: F1 0. Seeded runs
    # reach ~0.6 after 100 steps; 0.3 above the baseline leaves room for torch-version drift
    # while a network that learnt nothing (or only background) cannot pass it.
    assert trained.initial_f1 < 0.1
    assert trained.best_f1 > trained.initial_f1 + 0.3
    # Mean loss of the last epoch under half that of the first (seeded: ~0.50 -> ~0.14).
    assert losses[-1] < 0.5 * losses[0]
    assert trained.best_f1 == max(r.val_f1 for r in trained.history)
    assert trained.history[trained.best_epoch - 1].val_f1 == trained.best_f1


def test_same_seed_same_history_and_weights(screen: Screen, trained: TrainResult, tmp_path: Path) -> None:
    again = train(screen, PARAMS, out=tmp_path)
    assert [(r.loss, r.val_f1) for r in again.history] == [(r.loss, r.val_f1) for r in trained.history]
    first, second = load_checkpoint(trained.checkpoint), load_checkpoint(again.checkpoint)
    assert first.state_dict.keys() == second.state_dict.keys()
    for name, tensor in first.state_dict.items():
        assert torch.equal(tensor, second.state_dict[name]), name
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


def test_checkpoint_metadata(screen: Screen, trained: TrainResult) -> None:
    ckpt = load_checkpoint(trained.checkpoint)
    assert ckpt.sha256 == trained.sha256
    assert ckpt.channels == ("DNA",) and ckpt.class_names == ("background", "interior", "boundary")
    assert ckpt.model.name == "resunet" and dict(ckpt.model.options)["width"] == 8
    meta = ckpt.metadata
    data = meta["data"]
    train_fields = {tuple(f) for f in data["train_fields"]}
    val_fields = {tuple(f) for f in data["validation_fields"]}
    assert val_fields == {(screen.screen_id, "P1", "A02", 1, 0.0)}
    assert len(train_fields) == 3 and not train_fields & val_fields
    assert data["screens"][0]["screen_id"] == screen.screen_id and len(data["fields_sha256"]) == 64
    assert meta["validation_f1"] == [r.val_f1 for r in trained.history]
    assert meta["best_epoch"] == trained.best_epoch
    assert TrainParams.from_dict(meta["params"]) == PARAMS
    assert meta["receptive_field"] == ckpt.build().receptive_field
    assert meta["seed"] == 7 and meta["torch_version"] == torch.__version__ and meta["wall_time_s"] > 0
    assert meta["architecture"] == ckpt.model.to_dict() and meta["normalization"] == ckpt.normalization.to_dict()


def test_validation_fraction_split_is_disjoint_and_seeded(screen: Screen) -> None:
    params = TrainParams(validation_fraction=0.5, seed=1)
    training, validation = split_fields([screen], params)
    assert len(validation) == 2 and len(training) == 2
    assert not {r.key for r in training} & {r.key for r in validation}
    assert [r.key for r in split_fields([screen], params)[1]] == [r.key for r in validation]


def test_params_round_trip() -> None:
    assert TrainParams.from_dict(PARAMS.to_dict()) == PARAMS
    assert hash(TrainParams.from_dict(PARAMS.to_dict())) == hash(PARAMS)


@pytest.mark.parametrize(("changes", "match"), [
    ({"optimizer": "sgd"}, "optimizer"),
    ({"schedule": "linear"}, "schedule"),
    ({"classes": 4}, "classes"),
    ({"z": "max"}, "z"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"batch_size": 0}, "batch_size"),
    ({"patience": 0}, "patience"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"channels": []}, "channels"),
    ({"device": "tpu"}, "device"),
    ({"model": "vgg"}, "model / model_options: .*vgg"),
    ({"model_options": {"depth": 3}}, "model / model_options: .*depth"),
    ({"augment": AugmentParams(crop_size=64)}, "augment.crop_size"),
    ({"validation_sites": ["x"]}, "validation_sites"),
    ({"screen_weights": [0, 0]}, "screen_weights"),
    ({"screen_weights": [1, -1]}, "screen_weights"),
    ({"screen_weights": [1, float("nan")]}, "screen_weights"),
    ({"screen_weights": []}, "screen_weights"),
    ({"screen_weights": "11"}, "screen_weights"),
])
def test_bad_params_name_the_field(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=rf"TrainParams\.{match}"):
        TrainParams(**changes)  # type: ignore[arg-type]


def test_unknown_key() -> None:
    with pytest.raises(ValueError, match=r"unknown keys.*'epoch'"):
        TrainParams.from_dict({"epoch": 3})


def test_missing_channel_names_store_channels(screen: Screen, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['BF'\] are not channels of .*it has \['DNA'\]"):
        train(screen, TrainParams(channels=["BF"]), out=tmp_path)


def test_missing_target_and_empty_selection(screen: Screen, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target 'labels_nuclei' is not a variable"):
        train(screen, TrainParams(target="labels_nuclei"), out=tmp_path)
    with pytest.raises(ValueError, match="0 validation fields"):
        train(screen, TrainParams(validation_wells=["H12"]), out=tmp_path)


def test_crop_size_must_suit_the_model(screen: Screen, tmp_path: Path) -> None:
    params = TrainParams(model_options={"width": 4, "levels": 2}, crop_size=17, epochs=1, steps_per_epoch=1,
                         validation_sites=[1])
    with pytest.raises(ValueError, match=r"TrainParams\.crop_size must be a multiple of .* 2"):
        train(screen, params, out=tmp_path)


def test_z_all_stacks_planes(tmp_path: Path) -> None:
    spec = SyntheticSpec(wells=("A01",), sites=2, shape_yx=(32, 32), channels=("DNA", "BF"), n_z=3,
                         nuclei_per_field=600)
    screen = write_synthetic_screen(tmp_path / "z.zarr", spec, scheduler="synchronous")
    params = TrainParams(channels=["BF"], z="all", model_options={"width": 4, "levels": 2}, crop_size=32,
                         batch_size=2, epochs=1, steps_per_epoch=1, validation_sites=[1], augment=AUGMENT)
    result = train(screen, params, out=tmp_path / "run")
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.model.in_channels == 3 and ckpt.channels == ("BF@z0", "BF@z1", "BF@z2")
    assert np.isfinite(result.history[0].loss)


def test_init_from_starts_at_the_checkpoint_and_checks_the_architecture(tmp_path):
    from cellflow.nn.checkpoint import load_checkpoint
    from cellflow.nn.train import TrainParams, train
    from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

    screen = write_synthetic_screen(tmp_path / "s.zarr", SyntheticSpec(wells=("A01",), sites=2, shape_yx=(64, 64),
                                                                       channels=("DNA",), seed=1))
    base = dict(channels=("DNA",), model="unet", model_options={"width": 2, "levels": 2}, crop_size=32, batch_size=2,
                steps_per_epoch=1, validation_fraction=0.5, seed=0)
    first = train(screen, TrainParams(epochs=1, **base), out=tmp_path / "a")
    # zero epochs of change: a tiny learning rate keeps the weights within float noise of the start
    again = train(screen, TrainParams(epochs=1, learning_rate=1e-12, init_from=str(first.checkpoint), **base),
                  out=tmp_path / "b")
    a, b = load_checkpoint(first.checkpoint).state_dict, load_checkpoint(again.checkpoint).state_dict
    weights = [k for k in a if "running_" not in k and "num_batches" not in k]  # batch-norm statistics move
    assert weights and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in weights)
    with pytest.raises(ValueError, match="init_from"):
        train(screen, TrainParams(epochs=1, init_from=str(first.checkpoint),
                                  **{**base, "model_options": {"width": 4, "levels": 2}}), out=tmp_path / "c")


def test_screen_weights_set_each_screens_share_of_the_crops(screen: Screen, tmp_path: Path) -> None:
    """Two screens, 3 and 8 training fields, weights 1 : 3: a quarter of the crops from the small one."""
    from cellflow.nn import train as train_module

    other = write_synthetic_screen(tmp_path / "other.zarr", replace(SPEC, wells=("B01", "B02"), sites=4, seed=4),
                                   scheduler="synchronous")
    params = replace(PARAMS, screen_weights=[1, 3])
    assert TrainParams.from_dict(params.to_dict()) == params and params.screen_weights == (1.0, 3.0)
    training, _ = split_fields([screen, other], params)
    probabilities = train_module._field_probabilities([screen, other], training, params)
    assert probabilities is not None
    owners = np.array([ref.screen is other for ref in training])
    assert owners.sum() == 8 and (~owners).sum() == 3
    np.testing.assert_allclose(probabilities[~owners], 0.25 / 3)  # hand-computed: 1/4 over 3 fields
    np.testing.assert_allclose(probabilities[owners], 0.75 / 8)
    # the sampler draws by them (seeded): ~25 % of 400 crops from the first screen
    sampler = train_module._sampler(training, params, training=True)
    sampler.probabilities = probabilities
    drawn: list[int] = []
    original = sampler.field
    sampler.field = lambda index: (drawn.append(index), original(index))[1]  # type: ignore[method-assign]
    sampler.batch(np.random.default_rng(0), size=400, crop_size=32, params=AUGMENT)
    share = np.mean([not owners[i] for i in drawn])
    assert 0.19 < share < 0.31
    assert train_module._field_probabilities([screen, other], training, replace(params, screen_weights=None)) is None
    with pytest.raises(ValueError, match=r"screen_weights must be one weight per screen \(2\)"):
        train_module._field_probabilities([screen, other], training, replace(params, screen_weights=[1]))
    with pytest.raises(ValueError, match="screen_weights must be a weight > 0 for a screen with training fields"):
        train_module._field_probabilities([screen, other], [r for r in training if r.screen is screen],
                                          replace(params, screen_weights=[0, 1]))
