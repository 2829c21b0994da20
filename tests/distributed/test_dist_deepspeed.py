"""``--engine deepspeed``: on CPU (no kernel injection) the capture equals the accelerate one."""

from __future__ import annotations

import numpy as np
import pytest
from dist_helpers import tiny_job

from blockprune.distributed import deepspeed_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(not deepspeed_engine.available(), reason="deepspeed is not installed (pip install 'blockprune[deepspeed]')")
def test_deepspeed_capture_equals_accelerate_capture(reference, tmp_path) -> None:
    from blockprune.calibration.stats import BlockStats
    from blockprune.distributed.capture import SharedStoreWriter, capture_layout
    from blockprune.distributed.model_actor import ModelWorker

    job = tiny_job(tmp_path / "stores")
    worker = ModelWorker(job, engine="deepspeed")  # the actor's code, run in this process
    assert worker._ds_engine is not None and worker.describe()["engine"] == "deepspeed"
    positions, names, _, hidden = capture_layout(worker.p)
    assert np.array_equal(positions, reference.store.positions())
    writer = SharedStoreWriter(tmp_path / "ds-store", names, len(positions), hidden, "float32")
    raw = worker.capture_part(str(writer.tmp), positions, list(range(4)), 0)
    writer.save_array("positions", positions)
    store = writer.commit({"n_layers": 30, "capture_mid": True, "stats": {}})
    for name in names:
        ref = reference.store.array(name)
        np.testing.assert_allclose(store.array(name), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()),
                                   err_msg=name)
    bi = BlockStats.from_dict(raw["layer"]).means()["bi"]
    np.testing.assert_allclose(bi, reference.store.stats["layer"]["bi"], rtol=1e-5, atol=1e-7)
    dense = worker.evaluate(None).metrics["ppl"]
    plan = reference.plans["shortgpt/layer/k=4"]
    assert worker.evaluate(plan).metrics["ppl"] > dense
