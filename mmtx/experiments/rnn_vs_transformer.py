"""The RNN-vs-Transformer study and the context-aware embedding ("apple") probe.

`mmtx run experiments/rnn_vs_transformer.yaml` lands here (its YAML has
`kind: rnn_vs_transformer`). Three measurements, one report:
1. accuracy vs distance on long-range recall (`mmtx.data.text.RecallDataset`), each model
   trained by the engine with the `text_classification` task;
2. training time per step vs sequence length, measured side by side, interleaved (the LSTM's
   recurrence is sequential in the length; attention is parallel);
3. the "apple" probe: a bidirectional encoder trained with masked LM; the word "apple" has one
   input embedding but its contextual embeddings separate fruit from company sentences
   (2-D PCA plot and a linear-probe accuracy, trained vs untrained encoder).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cache
from .pool import is_main_process
from .registry import register_kind
from .report import Panel, write_report
from .runs import Run, Spec, train_runs


@dataclass
class Timing:
    lengths: list[int] = field(default_factory=lambda: [64, 256, 1024])
    batch: int = 16
    repeats: int = 5


@dataclass
class ProbeSpec:
    sentences: int = 200  # probe sentences to fit on, and as many to score on
    corpus_sentences: int = 4000  # the encoder's training corpus
    config: dict = field(default_factory=dict)  # the masked-LM training config


@dataclass
class RnnVsTransformerSpec(Spec):
    kind: str = "rnn_vs_transformer"
    models: list[dict] = field(default_factory=list)  # {name, label, args}
    distances: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    timing: Timing = field(default_factory=Timing)
    probe: ProbeSpec | None = None

    def check(self) -> None:
        super().check()
        if not self.models or not self.distances:
            raise ValueError(f"{self.name}: 'models' and 'distances' must be non-empty lists")
        for m in self.models:
            if not isinstance(m, dict) or "name" not in m or "label" not in m:
                raise ValueError(f"{self.name}: each model needs 'name' and 'label', got {m!r}")


def measure_recall(res: dict, run_dir: Path, label: str, distance: int, seed: int) -> dict:
    """One trained recall run's result."""
    epochs = res["epochs"] or 1.0
    return {"model": label, "distance": distance, "seed": seed,
            "test_accuracy": res["test_accuracy"], "steps": res["steps"],
            "train_s": res["train_s"], "s_per_epoch": res["train_s"] / epochs,
            "s_per_step": res["train_s"] / max(1, res["steps"]), "params": res["params"],
            "wall_s": res["wall_s"]}


def time_per_step(spec: RnnVsTransformerSpec, lengths, batch: int = 16,
                  repeats: int = 5) -> list[dict]:
    """Median seconds of one training step (forward, backward, AdamW) per model and length,
    interleaved so that machine load hits every model alike."""
    from ..models import create_model

    rows = []
    for length in lengths:
        models = {}
        for m in spec.models:
            torch.manual_seed(0)
            args = {**(m.get("args") or {}), "vocab_size": 8, "num_classes": 8,
                    "max_len": length}
            net = create_model(m["name"], **args)
            models[m["label"]] = (net, torch.optim.AdamW(net.parameters(), 1e-3))
        ids = torch.randint(0, 8, (batch, length))
        labels = torch.randint(0, 8, (batch,))
        times = {k: [] for k in models}
        for r in range(repeats + 1):
            for label, (net, opt) in models.items():
                t = time.perf_counter()
                F.cross_entropy(net(ids), labels).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if r:  # the first round warms up
                    times[label].append(time.perf_counter() - t)
        for label, ts in times.items():
            rows.append({"model": label, "length": length, "s_per_step": statistics.median(ts)})
    return rows


@torch.no_grad()
def _apple_features(model, tokenizer, sentences) -> list:
    """Per layer, the vector at the word "apple" in each sentence: [(N, dim)] for the input
    embedding (token + position), each block's output, and the final (normed) output."""
    apple = tokenizer.encode("apple", add_special=False)[0]
    model.eval()
    per_sentence = []
    for s in sentences:
        ids = torch.tensor([tokenizer.encode(s)])
        pos = int((ids[0] == apple).nonzero()[0])
        out, inter = model.forward_features(ids, return_hidden=True)  # (1, L, dim)
        per_sentence.append([h[0, pos] for h in inter.hidden] + [out[0, pos]])
    return [torch.stack(layer).numpy() for layer in zip(*per_sentence)]


