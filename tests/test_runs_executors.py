"""A notebook's `executor` parameter as run_many's keywords."""

from __future__ import annotations

import pytest

from mkdlib.paper import items
from mkdlib.runs.executors import executor, run_many


def test_executor_keywords():
    with executor("sequential") as kw:
        assert kw == {}
    with executor("processes", 3) as kw:
        assert kw == {"workers": 3}
    with executor("auto", 2, "cpu") as kw:  # CPU: one-thread processes side by side
        assert kw == {"workers": 2}
    with executor("auto", None, "cuda") as kw:  # one GPU: one run at a time
        assert kw == {}
    with pytest.raises(ValueError, match="Dask scheduler address"):
        with executor("threads"):
            pass


@pytest.mark.slow
def test_dask_scheduler_address(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = items.specs_for("table5", "smoke", data_root=str(tmp_path / "absent"))[0]
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with executor(cluster.scheduler_address) as kw:
            (result,) = run_many([spec], tmp_path / "runs", progress=False, **kw)
    assert result.error_type == "DatasetNotFoundError" and str(tmp_path / "absent") in result.error


def test_a_pool_only_for_runs_left_to_train(tmp_path, monkeypatch):
    """workers=2 with one run left: it trains in this process (on every thread), no pool is spawned."""
    from mkdlib.runs import executors

    spec = items.specs_for("table3", "smoke", data_root=str(tmp_path / "absent"))[0]
    monkeypatch.setattr(executors, "ProcessPoolExecutor", lambda *a, **k: pytest.fail("a pool for one run"))
    results = run_many([spec, spec], tmp_path / "runs", workers=2, progress=False)  # the same run twice: one
    assert [r.error_type for r in results] == ["DatasetNotFoundError"] * 2
