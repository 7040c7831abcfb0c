"""Train the demo models and write them as artifacts.

Usage::

    python -m models.train [--out models/artifacts] [--only fraud|text] [--quick]
        [--text-d-model 64 --text-layers 2 --text-heads 4 --text-vocab 4096 --text-max-len 64]

Writes ``fraud-v1`` (logistic regression), ``fraud-v2`` (an MLP that beats it, agreeing on most but not
all predictions) and ``text-v1`` (a small transformer over support tickets). Training is deterministic:
fixed seeds, ``torch.use_deterministic_algorithms(True)`` and one thread, so the weights (and their
sha256) are the same on every run on the same torch build.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.architectures import FRAUD_FEATURES, FraudLogistic, FraudMLP, TextTransformer, tokenize
from models.artifact import ArtifactMetadata, InputSchema, save_artifact
from models.data import FRAUD_LABELS, TEXT_LABELS, fraud_dataset, text_dataset

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"
CREATED_BY = f"models.train (torch {torch.__version__})"


@dataclass(frozen=True)
class TextConfig:
    """Size of the text transformer."""

    d_model: int = 64
    layers: int = 2
    heads: int = 4
    vocab: int = 4096
    max_len: int = 64


@dataclass(frozen=True)
class _Sizes:
    fraud_train: int
    fraud_val: int
    fraud_test: int
    v1_steps: int
    v2_epochs: int
    text_train: int
    text_test: int
    text_epochs: int


_FULL = _Sizes(40_000, 10_000, 20_000, 300, 20, 4_000, 1_000, 6)
_QUICK = _Sizes(8_000, 4_000, 4_000, 150, 4, 600, 200, 1)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U), ties given their average rank.

    Returns NaN when ``labels`` hold only one class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _fraud_probability(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    module.eval()
    with torch.inference_mode():
        return torch.softmax(module(x), dim=-1)[:, 1].double().numpy()


def _best_threshold(p_val: np.ndarray, y_val: np.ndarray) -> float:
    """The threshold that maximises F1 on validation, among those flagging 0.5%-5% of rows."""
    best_f1, best_t = -1.0, 0.5
    for q in np.linspace(0.95, 0.995, 46):
        t = float(np.quantile(p_val, q))
        flagged = p_val >= t
        tp = float((flagged & (y_val == 1)).sum())
        f1 = 2 * tp / (flagged.sum() + (y_val == 1).sum())
        if f1 > best_f1:
            best_f1, best_t = f1, t
    return round(best_t, 6)


def _fraud_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = p >= threshold
    tp = float((flagged & (y == 1)).sum())
    return {
        "auc": round(roc_auc(p, y), 6),
        "accuracy": round(float((flagged == (y == 1)).mean()), 6),
        "precision": round(tp / max(float(flagged.sum()), 1.0), 6),
        "recall": round(tp / max(float((y == 1).sum()), 1.0), 6),
        "flagged_rate": round(float(flagged.mean()), 6),
    }


def _weighted_loss(y: torch.Tensor) -> nn.CrossEntropyLoss:
    # Up-weight fraud part of the way to balance: enough that the models rank frauds well at a
    # threshold below 0.5, not so much that probabilities become meaningless.
    pos_rate = float(y.float().mean())
    weight = min(10.0, max(1.0, (1.0 - pos_rate) / max(pos_rate, 1e-6)) ** 0.5)
    return nn.CrossEntropyLoss(weight=torch.tensor([1.0, weight]))


def train_fraud(out_dir: Path, *, quick: bool = False, log: bool = True) -> dict[str, ArtifactMetadata]:
    """Train and write ``fraud-v1`` (fraud_logistic) and ``fraud-v2`` (fraud_mlp) under ``out_dir``."""
    sizes = _QUICK if quick else _FULL
    x_np, y_np = fraud_dataset(sizes.fraud_train, seed=1)
    xv_np, yv_np = fraud_dataset(sizes.fraud_val, seed=2)
    xt_np, yt_np = fraud_dataset(sizes.fraud_test, seed=3)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    xv, xt = torch.from_numpy(xv_np), torch.from_numpy(xt_np)
    loss_fn = _weighted_loss(y)
    schema = InputSchema(kind="features", length=FRAUD_FEATURES)
    results: dict[str, ArtifactMetadata] = {}

    # v1: logistic regression, full batch.
    torch.manual_seed(11)
    v1_params = {"n_features": FRAUD_FEATURES, "num_labels": 2}
    v1 = FraudLogistic(**v1_params)
    v1.standardize.fit(x)
    opt = torch.optim.Adam(v1.parameters(), lr=0.05)
    v1.train()
    for _ in range(sizes.v1_steps):
        opt.zero_grad()
        loss_fn(v1(x), y).backward()
        opt.step()
    p1_val, p1_test = _fraud_probability(v1, xv), _fraud_probability(v1, xt)
    t1 = _best_threshold(p1_val, yv_np)
    m1 = _fraud_metrics(p1_test, yt_np, t1)

    # v2: MLP with interactions, minibatches.
    torch.manual_seed(22)
    v2_params: dict[str, Any] = {
        "n_features": FRAUD_FEATURES,
        "hidden": [64, 32],
        "dropout": 0.1,
        "num_labels": 2,
    }
    v2 = FraudMLP(**v2_params)
    v2.standardize.fit(x)
    opt = torch.optim.Adam(v2.parameters(), lr=3e-3, weight_decay=1e-5)
    shuffle = torch.Generator().manual_seed(33)
    for _ in range(sizes.v2_epochs):
        v2.train()
        for batch in torch.randperm(len(x), generator=shuffle).split(256):
            opt.zero_grad()
            loss_fn(v2(x[batch]), y[batch]).backward()
            opt.step()
    p2_val, p2_test = _fraud_probability(v2, xv), _fraud_probability(v2, xt)
    t2 = _best_threshold(p2_val, yv_np)
    m2 = _fraud_metrics(p2_test, yt_np, t2)
    m2["agreement_with_v1"] = round(float(((p1_test >= t1) == (p2_test >= t2)).mean()), 6)

    common = {
        "name": "fraud",
        "input_schema": schema,
        "labels": FRAUD_LABELS,
        "positive_label": "fraud",
        "created_by": CREATED_BY,
    }
    results["fraud-v1"] = save_artifact(
        out_dir / "fraud-v1",
        v1,
        version="fraud-v1",
        architecture="fraud_logistic",
        params=v1_params,
        threshold=t1,
        metrics=m1,
        **common,  # type: ignore[arg-type]
    )
    results["fraud-v2"] = save_artifact(
        out_dir / "fraud-v2",
        v2,
        version="fraud-v2",
        architecture="fraud_mlp",
        params=v2_params,
        threshold=t2,
        metrics=m2,
        **common,  # type: ignore[arg-type]
    )
    if log:
        print(
            f"fraud data: positive rate train {y_np.mean():.4f}, test {yt_np.mean():.4f} "
            f"({sizes.fraud_train} train / {sizes.fraud_test} test rows)"
        )
        for version, m, t in (("fraud-v1", m1, t1), ("fraud-v2", m2, t2)):
            print(
                f"{version}: auc {m['auc']:.4f}  accuracy {m['accuracy']:.4f}  "
                f"precision {m['precision']:.3f}  "
                f"recall {m['recall']:.3f}  flagged {m['flagged_rate']:.4f}  threshold {t:.4f}"
            )
        print(f"fraud-v2 vs fraud-v1 agreement on test: {m2['agreement_with_v1']:.4f}")
    return results


def train_text(
    out_dir: Path, config: TextConfig = TextConfig(), *, quick: bool = False, log: bool = True
) -> ArtifactMetadata:
    """Train and write ``text-v1`` (text_transformer over support-ticket intents) under ``out_dir``."""
    sizes = _QUICK if quick else _FULL
    texts, y_np = text_dataset(sizes.text_train, seed=4)
    test_texts, yt_np = text_dataset(sizes.text_test, seed=5)
    params: dict[str, Any] = {
        "vocab_size": config.vocab,
        "max_len": config.max_len,
        "d_model": config.d_model,
        "nhead": config.heads,
        "num_layers": config.layers,
        "dim_feedforward": 2 * config.d_model,
        "num_labels": len(TEXT_LABELS),
        "dropout": 0.1,
    }
    torch.manual_seed(44)
    module = TextTransformer(**params)
    ids = tokenize(texts, config.vocab, config.max_len)
    y = torch.from_numpy(y_np)
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(55)
    for _ in range(sizes.text_epochs):
        module.train()
        for batch in torch.randperm(len(ids), generator=shuffle).split(64):
            batch_ids = ids[batch]
            batch_ids = batch_ids[:, : max(1, int((batch_ids != 0).sum(dim=1).max()))]
            opt.zero_grad()
            loss_fn(module(batch_ids), y[batch]).backward()
            opt.step()
    module.eval()
    with torch.inference_mode():
        predicted = module(tokenize(test_texts, config.vocab, config.max_len)).argmax(dim=-1).numpy()
    metrics = {"accuracy": round(float((predicted == yt_np).mean()), 6)}
    metadata = save_artifact(
        out_dir / "text-v1",
        module,
        name="text-intent",
        version="text-v1",
        architecture="text_transformer",
        params=params,
        input_schema=InputSchema(kind="text", max_chars=2000),
        labels=TEXT_LABELS,
        positive_label=None,
        threshold=0.5,
        metrics=metrics,
        created_by=CREATED_BY,
    )
    if log:
        print(
            f"text-v1: accuracy {metrics['accuracy']:.4f} on {sizes.text_test} tickets "
            f"({sum(p.numel() for p in module.parameters())} parameters)"
        )
    return metadata


def train_all(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    only: str | None = None,
    quick: bool = False,
    text: TextConfig = TextConfig(),
    log: bool = True,
) -> dict[str, ArtifactMetadata]:
    """Train the demo models deterministically and write their artifacts under ``out_dir``.

    Args:
        out_dir: the artifacts directory; each model goes into ``<out_dir>/<version>/``.
        only: ``"fraud"`` or ``"text"`` to train one family; None trains both.
        quick: train on less data for fewer steps (for tests); the models are worse but valid.
        text: the text transformer's size.
        log: print a summary.

    Returns:
        The metadata written, by version.
    """
    if only not in (None, "fraud", "text"):
        raise ValueError(f"only must be 'fraud' or 'text', got {only!r}")
    out = Path(out_dir)
    results: dict[str, ArtifactMetadata] = {}
    with _deterministic():
        if only in (None, "fraud"):
            results.update(train_fraud(out, quick=quick, log=log))
        if only in (None, "text"):
            results["text-v1"] = train_text(out, text, quick=quick, log=log)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="artifacts directory (default: %(default)s)"
    )
    parser.add_argument("--only", choices=["fraud", "text"], help="train one model family only")
    parser.add_argument("--quick", action="store_true", help="small data, few steps (for tests)")
    parser.add_argument("--text-d-model", type=int, default=TextConfig.d_model)
    parser.add_argument("--text-layers", type=int, default=TextConfig.layers)
    parser.add_argument("--text-heads", type=int, default=TextConfig.heads)
    parser.add_argument("--text-vocab", type=int, default=TextConfig.vocab)
    parser.add_argument("--text-max-len", type=int, default=TextConfig.max_len)
    args = parser.parse_args(argv)
    text = TextConfig(
        args.text_d_model, args.text_layers, args.text_heads, args.text_vocab, args.text_max_len
    )
    if text.d_model % text.heads:
        parser.error(f"--text-d-model ({text.d_model}) must be divisible by --text-heads ({text.heads})")
    started = time.perf_counter()
    results = train_all(args.out, only=args.only, quick=args.quick, text=text)
    for version, metadata in results.items():
        weights = Path(args.out) / version / metadata.weights_file
        print(
            f"wrote {weights.parent}  ({weights.stat().st_size / 1024:.0f} KiB, "
            f"sha256 {metadata.sha256[:12]})"
        )
    print(f"trained {len(results)} models in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
