from __future__ import annotations

import pytest
import torch

from cellflow.nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cellflow.nn.models import build_model
from cellflow.nn.normalize import Normalization


def _model():
    torch.manual_seed(0)
    return build_model("resunet", in_channels=1, classes=3).eval()


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _model()
    norm = Normalization(method="percentile", low=1.0, high=99.5)
    digest = save_checkpoint(tmp_path / "m.pt", model, normalization=norm, channels=["DNA"],
                             class_names=["background", "interior", "boundary"], metadata={"val_f1": 0.8})
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.sha256 == digest and ckpt.normalization == norm and ckpt.channels == ("DNA",)
    assert ckpt.metadata == {"val_f1": 0.8} and ckpt.model == model.config
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build()(x), model(x), rtol=0, atol=0)


def test_refuses_to_overwrite_and_checks_names(tmp_path):
    model = _model()
    kw = dict(normalization=Normalization(), channels=["DNA"], class_names=["bg", "in", "bd"])
    save_checkpoint(tmp_path / "m.pt", model, **kw)
    with pytest.raises(FileExistsError, match=r"m\.pt exists; pass overwrite=True"):
        save_checkpoint(tmp_path / "m.pt", model, **kw)
    with pytest.raises(CheckpointError, match=r"2 channel names and 3 class names given for a model with 1 input"):
        save_checkpoint(tmp_path / "n.pt", model, **{**kw, "channels": ["DNA", "BF"]})


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a cellflow checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a readable model file"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match=r"no model file at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"format": "cellflow-checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a readable model file"):
        load_checkpoint(tmp_path / "evil.pt")
