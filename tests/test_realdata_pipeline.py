"""Real data: BPR on MovieLens 100K under the issue's protocol reaches the accuracy target.

Protocol: ratings >= 3, per-user random 0.8/0.1/0.1, embedding 64, one uniform negative, batch
2048, default config, early stopping on validation NDCG@10. Reference: RecBole 1.2.1 gives
NDCG@10 0.247 / Recall@10 0.239 here; the target is >= 0.25 / >= 0.24.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_bpr_ml100k_reaches_target(shared_datasets, workdir, monkeypatch):
    monkeypatch.setenv("RECSTUDIO_DATA_DIR", str(shared_datasets))
    import recstudio

    result = recstudio.run(model="BPR", dataset="ml-100k", quiet=True)
    assert result["data"]["users"] == 943 and result["data"]["interactions"] == 82520
    assert result["test"]["ndcg@10"] >= 0.25, result["test"]
    assert result["test"]["recall@10"] >= 0.24, result["test"]
    assert result["run_id"]
