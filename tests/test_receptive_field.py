"""receptive_field: hand-computed fields of small stacks, and the registered CNNs."""

import pytest
import torch.nn as nn

from mmtx import create_model
from mmtx.models.receptive_field import receptive_field, receptive_field_layers, sees_whole_image


def conv(k=3, s=1, d=1):
    return nn.Conv2d(3, 3, k, stride=s, dilation=d, padding=d * (k // 2))


@pytest.mark.parametrize("layers, rf", [
    ([conv()], 3),
    ([conv(), conv(), conv()], 7),  # 3 + 2 + 2
    ([conv(), nn.ReLU(), nn.BatchNorm2d(3), conv()], 5),  # non-geometric layers add nothing
    ([conv(s=2), conv()], 7),  # 3, then 2 * jump 2
    ([conv(), conv(s=2), conv(), conv()], 13),  # 3, 5 (jump 2), 9, 13
    ([conv(d=2)], 5),  # dilation 2: effective kernel 5
    ([conv(), conv(d=2), conv(d=4)], 15),  # 3 + 4 + 8
    ([conv(), nn.MaxPool2d(2), conv()], 8),  # 3, 4 (jump 2), 8
    ([conv(k=5), nn.AvgPool2d(3, stride=2), conv(k=1)], 7),  # 5, 7, 7
    ([conv(), nn.AdaptiveAvgPool2d(1)], 3),  # a global pool widens no unit's field
    ([nn.Linear(3, 3)], 1),
])
def test_hand_computed_fields(layers, rf):
    assert receptive_field(nn.Sequential(*layers)) == rf


def test_walk_records_jump_and_names():
    walk = receptive_field_layers(nn.Sequential(conv(), conv(s=2), nn.MaxPool2d(2), conv(d=2)))
    assert [(w.name, w.rf, w.jump) for w in walk] == [("0", 3, 1), ("1", 5, 2), ("2", 7, 4),
                                                      ("3", 23, 4)]


def test_registered_cnns():
    # ConvNet stage: conv, conv, 2x2 pool; three stages: 3,5,6 | 10,14,16 | 24,32,36
    assert receptive_field(create_model("convnet_small", widths=[8, 16, 32])) == 36
    assert receptive_field(create_model("convnet_small", widths=[8, 16, 32, 64])) == 76
    # stem conv 3, pool 4 (jump 2), dilations 1, 2, 4, 8 add 2 * d * 2 each: 4 + 60 = 64
    dilated = create_model("convnet_dilated", width=8)
    assert receptive_field(dilated) == 64
    assert sees_whole_image(64, 32) and not sees_whole_image(36, 32)
    # the ResNet's downsample shortcuts are skipped: conv1 3, then 4 stages
    resnet = create_model("resnet18_small")
    assert receptive_field(resnet) == receptive_field(resnet, skip=("downsample",))
    assert receptive_field(resnet) < receptive_field(resnet, skip=())


def test_not_a_module():
    with pytest.raises(ValueError, match="model: expected an nn.Module, got list"):
        receptive_field([conv()])


def test_dilated_convnet_shapes_and_bad_dilations():
    import torch

    m = create_model("convnet_dilated", width=8, num_classes=2)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="dilations: expected a non-empty list"):
        create_model("convnet_dilated", dilations=[1, 0])
