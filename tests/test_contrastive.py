"""The CLIP loss (hand-computed values, hard negatives, two processes) and retrieval metrics."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmtx.eval import (
    foil_accuracy,
    retrieval_ranks,
    retrieval_recall,
    zero_shot_accuracy,
)
from mmtx.eval import retrieval as retrieval_module
from mmtx.models.contrastive import (
    ClipLoss,
    clamp_logit_scale_,
    clip_loss,
    logit_scale_from,
    logit_scale_param,
)

ROOT = Path(__file__).resolve().parents[1]


def _direct_loss(img, txt, scale, foils=None, mask=None):
    """The loss written out row by row: -log softmax of the matching pair, both ways."""
    n = len(img)
    i2t = t2i = 0.0
    for i in range(n):
        pos = math.exp(scale * float(img[i] @ txt[i]))
        others = sum(math.exp(scale * float(img[i] @ txt[j])) for j in range(n))
        if foils is not None:
            others += sum(math.exp(scale * float(img[i] @ foils[j])) for j in range(n)
                          if mask is None or mask[j])
        i2t -= math.log(pos / others)
        t2i -= math.log(pos / sum(math.exp(scale * float(txt[i] @ img[j])) for j in range(n)))
    return (i2t + t2i) / (2 * n)


def _unit(n, d=8, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_loss_by_hand_on_two_pairs():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]
    i2t = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(
        math.exp(1.6) / (1 + math.exp(1.6)))
    t2i = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(
        math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = (i2t / 2 + t2i / 2) / 2
    assert clip_loss(img, txt, 2.0).item() == pytest.approx(expected, abs=1e-6)
    assert clip_loss(img, txt, torch.tensor(2.0)).item() == pytest.approx(expected, abs=1e-6)


def test_loss_matches_the_direct_formula_and_cross_entropy():
    img, txt = _unit(6, seed=1), _unit(6, seed=2)
    scale = 1 / 0.07
    loss = clip_loss(img, txt, scale)
    assert loss.item() == pytest.approx(_direct_loss(img, txt, scale), rel=1e-5)
    logits = scale * img @ txt.T
    labels = torch.arange(6)
    ce = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(loss, ce, atol=1e-6)
    assert torch.allclose(ClipLoss()(img, txt, scale), loss)
    # perfectly matched, well separated pairs: the loss goes to zero as the scale grows
    eye = torch.eye(4)
    assert clip_loss(eye, eye, 100.0).item() < 1e-6


def test_hard_negatives_add_image_to_text_columns_only():
    img, txt, foils = _unit(5, seed=3), _unit(5, seed=4), _unit(5, seed=5)
    mask = torch.tensor([True, False, True, True, False])
    scale = 10.0
    plain = clip_loss(img, txt, scale)
    hard = clip_loss(img, txt, scale, hard_negatives=foils)
    masked = clip_loss(img, txt, scale, hard_negatives=foils, hard_negative_mask=mask)
    assert hard.item() == pytest.approx(_direct_loss(img, txt, scale, foils), rel=1e-5)
    assert masked.item() == pytest.approx(_direct_loss(img, txt, scale, foils, mask), rel=1e-5)
    assert plain < masked < hard  # more negatives, more loss
    none = clip_loss(img, txt, scale, hard_negatives=foils,
                     hard_negative_mask=torch.zeros(5, dtype=torch.bool))
    assert torch.allclose(none, plain, atol=1e-6)
    # a foil equal to its caption is as close as the caption: the image->text term of that
    # row can no longer be below log 2
    same = clip_loss(img, txt, 1000.0, hard_negatives=txt)
    assert same.item() >= math.log(2) / 2 - 1e-4
    # gradients reach the foils, and only through the kept ones
    f = foils.clone().requires_grad_()
    clip_loss(img, txt, scale, hard_negatives=f, hard_negative_mask=mask).backward()
    assert (f.grad[~mask] == 0).all() and (f.grad[mask].abs().sum(-1) > 0).all()


def test_gradients_match_autograd_check():
    img = _unit(4, 6, seed=6).double().requires_grad_()
    txt = _unit(4, 6, seed=7).double().requires_grad_()
    foil = _unit(4, 6, seed=8).double().requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.double, requires_grad=True)
    mask = torch.tensor([True, True, False, True])
    assert torch.autograd.gradcheck(
        lambda a, b, c, s: clip_loss(a, b, s, hard_negatives=c, hard_negative_mask=mask),
        (img, txt, foil, scale))


def test_logit_scale_helpers():
    p = logit_scale_param()
    assert p.requires_grad and p.item() == pytest.approx(math.log(1 / 0.07))
    assert logit_scale_from(p).item() == pytest.approx(1 / 0.07, rel=1e-6)
    big = torch.tensor(math.log(1000.0), requires_grad=True)
    scale = logit_scale_from(big)
    assert scale.item() == pytest.approx(100.0, rel=1e-6)
    scale.backward()
    assert big.grad.item() == 0.0  # no push past the bound
    clamp_logit_scale_(big)
    assert big.item() == pytest.approx(math.log(100.0), rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        logit_scale_param(0.0)


def test_loss_argument_errors():
    img, txt = _unit(4), _unit(4)
    with pytest.raises(ValueError, match="text_features"):
        clip_loss(img, txt[:3], 1.0)
    with pytest.raises(ValueError, match="hard_negatives"):
        clip_loss(img, txt, 1.0, hard_negatives=txt[:, :4])
    with pytest.raises(ValueError, match="hard_negative_mask"):
        clip_loss(img, txt, 1.0, hard_negative_mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="hard_negative_mask"):
        clip_loss(img, txt, 1.0, hard_negatives=txt, hard_negative_mask=torch.ones(3).bool())


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "dist.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # torchrun starts each worker in a session of its own: the workers die with torchrun
    # (PR_SET_PDEATHSIG) and after their own alarm; torchrun and everything in its session is
    # killed here on timeout.
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "dist_contrastive.py"), str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun passes it on to its workers
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        pytest.fail("torchrun of tests/dist_contrastive.py timed out")
    assert proc.returncode == 0, log[-4000:]
    results = json.loads(out.read_text())
    assert results["world_size"] == 2 and results["gather_features"]["ok"]
    # the workers imported the loss and mmtx.eval, and with them neither train nor experiments
    assert results["layering_violations"] == []
    for name, r in results.items():
        if not isinstance(r, dict) or "loss_err" not in r:
            continue
        assert r["loss_err"] <= 1e-5, (name, r)
        assert max(r["grad_err"].values()) <= 1e-5, (name, r)
        assert r["logit_scale_grad_err"] <= 1e-5, (name, r)
        assert abs(r["logit_scale_grad"]) > 1e-4  # the check is not vacuous


# --- retrieval ---------------------------------------------------------------------------------

def _basis(i, d=4):
    return torch.eye(d)[i]


def _hand_made():
    """Images e0..e3; text t's own image ranks 0, 1, 2, 0 among the images."""
    images = torch.eye(4)
    texts = torch.stack([
        _basis(0),                                        # own image first
        0.9 * _basis(0) + 0.1 * _basis(1),                # e0 beats its own e1
        0.5 * _basis(3) + 0.3 * _basis(0) + 0.2 * _basis(2),  # e3 and e0 beat e2
        _basis(3) + 0.5 * _basis(1),                      # own image first
    ])
    return images, texts


