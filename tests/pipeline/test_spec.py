from __future__ import annotations

import textwrap

import pytest

from cellflow.errors import SpecError
from cellflow.pipeline import PipelineSpec, load_spec, parse_spec

GOOD = """\
name: t
input:
  store: plate.zarr
  synthetic: {wells: [A01], sites: 1, shape_yx: [64, 64], n_z: 1}
stages:
  score: {truth: truth_nuclei, pred: truth_cells, error_threshold: 0.75}
cluster: {kind: threads}
"""


def _write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_spec_parses_into_typed_objects(tmp_path):
    spec = load_spec(_write(tmp_path, GOOD))
    assert isinstance(spec, PipelineSpec)
    assert spec.cluster.kind == "threads" and spec.cluster.dashboard_address.startswith("127.0.0.1")
    [(name, _entry, params)] = spec.stage_entries()
    assert name == "score" and params.pairs == (("truth_nuclei", "truth_cells"),)
    assert params.options.error_threshold == 0.75


def test_every_problem_is_reported_with_its_line(tmp_path):
    text = """\
    name: bad
    input:
      store: x.zarr
      synthetc: {wells: [A01]}
    stages:
      score:
        truth: truth_nuclei
        tresholds: [0.5]
      segmentt: {}
    cluster:
      kind: locale
    """
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert f"{path}:4: input.synthetc: Extra inputs are not permitted" in message
    assert f"{path}:11: cluster.kind: Input should be 'threads', 'local', 'local-cuda', 'address' or 'kubernetes'" in message
    assert f"{path}:8: stages.score.tresholds: ScoreOptions got unknown keys ['tresholds']" in message
    assert f"{path}:9: stages.segmentt: unknown stage 'segmentt'" in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: x\ninput: {store: a.zarr, folder: imgs}\n", r"folder needs a pattern"),
        ("name: x\ninput: {store: a.zarr, folder: imgs, pattern: bbbc, synthetic: {}}\n", r"at most one of"),
        ("name: x\ninput: {store: a.zarr}\ncluster: {kind: address}\n", r"kind 'address' needs address"),
        ("name: x\ninput: {store: a.zarr}\nstages: {score: [1, 2]}\n", r"spec.yaml:3: stages.score: .*(dict|mapping)"),
        ("name: x\n", r"spec.yaml:1: input: Field required"),
        ("- just\n- a list\n", r"a spec is a YAML mapping"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)
def test_invalid_specs(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        load_spec(_write(tmp_path, text))


def test_yaml_tags_are_never_executed(tmp_path):
    path = _write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\ninput: {store: a.zarr}\n")
    with pytest.raises(SpecError, match=r"not valid YAML"):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no spec file at .*nope\.yaml"):
        load_spec(tmp_path / "nope.yaml")


def test_parse_without_yaml_tree_still_names_the_field():
    with pytest.raises(SpecError, match=r"spec: cluster.n_workers: Input should be greater than or equal to 1"):
        parse_spec({"name": "x", "input": {"store": "a.zarr"}, "cluster": {"n_workers": 0}})


def test_shipped_training_spec_parses_and_bad_training_specs_name_the_line(tmp_path):
    from pathlib import Path

    from cellflow.pipeline.spec import load_train_spec

    shipped = load_train_spec(Path(__file__).resolve().parents[2] / "specs" / "train-synthetic-nuclei.yaml")
    params = shipped.params()
    assert params.model == "resunet" and tuple(params.channels) == ("DNA",) and params.classes == 3
    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\ninput: {store: a.zarr}\ntrain:\n  model: resunet\n  classes: 7\nmodel_dirr: x\n")
    with pytest.raises(SpecError) as info:
        load_train_spec(bad)
    message = str(info.value)
    assert f"{bad}:6: model_dirr: Extra inputs are not permitted" in message


def test_an_unknown_key_is_pointed_at_its_own_line_not_the_first_valid_key(tmp_path):
    """The "expected some of [...]" tail lists valid keys; the line must be the unknown key's."""
    from cellflow.pipeline.spec import load_train_spec

    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\ninput: {store: a.zarr}\ntrain:\n  channels: [DNA]\n  labels: labels_nuclei\n"
                   "model_dir: m\n")
    with pytest.raises(SpecError) as info:
        load_train_spec(bad)
    assert f"{bad}:5: train.labels: TrainParams got unknown keys ['labels']" in str(info.value)
    path = _write(tmp_path, """\
    name: x
    input: {store: a.zarr}
    stages:
      autolabel:
        nuclear_channel: DNA
        diameter: 12
    """)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{path}:6: stages.autolabel.diameter: " in str(info.value)
