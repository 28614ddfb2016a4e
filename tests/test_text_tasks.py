"""Text datasets, engine tasks and the LSTM baseline: contents, masking, losses, a tiny run."""


import pytest
import torch

from mmtx.data import build_dataset
from mmtx.data.text import RecallDataset, Seq2SeqDataset, TextLMDataset, apple_sentences
from mmtx.models import create_model
from mmtx.models.rnn import LSTMModel
from mmtx.train.tasks.text import NUM_SPECIALS, MaskedLMTask


def test_recall_label_is_the_token_distance_back():
    ds = RecallDataset("test", distance=12, num_samples=100, vocab_size=8, marked=False)
    item = ds[3]
    assert item["ids"].shape == (12 + 4 + 1,) and ds.vocab_size == ds.num_classes == 8
    assert item["label"] == int(item["ids"][-1 - 12])
    assert not torch.equal(RecallDataset("train", 12)[0]["ids"],
                           RecallDataset("test", 12)[0]["ids"])  # splits differ


def test_recall_marked_token_is_the_only_marked_one():
    ds = RecallDataset("val", distance=5, vocab_size=8)
    assert ds.vocab_size == 16 and ds.num_classes == 8
    for i in range(len(ds)):
        ids, label = ds[i]["ids"], ds[i]["label"]
        assert (ids >= 8).nonzero().flatten().tolist() == [len(ids) - 1 - 5]
        assert int(ids[-1 - 5]) == label + 8


@pytest.mark.parametrize("task", ["reverse", "sort"])
def test_seq2seq_targets(task):
    ds = Seq2SeqDataset("val", task=task, max_len=6)
    item = ds[0]
    n = int(item["src_mask"].sum())
    src = item["src"][:n]
    want = src.flip(0) if task == "reverse" else src.sort().values
    assert item["tgt"][0] == ds.bos_id and item["tgt"][n + 1] == ds.eos_id
    assert torch.equal(item["tgt"][1:n + 1], want)
    assert (item["tgt"][n + 2:] == 0).all() and (item["src"][n:] == 0).all()


def test_text_lm_from_a_file_and_by_name(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 200)
    ds = build_dataset("text_lm", "train", path=str(path), level="byte", seq_len=16)
    assert ds[0]["ids"].shape == (17,)
    assert ds.tokenizer.decode(ds[0]["ids"].tolist()).startswith("hello world\nhello")
    with pytest.raises(FileNotFoundError, match="path"):
        TextLMDataset(path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unknown option 'seqlen'"):
        build_dataset("text_lm", "train", seqlen=3)


def test_masked_lm_corruption_follows_80_10_10():
    task = MaskedLMTask(mask_prob=0.15)
    task.vocab_size = 100
    ids = torch.randint(NUM_SPECIALS, 100, (200, 100))
    ids[:, 0] = 1  # a special token is never chosen
    inputs, chosen = task.corrupt(ids, torch.Generator().manual_seed(0))
    assert not chosen[:, 0].any()
    frac = chosen.float().mean().item()
    assert 0.13 < frac < 0.17
    masked = (inputs == task.mask_id) & chosen
    kept = (inputs == ids) & chosen
    assert 0.77 < masked.sum() / chosen.sum() < 0.83
    assert 0.08 < kept.sum() / chosen.sum() < 0.12 + 0.01  # 10% kept (+ random hits itself)
    assert torch.equal(inputs[~chosen], ids[~chosen])  # unchosen positions untouched


def test_lstm_pools_the_last_real_token():
    torch.manual_seed(0)
    m = LSTMModel(vocab_size=10, dim=8, hidden_dim=8, num_layers=1, num_classes=3,
                  pool="last", drop_rate=0.0).eval()
    ids = torch.randint(0, 10, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    out = m(ids, mask)
    torch.testing.assert_close(out[1], m(ids[1:, :4])[0])  # padding after the end is ignored
    assert create_model("lstm_tiny", vocab_size=10)(ids).shape == (2, 6, 10)


def test_apple_sentences_balanced_and_held_out_words():
    from mmtx.data.text import _APPLE_SLOTS

    s, y = apple_sentences(40, words=slice(3, 6))
    assert sum(y) == 20 and all(t.split()[4] == "apple" for t in s)
    seen = {w for t in s for w in t.split()}
    for slots in _APPLE_SLOTS:
        for slot in slots:
            assert not seen & set(slot[:3])  # only the held-out half of each slot
            assert seen & set(slot[3:])
    # the frame is shared: without the slot words, both senses read the same
    frames = {tuple(w for w in t.split() if not any(w in slot for sl in _APPLE_SLOTS
                                                     for slot in sl)) for t in s}
    assert frames == {("the", "apple", p, "the", ".") for p in ("near", "with", "after", "for")}


def test_seq2seq_task_learns_in_a_tiny_run(tmp_path):
    from mmtx.train import train

    cfg = {"model": {"name": "seq2seq_tiny", "args": {"dim": 32, "depth": 1, "drop_rate": 0.0}},
           "data": {"name": "seq2seq_synth", "args": {"num_samples": 256, "max_len": 5},
                    "batch_size": 32, "augment": False},
           "task": {"name": "seq2seq"}, "optim": {"lr": 3e-3},
           "train": {"max_steps": 30, "log_every": 10},
           "logging": {"progress": False}}
    res = train(cfg, tmp_path / "run")
    first = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    assert res["test/loss"] < 0.9 * __import__("json").loads(first)["train/loss"]
    assert 0.0 <= res["test/exact"] <= 1.0
