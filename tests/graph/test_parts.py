"""Table parts: per-object rows written as Parquet in the store and referenced from the task log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellflow.graph._parts import PART_KEYS, part_intact, parts_frame, write_part


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"well": ["A01"] * n, "label": np.arange(1, n + 1, dtype=np.int64),
                         "ratio": rng.uniform(0, 2, n), "kind": rng.choice(["a", "b"], n)})


def test_a_part_reads_back_as_written_and_its_reference_names_it(tmp_path):
    frame = _frame(1, 7)
    reference = write_part(tmp_path / "deep" / "x.parquet", frame)
    assert set(reference) == set(PART_KEYS) and reference["part_rows"] == 7
    assert reference["part_bytes"] == (tmp_path / "deep" / "x.parquet").stat().st_size
    pd.testing.assert_frame_equal(parts_frame([reference]), frame)
    assert not list((tmp_path / "deep").glob("*.tmp*"))  # written under a temporary name, then renamed


def test_a_part_deleted_or_changed_is_not_intact(tmp_path):
    path = tmp_path / "x.parquet"
    reference = write_part(path, _frame(2, 5))
    assert part_intact(reference) and part_intact(reference, verify=True)
    assert part_intact({"well": "A01"})  # an inline row refers to nothing
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the hash sees it
    path.write_bytes(bytes(data))
    assert part_intact(reference) and not part_intact(reference, verify=True)
    write_part(path, _frame(3, 9))  # rewritten with other rows: another size
    assert not part_intact(reference)
    path.unlink()
    assert not part_intact(reference) and not part_intact(reference, verify=True)


def test_parts_frame_keeps_the_rows_order_mixes_inline_rows_and_names_a_missing_part(tmp_path):
    frames = [_frame(10 + i, n) for i, n in enumerate((3, 0, 4))]
    references = [write_part(tmp_path / f"p{i}.parquet", f) for i, f in enumerate(frames)]
    inline = {"well": "B01", "label": 99, "ratio": 0.5, "kind": "c"}
    rows = [references[0], inline, references[1], references[2]]
    expected = pd.concat([frames[0], pd.DataFrame([inline]), frames[2]], ignore_index=True)
    pd.testing.assert_frame_equal(parts_frame(rows), expected)
    assert parts_frame([references[1]]).empty and list(parts_frame([references[1]]).columns) == list(frames[1].columns)
    assert parts_frame([]).empty
    (tmp_path / "p2.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"p2\.parquet is missing.*run again"):
        parts_frame(rows)
