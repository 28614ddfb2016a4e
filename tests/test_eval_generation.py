"""mmtx.eval.generation: Frechet distance on custom features, its floor, conditional accuracy."""

import pytest
import torch
import torch.nn as nn

from mmtx.eval.generation import (
    conditional_accuracy,
    fd_metric,
    frechet_distance,
    frechet_report,
    real_floor,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def gaussian_images(n, mean, std, generator):
    """n samples of N(mean, diag(std^2)) in 4-D, shaped as (n, 1, 2, 2) images."""
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return (mean + std * x).float().reshape(n, 1, 2, 2)


def closed_form(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by symmetric eigendecompositions
    (an implementation independent of torchmetrics' eigvals(S1 S2))."""
    def sqrtm(s):
        w, v = torch.linalg.eigh(s)
        return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    r1 = sqrtm(s1)
    return ((mu1 - mu2) ** 2).sum() + torch.trace(s1 + s2 - 2 * sqrtm(r1 @ s2 @ r1))


def stats(images):
    f = images.reshape(images.shape[0], -1).double()
    return f.mean(0), torch.cov(f.T)  # covariance with n - 1, as torchmetrics


def test_distance_of_a_set_with_itself_is_zero():
    x = gaussian_images(500, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert abs(frechet_distance(x, x, nn.Flatten(), value_range=None)) < 1e-6


def test_shifted_gaussians_match_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    std = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    real = gaussian_images(4000, 0.0, 1.0, g)
    fake = gaussian_images(4000, mean, std, g)
    fd = frechet_distance(real, fake, nn.Flatten(), batch_size=1000, value_range=None)
    # exactly the closed form on the sets' own means and covariances ...
    assert fd == pytest.approx(closed_form(*stats(real), *stats(fake)).item(), rel=1e-6)
    # ... and near the population value |mu|^2 + sum (1 + s^2 - 2 s) = 5.25 + 1.25
    population = (mean ** 2).sum() + (1 + std ** 2 - 2 * std).sum()
    assert population.item() == pytest.approx(6.5)
    assert fd == pytest.approx(population.item(), rel=0.05)


def test_distance_grows_when_distributions_differ_and_floor_is_small():
    g = torch.Generator().manual_seed(1)
    real = gaussian_images(2000, 0.0, 1.0, g)
    floor = real_floor(real, nn.Flatten(), generator=g, value_range=None)
    shifted = frechet_distance(real[:1000], gaussian_images(1000, 0.5, 1.0, g), nn.Flatten(),
                               value_range=None)
    assert 0 < floor < 0.05
    assert shifted == pytest.approx(4 * 0.25, rel=0.15) and shifted > 10 * floor


def test_report_uses_equal_sizes_and_our_name():
    g = torch.Generator().manual_seed(2)
    real, fake = gaussian_images(600, 0.0, 1.0, g), gaussian_images(200, 1.0, 1.0, g)
    report = frechet_report(real, fake, nn.Flatten(), generator=g, value_range=None)
    assert set(report) == {"fd_shapes", "fd_shapes_floor"}
    assert report["fd_shapes"] > 10 * report["fd_shapes_floor"]


def test_values_are_clamped_to_the_image_range():
    g = torch.Generator().manual_seed(3)
    x = gaussian_images(300, 0.0, 1.0, g)
    # clamped into [-1, 1], the sets x and 5x become the same wherever |x| >= 1
    assert frechet_distance(x, 5 * x, nn.Flatten()) < frechet_distance(
        x, 5 * x, nn.Flatten(), value_range=None)


class SmallNet(nn.Module):
    """A feature extractor that cannot take torchmetrics' default 299 x 299 uint8 dummy input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        assert x.shape[-2:] == (8, 8) and x.dtype == torch.float32
        return self.drop(self.conv(x).relu().mean((2, 3)))  # (B, 8)


def test_custom_extractor_eval_mode_and_no_grad():
    torch.manual_seed(0)
    net = SmallNet().train()
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    fd = frechet_distance(images, images, net)
    assert abs(fd) < 1e-6  # dropout off: the same images give the same features
    assert net.training  # mode restored
    metric = fd_metric(net, images[:4])
    assert metric.inception.num_features == 8


def test_extractor_must_give_2d_features():
    images = torch.rand(8, 3, 8, 8)
    with pytest.raises(ValueError, match="feature_extractor"):
        frechet_distance(images, images, nn.Conv2d(3, 2, 3))  # (B, 2, 6, 6), not (B, D)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(images, images[:1], nn.Flatten())
    with pytest.raises(ValueError, match="size"):
        real_floor(images, nn.Flatten(), size=5)


# ---- conditional accuracy ----


class LookupClassifier(nn.Module):
    """Reads an index from pixel (0, 0) and returns hand-made logits for it."""

    def __init__(self, logits: dict | torch.Tensor | tuple):
        super().__init__()
        self.logits = logits

    def forward(self, images):
        idx = images[:, 0, 0, 0].long()
        if isinstance(self.logits, dict):
            return {k: v[idx] for k, v in self.logits.items()}
        if isinstance(self.logits, tuple):
            return tuple(v[idx] for v in self.logits)
        return self.logits[idx]


def index_images(n):
    return torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)


def test_conditional_accuracy_per_attribute_from_a_dict():
    # shape logits: predictions 0, 1, 2, 0, 1, 2; colour predictions 1, 1, 0, 0, 1, 1
    shape = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    colour = torch.eye(2)[[1, 1, 0, 0, 1, 1]]
    clf = LookupClassifier({"shape": shape, "colour": colour})
    targets = {"shape": torch.tensor([0, 1, 2, 1, 1, 0]),
               "colour": torch.tensor([1, 0, 0, 0, 1, 1])}
    acc = conditional_accuracy(clf, index_images(6), targets, batch_size=4)
    assert acc["shape"] == pytest.approx(4 / 6)
    assert acc["colour"] == pytest.approx(5 / 6)
    assert acc["all"] == pytest.approx(3 / 6)  # samples 0, 2, 4 have both right
    # the same with (B, A) targets in the classifier's attribute order
    stacked = torch.stack([targets["shape"], targets["colour"]], dim=1)
    assert conditional_accuracy(clf, index_images(6), stacked) == acc


def test_conditional_accuracy_single_and_tuple_outputs():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])  # argmax 0 1 0 1
    acc = conditional_accuracy(LookupClassifier(logits), index_images(4),
                               torch.tensor([0, 1, 1, 1]))
    assert acc == {"class": 0.75}
    tup = conditional_accuracy(LookupClassifier((logits, logits)), index_images(4),
                               [torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 0, 1])],
                               names=["shape", "colour"])
    assert tup == {"shape": 0.75, "colour": 1.0, "all": 0.75}


def test_conditional_accuracy_errors():
    clf = LookupClassifier({"shape": torch.eye(3)})
    with pytest.raises(ValueError, match="shape"):
        conditional_accuracy(clf, index_images(3), {"colour": torch.zeros(3)})
    with pytest.raises(ValueError, match="3 entries"):
        conditional_accuracy(clf, index_images(3), {"shape": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        conditional_accuracy(clf, torch.zeros(3, 4), {"shape": torch.zeros(3)})