def apple_probe(probe: ProbeSpec, out: Path) -> dict:
    """Train an encoder with masked LM on apple sentences, then probe "apple" embeddings.

    The probe (logistic regression, fruit vs company) is fit on sentences using the first three
    words of each slot and scored on sentences using only the other three: it can only
    transfer if the encoder learned, from the corpus, which words belong together. The
    untrained encoder (same architecture, fresh weights) is the control.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from ..data.text import TextLMDataset, apple_sentences
    from ..train import train

    cfg = copy.deepcopy(probe.config)
    # The encoder learns from a corpus of apple sentences in both senses (every slot word);
    # which words go together is all there is to learn about the senses.
    corpus = out / "apple_corpus.txt"
    corpus.write_text("\n".join(apple_sentences(probe.corpus_sentences,
                                                 seed=0)[0]) + "\n")
    cfg.setdefault("data", {}).setdefault("args", {})["path"] = str(corpus)
    res = train(cfg, out / "runs" / "apple-mlm", resume="auto")
    trained = res["model_module"]
    tokenizer = TextLMDataset("train", **cfg["data"].get("args", {})).tokenizer
    n = probe.sentences
    fit_s, fit_y = apple_sentences(n, seed=1, words=slice(0, 3))
    test_s, test_y = apple_sentences(n, seed=2, words=slice(3, 6))
    torch.manual_seed(0)
    untrained = copy.deepcopy(trained)
    untrained.init_weights()  # same architecture, fresh random weights: the control

    def probe_acc(layers):  # held-out-cue accuracy per layer
        accs = []
        for feats in layers:
            clf = LogisticRegression(max_iter=2000).fit(feats[:n], fit_y)
            accs.append(float(clf.score(feats[n:], test_y)))
        return accs

    trained_layers = _apple_features(trained, tokenizer, fit_s + test_s)
    result = {"mlm_test_acc": res.get("test_accuracy"),
              "probe_acc_trained": probe_acc(trained_layers),
              "probe_acc_untrained": probe_acc(_apple_features(untrained, tokenizer,
                                                               fit_s + test_s)),
              "layers": ["input"] + [f"block {i + 1}" for i in range(len(trained_layers) - 2)]
              + ["output"]}
    senses = fit_y + test_y
    xy = PCA(2).fit_transform(trained_layers[-1])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for y, name in ((0, "apple = fruit"), (1, "apple = company")):
        for split, marker in ((slice(0, n), "o"), (slice(n, 2 * n), "x")):
            idx = [i for i in range(2 * n)[split] if senses[i] == y]
            axes[0].scatter(xy[idx, 0], xy[idx, 1], s=14, marker=marker, alpha=0.7,
                            color=f"C{y}", label=f"{name} ({'fit' if marker == 'o' else 'new'}"
                                                 " words)")
    axes[0].set_title('contextual embedding of "apple" (trained, output; PCA)')
    axes[0].legend(fontsize=8)
    x = range(len(result["layers"]))
    for key, label in (("probe_acc_trained", "trained (masked LM)"),
                       ("probe_acc_untrained", "untrained (random weights)")):
        axes[1].plot(x, [100 * a for a in result[key]], marker="o", label=label)
    axes[1].axhline(50, color="gray", ls=":", label="chance")
    axes[1].set(xticks=list(x), ylim=(0, 105), ylabel="probe accuracy on unseen words (%)",
                title="linear probe: fruit vs company, by layer")
    axes[1].set_xticklabels(result["layers"])
    axes[1].legend(fontsize=8)
    fig.savefig(out / "apple_probe.png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return result


def _plots(acc_rows, step_rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, label in enumerate(dict.fromkeys(r["model"] for r in acc_rows)):
        rows = [r for r in acc_rows if r["model"] == label]
        dists = sorted({r["distance"] for r in rows})
        axes[0].plot(dists, [statistics.mean(r["test_accuracy"] for r in rows
                                             if r["distance"] == d) for d in dists],
                     marker="o", color=f"C{i}", label=f"{label} (mean over seeds)")
        axes[0].scatter([r["distance"] for r in rows], [r["test_accuracy"] for r in rows],
                        marker="x", color=f"C{i}", alpha=0.6)
    axes[0].set(xscale="log", xlabel="distance N (tokens back)", ylabel="test accuracy",
                title="long-range recall", ylim=(0, 1.05))
    axes[0].legend()
    for label in dict.fromkeys(r["model"] for r in step_rows):
        pts = sorted((r["length"], 1000 * r["s_per_step"]) for r in step_rows
                     if r["model"] == label)
        axes[1].plot(*zip(*pts), marker="o", label=label)
    axes[1].set(xscale="log", yscale="log", xlabel="sequence length",
                ylabel="ms per training step", title="time per step vs length")
    axes[1].legend()
    for ax, key, rows in ((axes[0], "distance", acc_rows), (axes[1], "length", step_rows)):
        ticks = sorted({r[key] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    fig.savefig(out / "rnn_vs_transformer.png", dpi=130, bbox_inches="tight")
    plt.close(fig)


@register_kind("rnn_vs_transformer", RnnVsTransformerSpec)
def run_rnn_vs_transformer(spec: RnnVsTransformerSpec, out: Path) -> dict:
    seeds = list(spec.seeds)
    runs, curves = [], []  # curves: validation accuracy against sequences seen, per distance
    for d in spec.distances:
        curves.append(Panel(f"recall at distance {d}", "val/acc", what="sequences"))
        for m in spec.models:
            for seed in seeds:
                run_id = f"{m['label']}-d{d}-s{seed}"
                curves[-1].runs.append((m["label"], out / "runs" / run_id, None))
                cfg = spec.config(m, run_id, data={"name": "recall", "args": {"distance": int(d)}},
                                  task={"name": "text_classification"}, train={"seed": seed})
                runs.append(Run(f"{m['label']} distance {d} seed {seed}", run_id, cfg,
                                measure_recall, (m["label"], int(d), seed)))
    acc_rows = train_runs(spec, out, runs,
                          describe=lambda r: f"test accuracy {100 * r['test_accuracy']:.1f}%")
    if not is_main_process():
        return {"experiment": spec.name, "out_dir": str(out), "recall": acc_rows}
    t = spec.timing
    step_rows = time_per_step(spec, t.lengths, t.batch, t.repeats)
    probe = None
    if spec.probe is not None:
        probe = cache.finished(out / "runs" / "apple-probe")
        if probe is None:
            probe = cache.store(out / "runs" / "apple-probe", apple_probe(spec.probe, out))
    _plots(acc_rows, step_rows, out)

    labels = list(dict.fromkeys(m["label"] for m in spec.models))
    md = [f"## Accuracy vs distance (test split; chance = 1/8; seeds {seeds})", "",
          "| distance | " + " | ".join(f"{lb} acc (per seed) | {lb} s/epoch | {lb} ms/step"
                                        for lb in labels) + " |",
          "|---|" + "---|---|---|" * len(labels)]
    for d in spec.distances:
        cells = []
        for lb in labels:
            rs = [r for r in acc_rows if r["model"] == lb and r["distance"] == int(d)]
            accs = " / ".join(f"{100 * r['test_accuracy']:.1f}%" for r in rs)
            cells.append(f"{accs} | {statistics.median(r['s_per_epoch'] for r in rs):.2f} | "
                         f"{1000 * statistics.median(r['s_per_step'] for r in rs):.1f}")
        md.append(f"| {d} | " + " | ".join(cells) + " |")
    md += ["", "## Training time per step vs sequence length (batch "
           f"{t.batch}, median, interleaved)", "",
           "| length | " + " | ".join(f"{lb} ms" for lb in labels) + " | ratio |",
           "|---|" + "---|" * (len(labels) + 1)]
    for length in sorted({r["length"] for r in step_rows}):
        ms = [1000 * next(r["s_per_step"] for r in step_rows
                          if r["model"] == lb and r["length"] == length) for lb in labels]
        md.append(f"| {length} | " + " | ".join(f"{v:.1f}" for v in ms) +
                  f" | {ms[0] / ms[-1]:.2f} |")
    md += ["", "![accuracy and time](rnn_vs_transformer.png)", ""]
    if probe:
        n = spec.probe.sentences
        md += ['## Context-aware embeddings: "apple"', "",
               "The word has one token embedding; what the encoder makes of it depends on the "
               "words around it. Sentences share one frame (\"{who} {did} the {what} apple "
               "{prep} the {thing} .\") whose slot words tell the sense. A linear probe (fruit "
               f"vs company) is fit on the vector at \"apple\" in {n} sentences using three of "
               f"the six words of each slot, then scored on {n} sentences using only the other "
               "three. \"input\" is the token + position embedding, the same in both senses.",
               "",
               "| layer | " + " | ".join(probe["layers"]) + " |",
               "|---|" + "---|" * len(probe["layers"])]
        for key, label in (("probe_acc_untrained", "untrained encoder"),
                           ("probe_acc_trained", "trained encoder (masked LM)")):
            md.append(f"| {label} | " + " | ".join(f"{100 * a:.1f}%" for a in probe[key]) + " |")
        md += ["", f"Masked-LM accuracy of the trained encoder: {100 * probe['mlm_test_acc']:.1f}%."
               if probe.get("mlm_test_acc") is not None else "",
               "", "![apple probe](apple_probe.png)", ""]
    results = {"experiment": spec.name, "recall": acc_rows, "time_per_step": step_rows,
               "probe": probe}
    write_report(out, title=spec.name, description=spec.description, sections=md,
                 results=results, table="\n".join(md[:len(spec.distances) + 4]), curves=curves)
    return {**results, "out_dir": str(out)}
