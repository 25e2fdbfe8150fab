"""A twin of the DPPA authors' code, written from reading it, for the tests' oracle:
github.com/northsky0307/DPPA-Pruning-Method-for-Large-Language-Model-to-Model-Merging.

- `authors_dp`: scrips/pruning/lib/prune_all.py, prune_mag_outlier_layer_wei (run.sh's
  --prune_method magnitude_owl_layer_wei --Lamda 0.08 --Hyper_m 5), on a list of layers, each a
  dict name -> delta of the layer's Linear weights in module order.
- `authors_enhance`: scrips/enhance_offset.py (my_max of alpha_lo * the 0.8 model and
  alpha_hi * the 0.9 model, for every tensor of the state dict).
- `authors_search`: scrips/python_contral.py's loop, with the evaluation passed in.

Plain torch and numpy, the same operations in the same order; no darex import.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _layer_outlier_percent(w: torch.Tensor) -> float:
    # new_check_outlier_mean: the factor 3 is fixed there.
    return float(((w / torch.mean(w)) > 3).sum().item()) / w.numel() * 100


def _module_outlier_percent(w: torch.Tensor, threshold: float) -> float:
    # check_outlier_mean
    return float((w > torch.mean(w) * threshold).sum().item()) / w.numel() * 100


def authors_densities(layers: list[dict[str, torch.Tensor]], sparsity: float, lamda: float = 0.08,
                      hyper_m: float = 5.0) -> dict[str, float]:
    layer_ratio = []
    for layer in layers:
        metric = torch.cat([torch.flatten(torch.abs(w)) for w in layer.values()])
        layer_ratio.append(_layer_outlier_percent(metric))
    layer_ratio = np.array(layer_ratio)
    layer_ratio -= layer_ratio.mean()
    layer_ratio *= lamda / np.absolute(layer_ratio).max()
    layer_ratio = layer_ratio + (1 - sparsity)

    ratios, weights, mine, names = [], [], [], []
    for i, layer in enumerate(layers):
        for name, w in layer.items():
            metric = torch.flatten(torch.abs(w))
            ratios.append(_module_outlier_percent(metric, hyper_m))
            weights.append(len(metric))
            mine.append(layer_ratio[i])
            names.append(name)
    ratios = np.array(ratios)
    weights = np.array(weights)
    ratios /= ratios.mean()
    ratios -= (ratios * weights).sum() / weights.sum()
    ratios *= lamda / np.absolute(ratios).max()
    ratios = ratios + mine
    return dict(zip(names, (float(r) for r in ratios)))


def authors_prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The authors' unstructured cut of one matrix (a pruned copy)."""
    w = w.clone()
    metric = torch.abs(w)
    thresh = torch.sort(metric.flatten())[0][int(w.numel() * sparsity)]
    w[metric <= thresh] = 0
    return w


def authors_dp(layers: list[dict[str, torch.Tensor]], sparsity: float, lamda: float = 0.08,
               hyper_m: float = 5.0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    dens = authors_densities(layers, sparsity, lamda, hyper_m)
    pruned = {name: authors_prune(w, 1 - dens[name]) for layer in layers for name, w in layer.items()}
    return pruned, dens


def _my_max(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_mask = x != 0
    y_mask = y != 0
    if y_mask.sum() == 0:
        return x
    update = torch.abs(y) > torch.abs(x)
    update += (y_mask.long() - x_mask.long()) > 0
    x[update] *= 0
    x[update] += y[update]
    return x


def authors_enhance(eight: dict[str, torch.Tensor], nine: dict[str, torch.Tensor], eight_ratio: float,
                    nine_ratio: float) -> dict[str, torch.Tensor]:
    """eight / nine: full float32 delta state dicts pruned at 0.8 / 0.9 (tensors outside the
    layers' Linear weights whole in both)."""
    out = {}
    for key in nine:
        add = torch.zeros(nine[key].shape)
        add = _my_max(add, eight[key] * eight_ratio)
        add = _my_max(add, nine[key] * nine_ratio)
        out[key] = nine[key] * 0 + add
    return out


def authors_search(evaluate, nine_ratio: float = 1.8, eight_ratio: float = 0.0) -> tuple[list, list]:
    """python_contral.py's loop: returns the evaluated points (as the "%.1f" strings the authors
    pass on) and the final alpha list, likewise formatted."""
    alpha = [nine_ratio, eight_ratio]
    alpha_idx = 0
    perfermence = 0
    points = []
    while alpha_idx < len(alpha):
        key = (f"{alpha[0]:.1f}", f"{alpha[1]:.1f}")
        points.append(key)
        temp = evaluate(float(key[0]), float(key[1]))
        if temp > perfermence:
            perfermence = temp
            alpha[alpha_idx] += 0.1
        else:
            if alpha[alpha_idx] > 1:
                alpha[alpha_idx] -= 0.1
            alpha_idx += 1
            if alpha_idx < len(alpha):
                if alpha[alpha_idx] < 0.1:
                    alpha[alpha_idx] = 1
                else:
                    alpha[alpha_idx] += 0.1
    return points, [f"{alpha[0]:.1f}", f"{alpha[1]:.1f}"]


def authors_score(task_scores, dense) -> float:
    return math.sqrt((task_scores[0] / dense[0]) * (task_scores[1] / dense[1]))
