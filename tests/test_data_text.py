"""Tokenizers (round trips, specials, JSON save/load) and the batch collate convention."""

import pytest
import torch

from mmtx.data import (
    BPETokenizer,
    ByteTokenizer,
    CaptionCollate,
    ShapesDataset,
    WordTokenizer,
    build_tokenizer,
    collate,
    load_tokenizer,
    shapes_vocabulary,
)

CAPTIONS = [ShapesDataset(60, task=t)[i]["caption"] for t in ("count", "relation")
            for i in range(60)]


def test_specials_are_first_and_shared():
    for tok in (WordTokenizer.from_texts(CAPTIONS), ByteTokenizer(),
                BPETokenizer.train(CAPTIONS, vocab_size=300)):
        assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
        ids = tok.encode("a red circle")
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.encode("a red circle", add_special=False) == ids[1:-1]
        assert max(ids) < tok.vocab_size == len(tok)


def test_word_tokenizer_round_trip_on_captions():
    tok = WordTokenizer.from_texts(CAPTIONS)
    for text in CAPTIONS:  # generated captions are already normalised text
        assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id not in sum((tok.encode(t) for t in CAPTIONS), [])
    # Frequency-ordered vocabulary: "a" appears in every caption.
    assert tok.itos[5] == "a"


def test_shapes_vocabulary_covers_every_caption():
    tok = WordTokenizer(shapes_vocabulary())
    for task in ("shape", "count", "relation", "caption"):
        ds = ShapesDataset(300, task=task, split="test", num_objects=(2, 4)
                           if task == "count" else None)
        captions = ds.captions  # from the scenes, without rendering
        assert [captions[i] for i in range(0, 300, 50)] == [ds[i]["caption"]
                                                          for i in range(0, 300, 50)]
        for caption in captions:
            ids = tok.encode(caption)
            assert tok.unk_id not in ids and tok.decode(ids) == caption


def test_word_tokenizer_normalises_and_marks_unknown_words():
    tok = WordTokenizer.from_texts(["A red circle, above a square."])
    text = "A RED circle , above a square ."
    assert tok.decode(tok.encode(text)) == "a red circle, above a square." == tok.normalize(text)
    ids = tok.encode("a purple circle", add_special=False)
    assert ids[1] == tok.unk_id and tok.decode(ids) == "a <unk> circle"
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id], skip_special=False).startswith(
        "<bos> a")


def test_word_vocabulary_limits():
    tok = WordTokenizer.from_texts(["a a a b b c"], min_freq=2)
    assert tok.itos[5:] == ["a", "b"]
    assert WordTokenizer.from_texts(["a a b c"], max_size=1).itos[5:] == ["a"]
    with pytest.raises(ValueError, match="texts"):
        WordTokenizer.from_texts(["", "   "])


@pytest.mark.parametrize("text", ["", "a red circle", "naïve café ☕ 漢字", "tabs\tand\nnewlines"])
def test_byte_tokenizer_exact_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) + 2 and tok.decode(ids) == text


def test_bpe_round_trip_and_compression():
    tok = BPETokenizer.train(CAPTIONS, vocab_size=400, min_frequency=2)
    for text in CAPTIONS[:20] + ["unseen words: zebra ☕"]:
        assert tok.decode(tok.encode(text)) == text
    # Merges learnt from the captions make them much shorter than bytes.
    text = CAPTIONS[0]
    assert len(tok.encode(text, add_special=False)) < len(text.encode("utf-8")) / 2


@pytest.mark.parametrize("kind", ["word", "byte", "bpe"])
def test_save_load_round_trip(tmp_path, kind):
    kwargs = {"vocab_size": 300} if kind == "bpe" else {}
    tok = build_tokenizer(kind, CAPTIONS, **kwargs)
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    for text in CAPTIONS[:10]:
        assert loaded.encode(text) == tok.encode(text)
    assert type(tok).load(path).vocab_size == tok.vocab_size


def test_tokenizer_bad_input(tmp_path):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="ids"):
        tok.decode([5, 9999])
    with pytest.raises(ValueError, match="text"):
        tok.encode(None)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="type"):
        load_tokenizer(bad)
    tok.save(bad)
    with pytest.raises(ValueError, match="byte"):
        WordTokenizer.load(bad)
    with pytest.raises(ValueError, match="kind"):
        build_tokenizer("sentencepiece", CAPTIONS)


def test_collate_types_and_shapes():
    items = [{"image": torch.zeros(3, 4, 4), "label": i, "caption": f"c{i}", "score": 0.5,
              "flag": True, "attributes": {"n": i}} for i in range(3)]
    batch = collate(items)
    assert batch["image"].shape == (3, 3, 4, 4)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [0, 1, 2]
    assert batch["score"].dtype == torch.float32 and batch["flag"].dtype == torch.bool
    assert batch["caption"] == ["c0", "c1", "c2"] and batch["attributes"][2] == {"n": 2}
    with pytest.raises(ValueError, match="keys"):
        collate([items[0], {"image": torch.zeros(3, 4, 4)}])
    with pytest.raises(ValueError, match="shape"):
        collate([items[0], dict(items[1], image=torch.zeros(3, 5, 5))])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_caption_collate_pads_masks_and_truncates():
    ds = ShapesDataset(8, task="count")
    tok = WordTokenizer.from_texts(CAPTIONS)
    items = [ds[i] for i in range(8)]
    batch = CaptionCollate(tok, max_len=64)(items)
    ids, mask = batch["caption_ids"], batch["caption_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    lengths = [len(tok.encode(it["caption"])) for it in items]
    assert ids.shape == (8, max(lengths)) and mask.sum(1).tolist() == lengths
    assert (ids[~mask] == tok.pad_id).all()
    for row, it in zip(ids, items):
        assert tok.decode(row) == it["caption"]
    short = CaptionCollate(tok, max_len=6)(items)["caption_ids"]
    assert short.shape == (8, 6) and (short[:, -1] == tok.eos_id).all()
    fixed = CaptionCollate(tok, max_len=40, pad_to_max_len=True)(items[:2])
    assert fixed["caption_ids"].shape == (2, 40)
    with pytest.raises(ValueError, match="caption"):
        CaptionCollate(tok)([{"image": torch.zeros(1), "label": 0}])


def test_caption_collate_with_dataloader_workers_is_picklable():
    import pickle

    tok = ByteTokenizer()
    restored = pickle.loads(pickle.dumps(CaptionCollate(tok, 16)))
    assert restored.max_len == 16 and restored.tokenizer.vocab_size == tok.vocab_size
