"""The pointing game on hand-made maps and masks."""

import pytest
import torch

from mmtx.eval import patch_coverage, pointing_game


def test_pointing_game_hits_misses_and_baseline():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 0:3, 0:3] = True  # covers patches (0,0), (0,1), (1,0), (1,1) of a 4x4 grid
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0  # peak on a covered patch: a hit
    maps[1, 3, 3] = 1.0  # peak far away: a miss
    hit, base = pointing_game(maps, masks)
    assert hit.tolist() == [True, False]
    assert base.tolist() == [4 / 16, 4 / 16]  # a random patch lands on the object 1 time in 4
    assert patch_coverage(masks, (4, 4))[0].sum() == 4


def test_pointing_game_bad_input():
    with pytest.raises(ValueError, match="do not tile"):
        pointing_game(torch.zeros(1, 3, 3), torch.zeros(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="one N"):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.bool))
