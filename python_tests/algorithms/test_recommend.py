"""delta_stats and the recommend rule set."""

from __future__ import annotations

import pytest
import torch

from darex_ext.algorithms import delta_stats, recommend


def test_stats_hand_computed():
    d = torch.tensor([1.0, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 12.0])  # mean |d| = 1.6
    s = delta_stats({"a": d, "b": torch.tensor([[2.0, 2.0]])})
    a = s.per_tensor["a"]
    assert a.numel == 10 and a.mean_abs == pytest.approx(1.6) and a.mean == pytest.approx(1.4)
    assert a.var == pytest.approx(float(d.double().var(unbiased=False)))
    assert a.outlier_ratio == pytest.approx(0.1)  # only 12 > 5 * 1.6
    assert a.max_abs == 12.0
    pooled = torch.cat([d, torch.tensor([2.0, 2.0])]).double()
    assert s.numel == 12 and s.mean == pytest.approx(float(pooled.mean()))
    assert s.var == pytest.approx(float(pooled.var(unbiased=False)))
    assert s.mean_abs == pytest.approx(float(pooled.abs().mean()))
    assert s.outlier_ratio == pytest.approx(1 / 12)


def _small():
    torch.manual_seed(0)
    return torch.randn(256, 256) * 1e-3


def test_rules():
    small, large = _small(), _small() * 30
    r = recommend(small, 0.5)
    assert r.method == "dare" and r.q is None
    r = recommend(small, 0.99, has_labels=True)
    assert (r.method, r.q) == ("darex-q", "empirical")
    r = recommend(small, 0.99)
    assert (r.method, r.q) == ("darex-q", "learned") and any("--q-mode learned" in s for s in r.reasons)
    assert recommend(small, 0.99, has_calibration_data=False).method == "dare"
    assert recommend(small, 0.99, can_finetune=True).method == "adamr"
    r = recommend(large, 0.9)
    assert r.method == "magnitude" and any("mean |delta|" in s for s in r.reasons)
    assert recommend(large, 0.9, has_activation_stats=True).method == "wanda"
    assert recommend(large, 0.9, can_finetune=True).method == "adamr"
    spiky = small.clone()
    spiky.view(-1)[::50] = 0.05  # 2% outliers, small mean
    r = recommend(spiky, 0.9)
    assert r.method == "magnitude" and any("exceed" in s for s in r.reasons)
    # Thresholds are arguments.
    assert recommend(small, 0.99, large_mean_abs=1e-4).method == "magnitude"
    assert recommend(small, 0.95, extreme_p=0.96).method == "dare"


def test_bad_arguments():
    with pytest.raises(ValueError, match="p"):
        recommend(_small(), 1.0)
    with pytest.raises(TypeError, match="has_labels"):
        recommend(_small(), 0.9, has_labels="yes")
    with pytest.raises(TypeError, match="deltas"):
        delta_stats([1.0, 2.0])
    with pytest.raises(ValueError, match="outlier_factor"):
        delta_stats(_small(), outlier_factor=0)
