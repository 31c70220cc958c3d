"""field_tasks: one graph layer per stage, the same results as one dask.delayed call per field."""

from __future__ import annotations

import dask

from cellflow.graph._stage import StageGraph, field_tasks
from cellflow.screen.store import FieldKey


def _keys(n):
    return [FieldKey("P1", f"A{i:02d}", i % 3, 0.0) for i in range(n)]


def _up(key, scale):
    return (key.well, key.site * scale)


def _down(tag, odd, up):
    return (tag, odd, up)


def _stages(n, odd):
    keys = _keys(n)
    up = field_tasks("up", "tok", _up, {k: (k, 10) for k in keys}, None)
    first = StageGraph("up", (), tuple(up.values()), up)
    down = field_tasks("down", "tok", _down, {k: (k.well, odd) for k in keys}, first)
    return keys, up, down


def test_field_tasks_compute_what_one_delayed_call_per_field_computes():
    # arguments that dask would otherwise read as a task (a tuple headed by a callable) or as a
    # key of this very graph (a string equal to an upstream key) must reach the task verbatim
    keys, up, _ = _stages(5, None)
    odd = (len, "abc", [1, 2])
    key_like = up[keys[0]].key
    _, up, down = _stages(5, (odd, key_like))
    got = dask.compute(*down.values(), scheduler="threads")
    expected = [
        dask.delayed(_down)(k.well, (odd, key_like), dask.delayed(_up)(k, 10)).compute(scheduler="sync")
        for k in keys
    ]
    assert list(got) == expected == [(k.well, (odd, key_like), (k.well, k.site * 10)) for k in keys]


def test_a_stage_is_one_layer_whatever_the_number_of_fields():
    for n in (3, 300):
        _, _, down = _stages(n, 0)
        graph = next(iter(down.values())).__dask_graph__()
        assert len(graph.layers) == 2  # up and down, not one layer per field
        assert all(d.__dask_graph__() is graph for d in down.values())  # shared, never copied per field
        assert len(graph) == 2 * n
        (down_layer,) = [name for name in graph.layers if name.startswith("down-tok-")]
        (up_layer,) = [name for name in graph.layers if name.startswith("up-tok-")]
        assert graph.dependencies[down_layer] == {up_layer}


def test_a_stage_built_again_over_fewer_fields_never_shadows_the_first_build():
    # a resumed run builds a stage over every field (to plan) and again over the fields still to do
    keys, up, down = _stages(6, 0)
    first = StageGraph("up", (), tuple(up.values()), up)
    subset = field_tasks("down", "tok", _down, {k: (k.well, 1) for k in keys[:3]}, first)
    assert not {d.key for d in subset.values()} & {d.key for d in down.values()}
    both = dask.compute(*down.values(), *subset.values(), scheduler="threads")
    assert list(both) == ([(k.well, 0, (k.well, k.site * 10)) for k in keys]
                          + [(k.well, 1, (k.well, k.site * 10)) for k in keys[:3]])


def test_a_task_waits_for_its_own_fields_upstream_only():
    keys, up, down = _stages(4, 0)
    graph = dict(next(iter(down.values())).__dask_graph__())
    for key in keys:
        deps = {d for d in dask.core.get_dependencies(graph, down[key].key)}
        assert deps == {up[key].key}


def test_a_full_disk_halts_at_once_and_marks_everything_downstream():
    import errno

    from cellflow.graph._stage import TaskResult, guarded, merge_results

    tries: list[int] = []

    @guarded("write")
    def write(key, *upstream):
        tries.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    @guarded("score")
    def score(key, *upstream):
        return TaskResult(stage="score", field=key)

    key = FieldKey("P", "A01", 0, 0.0)
    first = write(key)
    assert first.halt and "No space left" in first.error and len(tries) == 1  # not retried
    after = score(key, first)
    assert after.halt and after.error.startswith("not run: write failed")
    assert merge_results("both", [after, TaskResult(stage="score", field=key)]).halt

    @guarded("flaky")
    def flaky(key):
        tries.append(2)
        raise OSError(errno.EIO, "Input/output error")

    result = flaky(key)
    assert not result.halt and tries.count(2) == 3  # an I/O error is retried, then the field quarantined
