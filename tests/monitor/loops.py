"""The small training loops the monitor tests share: a regression MLP, its data, and token loaders."""

import torch
from torch import nn

from cookbook.monitor import TrainingMonitor


def mlp(seed=0, depth=3, width=16, act=nn.Tanh):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def data(seed=0, n=64, width=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    return x, x[:, :1] * 2 - x[:, 1:2]


def healthy_loop(model, steps=40, lr=1e-2, mon=None, **kwargs):
    """Plain regression training with the monitor between backward and optimizer.step."""
    mon = mon or TrainingMonitor(hardware=False, **kwargs)
    x, y = data()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(model, loss, step=step, optimizer=opt, tokens=len(x))
        opt.step()
        opt.zero_grad()
    return mon


def sgd_until_stopped(model, mon, lr, target_scale=lambda step: 1.0, steps=30):
    """SGD regression with the monitor in the loop, stopping when it asks; returns the last step."""
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y * target_scale(step))
        loss.backward()
        mon.step(model, loss, step=step, optimizer=opt)
        opt.step()
        opt.zero_grad()
        if mon.should_stop:
            break
    return step


def token_loaders(n=48, seq=32, vocab=128, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    train_set = torch.utils.data.TensorDataset(ids)
    as_batch = lambda rows: {"input_ids": torch.stack([r[0] for r in rows])}  # noqa: E731
    return (torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, collate_fn=as_batch, generator=g),
            torch.utils.data.DataLoader(train_set, batch_size=batch, collate_fn=as_batch))
