"""The written contracts: every registered generator keeps `Generator`; mmtx's datasets and a
user's own (no mmtx class) keep the dataset protocols the tasks read."""

from __future__ import annotations

import inspect

import pytest
import torch

from mmtx.data import DigitsDataset, ShapesDataset
from mmtx.data.base import SubsetDataset
from mmtx.data.protocols import ClassDataset, ImageDataset, NamedClassDataset, VocabularyDataset
from mmtx.models import list_models, model_info
from mmtx.models.protocols import CONDITION_KWARGS, Generator, prediction
from mmtx.train.tasks import create_task
from mmtx.train.tasks.captioning import caption_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

GENERATORS = [n for n in list_models() if model_info(n).task == "generation"]


@pytest.mark.parametrize("name", GENERATORS)
def test_every_registered_generator_keeps_the_contract(name, small_model):
    s = small_model(name)
    model = s.model.eval()
    assert isinstance(model, Generator)
    params = inspect.signature(model.forward).parameters
    assert list(params)[:2] == ["x", "t"] and set(CONDITION_KWARGS) <= set(params)
    x, t, y = s.inputs
    out = model(x, t, y=y, cond_drop_mask=torch.tensor([True, False]))
    assert out.shape == x.shape and model.out_chans == model.in_chans == x.shape[1]
    assert torch.equal(prediction(out, x), out)


def test_learned_variance_is_dropped_by_prediction(small_model):
    s = small_model("dit_micro_2", learn_sigma=True)
    x = s.inputs[0]
    out = s.model(*s.inputs)
    assert s.model.out_chans == 2 * x.shape[1] and out.shape[1] == 2 * x.shape[1]
    assert torch.equal(prediction(out, x), out[:, :x.shape[1]])
    with pytest.raises(ValueError, match=r"input's shape \(2, 2, 8, 8\) or twice its channels"):
        prediction(out[:, :3], x)


def test_mmtx_datasets_keep_the_dataset_protocols():
    shapes, digits = ShapesDataset(4, task="shape_colour"), DigitsDataset()
    for ds in (shapes, digits, SubsetDataset(shapes, [0, 1])):
        assert isinstance(ds, ImageDataset) and isinstance(ds, NamedClassDataset)
    assert isinstance(SubsetDataset(shapes, [0]), VocabularyDataset)
    assert not isinstance(digits, VocabularyDataset)


class UserImages:
    """A user's dataset: no mmtx class, only the protocols' attributes."""

    in_chans, image_size, num_classes = 1, 8, 3

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": torch.zeros(1, 8, 8), "label": i % 3, "caption": "a b"}

    def vocabulary(self):
        return ["a", "b", "c"]


def test_tasks_read_a_users_dataset_through_the_protocols():
    ds = UserImages()
    assert isinstance(ds, ClassDataset) and not isinstance(ds, NamedClassDataset)
    task = create_task("classification")
    task.setup(ds)
    assert task.model_kwargs(ds) == {"in_chans": 1, "img_size": 8, "num_classes": 3}
    assert task.class_names is None
    gen = create_task("generation", judge=False)
    kw = gen.model_kwargs(ds)
    assert (kw["in_chans"], kw["img_size"], kw["num_classes"]) == (1, 8, 3)
    gen.setup(ds)
    assert gen.class_names == ["0", "1", "2"]
    # A caption vocabulary from the dataset, not from naming the shapes data.
    tok = caption_tokenizer(ds)
    assert tok.decode(tok.encode("a c b")) == "a c b"


def _state(obj, depth: int = 2):
    """The attributes of `obj` (and of its attributes' attributes), to compare before/after."""
    if depth == 0 or not hasattr(obj, "__dict__") or isinstance(obj, (torch.Tensor, type)):
        return obj
    return {k: _state(v, depth - 1) for k, v in vars(obj).items()}


@pytest.mark.parametrize("task_name, args, data", [
    ("classification", {}, dict(task="shape_colour")),
    ("generation", dict(judge=False), dict(task="shape_colour")),
    ("generation", dict(judge=False, cond="caption"), dict(task="caption")),
    ("captioning", {}, dict(task="caption")),
    ("contrastive", {}, dict(task="caption")),
])
def test_model_kwargs_changes_nothing_setup_reads_the_data(task_name, args, data):
    ds = ShapesDataset(4, image_size=16, **data)
    task = create_task(task_name, **args)
    before = _state(task)
    kwargs = task.model_kwargs(ds)
    assert _state(task) == before  # pure
    task.setup(ds)
    assert _state(task) != before  # what the task keeps of the data
    assert task.model_kwargs(ds) == kwargs  # the same kwargs before and after setup