def test_recall_on_hand_made_embeddings():
    images, texts = _hand_made()
    image_ranks, text_ranks = retrieval_ranks(images, texts)
    assert text_ranks.tolist() == [0, 1, 2, 0]
    # image e1: t3 (0.45) and t1 (0.11) score above zero, t1 is its caption -> t3 beats it
    assert image_ranks.tolist() == [0, 1, 0, 0]
    m = retrieval_recall(images, texts, ks=(1, 2, 5))
    assert m == {"image_to_text_R@1": 0.75, "image_to_text_R@2": 1.0, "image_to_text_R@5": 1.0,
                 "text_to_image_R@1": 0.5, "text_to_image_R@2": 0.75, "text_to_image_R@5": 1.0}
    # scale does not matter (cosine)
    assert retrieval_recall(3 * images, 0.1 * texts, ks=(1, 2, 5)) == m


def test_recall_with_several_captions_per_image():
    images = torch.eye(3)
    texts = torch.stack([_basis(0, 3), 0.1 * _basis(0, 3) + _basis(1, 3),
                         0.8 * _basis(0, 3) + 0.2 * _basis(2, 3),
                         _basis(2, 3), 0.7 * _basis(1, 3) + 0.3 * _basis(0, 3)])
    text_to_image = torch.tensor([0, 0, 2, 2, 1])
    image_ranks, text_ranks = retrieval_ranks(images, texts, text_to_image)
    # image 0: best own caption t0 (1.0) -> rank 0; image 1: t1 (0.995) is image 0's, so t4
    # (0.92) ranks 1; image 2: t3 (1.0) first -> 0
    assert image_ranks.tolist() == [0, 1, 0]
    # t1 belongs to image 0 but is nearly e1 -> rank 1; t2 is nearer e0 than e2 -> rank 1
    assert text_ranks.tolist() == [0, 1, 1, 0, 0]
    m = retrieval_recall(images, texts, text_to_image, ks=(1,))
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["text_to_image_R@1"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_ranks(images, texts, torch.tensor([0, 0, 2, 2, 2]))
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_ranks(images, texts)  # 3 images, 5 texts
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_ranks(images, texts, torch.tensor([0, 0, 2, 2, 3]))


def test_ties_count_against_the_model_and_chunks_agree(monkeypatch):
    same = torch.ones(5, 3)
    m = retrieval_recall(same, same, ks=(1, 5))
    assert m["image_to_text_R@1"] == 0.0 and m["text_to_image_R@1"] == 0.0
    assert m["image_to_text_R@5"] == 1.0 and m["text_to_image_R@5"] == 1.0
    images, texts = _unit(50, 16, seed=10), _unit(70, 16, seed=11)
    t2i = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(0))
    t2i[:50] = torch.arange(50)  # every image has a caption
    whole = retrieval_ranks(images, texts, t2i)
    monkeypatch.setattr(retrieval_module, "_CHUNK", 7)
    chunked = retrieval_ranks(images, texts, t2i)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))
    # against a sort-based reference (no ties in random data)
    sims = images @ texts.T
    for t in range(70):
        order = sims[:, t].argsort(descending=True).tolist()
        assert whole[1][t] == order.index(int(t2i[t]))
    for i in range(50):
        order = sims[i].argsort(descending=True).tolist()
        assert whole[0][i] == min(order.index(t) for t in range(70) if t2i[t] == i)


def test_zero_shot_and_foil_accuracy():
    classes = torch.eye(3)  # (C, D)
    images = torch.tensor([[1.0, 0.1, 0.0], [0.2, 1.0, 0.0], [0.6, 0.0, 0.5], [0.0, 0.3, 1.0]])
    labels = torch.tensor([0, 1, 2, 2])
    # image 2 is nearer class 0 (second is its class), the rest are right
    assert zero_shot_accuracy(images, classes, labels, ks=(1, 2)) == {"top1": 0.75, "top2": 1.0}
    # prompt ensembles: (C, P, D), averaged after normalising
    prompts = torch.stack([classes, 2 * classes], dim=1)  # (3, 2, 3)
    assert zero_shot_accuracy(images, prompts, labels) == {"top1": 0.75}
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(images, classes, torch.tensor([0, 1, 2, 3]))
    captions = images.clone()
    foils = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.6, 0.0, 0.5], [1.0, 0.0, 0.0]])
    # row 2: the foil equals the caption, a tie: a miss
    assert foil_accuracy(images, captions, foils) == 0.75
    assert foil_accuracy(images, captions, foils, mask=torch.tensor([1, 1, 0, 1]).bool()) == 1.0

