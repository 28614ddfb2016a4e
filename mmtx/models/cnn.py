"""CNN baselines: torchvision's ResNet adapted to small images, a plain ConvNet, any timm model.

For 32 px images the ImageNet stem (7x7 stride-2 conv + max-pool) throws away 3/4 of the
resolution before the first block; the usual small-image ResNet (He et al. 2016, Sec. 4.2 CIFAR
setup, and the widely used kuangliu/pytorch-cifar variant) uses a 3x3 stride-1 stem and no
max-pool, so the four stages see 32, 16, 8 and 4 px.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from .examples import images_to_logits, register_example
from .registry import register_model, register_prefix


def _check_channels(images: torch.Tensor, in_chans: int) -> None:
    if images.dim() != 4 or images.shape[1] != in_chans:
        raise ValueError(f"images must be (B, {in_chans}, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():  # e.g. uint8 pixels straight from a file
        raise ValueError(f"images must be a float tensor (normalised as in training), got "
                         f"{images.dtype}")


def _init_conv_weights(model: nn.Module) -> None:
    """Kaiming (fan-out, ReLU) convs as torchvision's ResNet; BN at identity; small head."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


@functools.cache
def _small_resnet_class() -> type:
    """SmallResNet subclasses torchvision's ResNet; it is built on first use so that importing
    mmtx does not import torchvision (seconds per process, in every experiment worker)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class SmallResNet(ResNet):
        """torchvision ResNet with a 3x3 stride-1 stem and no max-pool, for 8-64 px images.

        `img_size` is accepted for a uniform factory signature; the network takes any size.
        drop_rate: dropout before the classifier (timm's ResNet option; torchvision has none).
        """

        def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3,
                     img_size=32, zero_init_residual: bool = True, drop_rate: float = 0.0):
            # zero_init_residual: each block starts as the identity (Goyal et al. 2017), which
            # helps small-batch / short-schedule training that these baselines are used for.
            super().__init__(BasicBlock, list(layers), num_classes=max(num_classes, 1),
                             zero_init_residual=zero_init_residual)
            self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
            self.num_features = self.fc.in_features
            self.drop = nn.Dropout(drop_rate)
            if num_classes == 0:
                self.fc = nn.Identity()

        def forward_features(self, images: torch.Tensor) -> torch.Tensor:
            """(B, C, H, W) -> feature map (B, 512, H/8, W/8)."""
            _check_channels(images, self.in_chans)
            x = self.relu(self.bn1(self.conv1(images)))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            x = self.drop(torch.flatten(self.avgpool(x), 1))  # (B, 512)
            return x if pre_logits else self.fc(x)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.forward_head(self.forward_features(images))

    SmallResNet.__qualname__ = "SmallResNet"  # pickled by name: found via __getattr__ below
    return SmallResNet


def __getattr__(name: str):
    if name == "SmallResNet":
        return _small_resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConvNet(nn.Module):
    """A plain VGG-style ConvNet: per stage two 3x3 conv-BN-ReLU then 2x2 max-pool; global
    average pool and a linear head. The no-frills CNN a ViT should at least beat."""

    def __init__(self, widths=(32, 64, 128), num_classes: int = 10, in_chans: int = 3,
                 img_size=32, drop_rate: float = 0.0):
        super().__init__()
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        layers, c = [], in_chans
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 8 px digits survive 3 pools
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        _init_conv_weights(self)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        _check_channels(images, self.in_chans)
        return self.features(images)  # (B, C_last, H', W')

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))  # (B, C_last)
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def timm_model(name: str, **kwargs) -> nn.Module:
    """Any timm model by name, randomly initialised (pretrained=False: nothing is downloaded).

    in_chans / num_classes pass through; img_size is dropped for models that do not take it
    (CNNs take any size), so the engine can pass the dataset's values to every model alike.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    if kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True is not supported (no downloads); load a checkpoint "
                         "file instead (mmtx.models.vit.load_timm_checkpoint for ViTs)")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:  # CNN classes reject an unexpected img_size keyword: drop it
        if "img_size" in kwargs and "img_size" in str(e):
            kwargs.pop("img_size")
            return timm.create_model(name, pretrained=False, **kwargs)
        raise


register_prefix("timm/", timm_model)  # create_model("timm/<name>", ...)


def _small_resnet(layers, kw) -> nn.Module:
    return _small_resnet_class()(layers, **kw)


@register_model(family="cnn", task="classification")
def resnet18_small(**kw) -> nn.Module:
    """ResNet-18 (11.2 M params at 10 classes) with the small-image stem."""
    return _small_resnet((2, 2, 2, 2), kw)


@register_model(family="cnn", task="classification")
def resnet34_small(**kw) -> nn.Module:
    return _small_resnet((3, 4, 6, 3), kw)


@register_model(family="cnn", task="classification")
def convnet_small(**kw) -> ConvNet:
    return ConvNet(**kw)


class DilatedConvNet(nn.Module):
    """A ConvNet whose every output unit sees the whole image (the context module of Yu & Koltun
    2016): a 3x3 conv-BN-ReLU stem and a 2x2 max-pool, then residual 3x3 conv-BN-ReLU blocks
    with dilations 1, 2, 4, 8, ... at that one resolution, so the receptive field grows
    exponentially with depth (64 px after four blocks at the default; a 32 px image needs 63 for
    a unit in one corner to see the far corner) while the map keeps every object's detail.
    Global average pool and a linear head, as ConvNet."""

    def __init__(self, width: int = 32, dilations=(1, 2, 4, 8), num_classes: int = 10,
                 in_chans: int = 3, img_size=32, drop_rate: float = 0.0):
        super().__init__()
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations: expected a non-empty list of ints >= 1, "
                             f"got {dilations!r}")
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes

        def conv_bn(c_in, dilation=1):
            return [nn.Conv2d(c_in, width, 3, padding=dilation, dilation=dilation, bias=False),
                    nn.BatchNorm2d(width)]

        self.stem = nn.Sequential(*conv_bn(in_chans), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(2, ceil_mode=True))
        self.blocks = nn.ModuleList(nn.Sequential(*conv_bn(width, int(d))) for d in dilations)
        self.num_features = width
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """As ConvNet, except each residual block's BN starts at zero: every block begins as
        the identity (Goyal et al. 2017), so the deep dilated stack trains like a shallow one at
        first."""
        _init_conv_weights(self)
        for block in self.blocks:
            nn.init.zeros_(block[-1].weight)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        _check_channels(images, self.in_chans)
        x = self.stem(images)  # (B, width, H/2, W/2)
        for block in self.blocks:
            x = torch.relu(x + block(x))  # same shape: dilation d pads by d
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))  # (B, width)
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


@register_model(family="cnn", task="classification")
def convnet_dilated(**kw) -> DilatedConvNet:
    """Whole-image receptive field at half resolution: 64 px at the default four blocks."""
    return DilatedConvNet(**kw)


# (CNN baselines cannot be narrowed by overrides; the 8 px example input keeps them fast.)
register_example("cnn", images_to_logits())
