"""A small pretrain -> fine-tune task on which the DAREx claims can be checked in seconds on a CPU.

Used by ``darex demo`` (darex_ext/apps/demo.py), ``benchmarks/repro_darex.py`` and their tests.

Inputs are Gaussian vectors with a non-zero mean (so the mean input per channel that analytic q
uses is informative). Task A labels a point by the argmax of a random teacher network; task B
is a related task: the same teacher's hidden features with another readout, plus a rotation of
the input, so fine-tuning from A to B changes every layer, not only the head. An MLP is
pretrained on A and fine-tuned on B with a large learning rate (the deltas are not tiny).
Everything is seeded and runs in float32 on the CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..algorithms.adamr import AdamR

__all__ = ["DemoConfig", "DemoData", "DemoModels", "make_data", "make_model", "train", "accuracy",
           "build_demo", "weight_names"]


@dataclass(frozen=True)
class DemoConfig:
    dim: int = 256          # input width (fan-in of the first Linear)
    latent: int = 16        # the inputs are noisy random features of a latent vector
    hidden: int = 512
    classes: int = 10
    task_shift: float = 0.6  # how far task B's readout is from task A's
    n_train: int = 8192
    n_val: int = 2048
    n_test: int = 4096
    pretrain_steps: int = 300
    finetune_steps: int = 200
    batch: int = 128
    pretrain_lr: float = 1e-3
    finetune_lr: float = 2e-3   # large enough that DARE breaks at p = 0.99
    adamr_weight_decay: float = 0.1
    seed: int = 0


@dataclass
class DemoData:
    x_train_a: torch.Tensor
    y_train_a: torch.Tensor
    x_train_b: torch.Tensor
    y_train_b: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class DemoModels:
    base: nn.Module        # pretrained on task A
    finetuned: nn.Module   # fine-tuned on task B with Adam
    adamr: nn.Module | None  # fine-tuned on task B with AdamR (DAREx-L2), if asked for
    data: DemoData
    config: DemoConfig


def make_model(cfg: DemoConfig) -> nn.Module:
    return nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                         nn.Linear(cfg.hidden, cfg.classes))


def weight_names(model: nn.Module) -> list[str]:
    """The Linear weight matrices: what the demo prunes (biases are a handful of entries)."""
    return [n for n, p in model.named_parameters() if p.dim() == 2]


def make_data(cfg: DemoConfig) -> DemoData:
    g = torch.Generator().manual_seed(cfg.seed)
    lift = torch.randn(cfg.latent, cfg.dim, generator=g) / cfg.latent ** 0.5
    shift = torch.randn(cfg.dim, generator=g) * 0.5
    w1 = torch.randn(cfg.latent, 64, generator=g) / cfg.latent ** 0.5
    head_a = torch.randn(64, cfg.classes, generator=g)
    head_b = head_a + cfg.task_shift * torch.randn(64, cfg.classes, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, cfg.latent, generator=g)
        return z @ lift + shift + 0.1 * torch.randn(n, cfg.dim, generator=g), torch.tanh(z @ w1)

    (xa, fa), (xb, fb), (xv, fv), (xt, ft) = (sample(n) for n in (cfg.n_train, cfg.n_train, cfg.n_val, cfg.n_test))
    return DemoData(xa, (fa @ head_a).argmax(1), xb, (fb @ head_b).argmax(1), xv, (fv @ head_b).argmax(1),
                    xt, (ft @ head_b).argmax(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
          optimizer: torch.optim.Optimizer, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def build_demo(cfg: DemoConfig | None = None, *, with_adamr: bool = True) -> DemoModels:
    """Pretrain on A, then fine-tune copies on B with Adam and (with_adamr) AdamR. Deterministic."""
    cfg = cfg or DemoConfig()
    data = make_data(cfg)
    torch.manual_seed(cfg.seed)
    base = make_model(cfg)
    train(base, data.x_train_a, data.y_train_a, cfg.pretrain_steps, cfg.batch,
          torch.optim.Adam(base.parameters(), lr=cfg.pretrain_lr), cfg.seed + 1)
    ft = copy.deepcopy(base)
    train(ft, data.x_train_b, data.y_train_b, cfg.finetune_steps, cfg.batch,
          torch.optim.Adam(ft.parameters(), lr=cfg.finetune_lr), cfg.seed + 2)
    ar = None
    if with_adamr:
        ar = copy.deepcopy(base)
        pre = [p.detach().clone() for p in base.parameters()]
        train(ar, data.x_train_b, data.y_train_b, cfg.finetune_steps, cfg.batch,
              AdamR(ar.parameters(), pre, lr=cfg.finetune_lr, weight_decay=cfg.adamr_weight_decay), cfg.seed + 2)
    return DemoModels(base, ft, ar, data, cfg)
