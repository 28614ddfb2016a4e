"""One option-name check everywhere: an unknown key names itself, where it was given, and the
nearest valid names (or all of them when none is near)."""

import pytest

from mmtx.data import build_dataset
from mmtx.diffusion import create_objective, create_sampler
from mmtx.eval.judge import judge_data_config
from mmtx.keys import check_keys
from mmtx.train.config import load_config
from mmtx.train.tasks import create_task


@pytest.mark.parametrize("call, message", [
    (lambda: build_dataset("shapes", num_smaples=3),
     "unknown option 'num_smaples' for dataset 'shapes'; did you mean num_samples"),
    (lambda: build_dataset("text_lm", seq_lne=8),
     "unknown option 'seq_lne' for dataset TextLMDataset; did you mean seq_len?"),
    (lambda: create_objective("flow", lco=0.0),
     "unknown argument 'lco' for objective 'flow'; did you mean loc"),
    (lambda: create_sampler("euler", create_objective("flow"), setps=3),
     "unknown argument 'setps' for sampler 'euler'; did you mean steps?"),
    (lambda: judge_data_config(imag_size=16),
     "unknown judge data option 'imag_size'; did you mean image_size?"),
    (lambda: create_task("classification", lable_smoothing=0.1),
     "unknown task.args key 'lable_smoothing' for task 'classification'; did you mean "
     "label_smoothing?"),
    (lambda: load_config(None, ["optim.lrr=1"]),
     "unknown config key 'optim.lrr'; did you mean optim.lr"),
])
def test_unknown_keys_name_the_nearest_valid_ones(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(message), str(e.value)


def test_no_near_name_lists_them_all():
    with pytest.raises(ValueError, match=r"^unknown option 'zzz'; valid: alpha, beta$"):
        check_keys({"alpha": 1, "zzz": 2}, ["alpha", "beta"])
