"""The default shapes task must stay easy: a tiny CNN learns it in about a hundred steps."""

import pytest
import torch
import torch.nn as nn

from mmtx.data import ShapesDataset, collate


@pytest.mark.slow
def test_tiny_cnn_learns_default_shape_task():
    torch.manual_seed(0)
    train = collate([ShapesDataset(4000, split="train")[i] for i in range(4000)])
    test = collate([ShapesDataset(500, split="test")[i] for i in range(500)])

    def conv(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))

    model = nn.Sequential(conv(3, 16), conv(16, 32), conv(32, 64), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 6))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(3):  # epochs
        for idx in torch.randperm(4000).split(64):
            loss = nn.functional.cross_entropy(model(train["image"][idx]), train["label"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(test["image"]).argmax(1) == test["label"]).float().mean().item()
    assert acc >= 0.95, f"tiny CNN reached only {acc:.3f} on the default shapes task"
