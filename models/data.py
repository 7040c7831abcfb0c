"""Deterministic synthetic data with real structure, for training the demo models and driving traffic.

`fraud_dataset` mimics card transactions: a log-amount, cyclic hour-of-day, merchant risk, velocity
counts, distance from home, a foreign flag, card age and 21 correlated latent components (the shape of
the PCA features in public card-fraud data). The fraud label comes from a nonlinear function with
interactions (night x risky merchant, bursts of large payments, foreign x far away, a product of two
latents), so an MLP can beat a linear model. About 2% of rows are fraud.

`text_dataset` renders support tickets from templates, with negation ("not about shipping") and filler,
for four intents.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

FRAUD_FEATURE_NAMES: list[str] = [
    "log_amount",
    "hour_sin",
    "hour_cos",
    "merchant_risk",
    "txn_count_1h",
    "txn_count_24h",
    "log_distance_km",
    "is_foreign",
    "log_card_age_days",
    *(f"v{i}" for i in range(1, 22)),
]
FRAUD_LABELS: list[str] = ["legit", "fraud"]
TEXT_LABELS: list[str] = ["billing", "login", "shipping", "cancel"]

_N_LATENT = 21
# Intercept of the fraud logit, chosen so that about 2% of rows are fraud.
_FRAUD_INTERCEPT = -15.0


def _latent_mixing(rng: np.random.Generator) -> np.ndarray:
    # A fixed random correlation structure (same for every seed) so that train and test agree.
    a = rng.normal(size=(_N_LATENT, _N_LATENT)) / math.sqrt(_N_LATENT)
    return np.eye(_N_LATENT) * 0.8 + a * 0.6


_MIXING = _latent_mixing(np.random.default_rng(20240601))


def fraud_logit(x: np.ndarray) -> np.ndarray:
    """The ground-truth fraud log-odds of feature rows ``x`` [n, 30] (before label noise)."""
    log_amount, hour_cos, risk = x[:, 0], x[:, 2], x[:, 3]
    v1h, log_dist, foreign, log_age = x[:, 4], x[:, 6], x[:, 7], x[:, 8]
    v = x[:, 9:]
    night = 1.0 / (1.0 + np.exp(-4.0 * (hour_cos - 0.5)))  # hours around 0:00 have cos ~ 1
    big = np.maximum(log_amount - 4.5, 0.0)
    burst = np.maximum(v1h - 2.0, 0.0)
    interactions = (
        8.0 * risk * night  # risky merchants at night
        + 2.5 * big * burst  # many large payments in one hour
        + 3.0 * foreign * np.maximum(log_dist - 5.0, 0.0)  # abroad and far from home
        + 2.0 * v[:, 0] * v[:, 1]  # a product no linear model sees
        + 1.0 * np.abs(v[:, 2])
    )
    main_effects = (
        6.0 * risk
        + 0.9 * log_amount
        + 0.5 * v1h
        + 0.6 * v[:, 3]
        - 0.8 * np.minimum(log_age - 4.0, 2.0)  # new cards are riskier
        + 1.0 * night
        + 0.4 * log_dist
    )
    return np.asarray(_FRAUD_INTERCEPT + interactions + 1.3 * main_effects)


def fraud_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` card transactions and their fraud labels.

    Args:
        n: number of rows.
        seed: the RNG seed; the same ``(n, seed)`` always gives the same arrays.

    Returns:
        ``(x, y)``: float32 features [n, 30] in the order of `FRAUD_FEATURE_NAMES`, and int64 labels [n]
        (1 = fraud, the index of "fraud" in `FRAUD_LABELS`).

    Example:
        >>> x, y = fraud_dataset(1000, seed=0)
        >>> x.shape, y.dtype
        ((1000, 30), dtype('int64'))
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(mean=3.6, sigma=1.1, size=n)
    # Hours: a daytime peak plus a small nocturnal population.
    hour = np.where(rng.random(n) < 0.85, rng.normal(14.0, 4.0, n), rng.normal(1.5, 2.0, n)) % 24.0
    angle = 2.0 * np.pi * hour / 24.0
    risk = rng.beta(1.5, 6.0, size=n)
    txn_1h = rng.poisson(0.6 + 2.0 * (rng.random(n) < 0.08), size=n).astype(np.float64)
    txn_24h = txn_1h + rng.poisson(5.0, size=n)
    log_dist = np.log1p(rng.lognormal(mean=2.0, sigma=1.6, size=n))
    foreign = (rng.random(n) < 0.06 + 0.10 * (log_dist > 5.0)).astype(np.float64)
    log_age = np.log1p(rng.gamma(shape=2.0, scale=300.0, size=n))
    latent = rng.normal(size=(n, _N_LATENT)) @ _MIXING
    x = np.column_stack(
        [
            np.log1p(amount),
            np.sin(angle),
            np.cos(angle),
            risk,
            txn_1h,
            txn_24h,
            log_dist,
            foreign,
            log_age,
            latent,
        ]
    )
    p = 1.0 / (1.0 + np.exp(-fraud_logit(x)))
    y = (rng.random(n) < p).astype(np.int64)
    return x.astype(np.float32), y


_TEXT_PHRASES: dict[str, list[str]] = {
    "billing": [
        "i was charged twice for my order",
        "my invoice shows the wrong amount",
        "please refund the extra charge",
        "why did my card get billed again",
        "the payment went through but the price is wrong",
        "i need a copy of my receipt",
        "there is an unknown fee on my statement",
    ],
    "login": [
        "i cannot log in to my account",
        "the password reset email never arrives",
        "my account is locked",
        "two factor code is not accepted",
        "it says my password is incorrect",
        "i forgot my username",
        "the sign in page keeps loading",
    ],
    "shipping": [
        "where is my package",
        "the parcel has not arrived yet",
        "tracking has not updated in a week",
        "the delivery went to the wrong address",
        "my order arrived damaged",
        "when will my order ship",
        "the courier lost my box",
    ],
    "cancel": [
        "please cancel my subscription",
        "i want to close my account",
        "stop my membership renewal",
        "how do i end my plan",
        "cancel the order i placed today",
        "i no longer want this service",
        "unsubscribe me from the monthly plan",
    ],
}
_OPENERS = ["", "hi", "hello team", "urgent", "hey there", "good morning", "sorry to bother you"]
_CLOSERS = ["", "thanks", "thank you", "please help", "asap", "cheers", "this is frustrating"]
_NOT_ABOUT = "this is not about {other}"
_TOPIC_WORDS = {"billing": "billing", "login": "logging in", "shipping": "shipping", "cancel": "cancelling"}


def text_dataset(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Generate ``n`` support tickets and their intents.

    A ticket is an opener, a phrase of its intent, sometimes a negated mention of another intent
    ("this is not about billing", so bag-of-keywords is misleading), and a closer. 3% of labels are
    flipped to another intent, so no model is perfect.

    Returns:
        ``(texts, y)``: the texts and int64 labels indexing `TEXT_LABELS`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels = rng.integers(0, len(TEXT_LABELS), size=n)
    for i in range(n):
        intent = TEXT_LABELS[labels[i]]
        parts = [
            _OPENERS[rng.integers(len(_OPENERS))],
            _TEXT_PHRASES[intent][rng.integers(len(_TEXT_PHRASES[intent]))],
        ]
        if rng.random() < 0.3:
            other = TEXT_LABELS[(labels[i] + 1 + rng.integers(len(TEXT_LABELS) - 1)) % len(TEXT_LABELS)]
            parts.append(_NOT_ABOUT.format(other=_TOPIC_WORDS[other]))
        parts.append(_CLOSERS[rng.integers(len(_CLOSERS))])
        text = ", ".join(p for p in parts if p)
        texts.append(text[0].upper() + text[1:] + ("." if rng.random() < 0.5 else "!"))
    flip = rng.random(n) < 0.03
    labels = np.where(
        flip, (labels + 1 + rng.integers(0, len(TEXT_LABELS) - 1, size=n)) % len(TEXT_LABELS), labels
    )
    return texts, labels.astype(np.int64)


def demo_requests(n: int, seed: int, kind: Literal["features", "text"]) -> list[dict[str, Any]]:
    """Request bodies for driving traffic: ``{"features": [...]}`` or ``{"text": "..."}``.

    Example:
        >>> demo_requests(2, seed=0, kind="text")[0].keys()
        dict_keys(['text'])
    """
    if kind == "features":
        x, _ = fraud_dataset(n, seed)
        return [{"features": [round(float(v), 6) for v in row]} for row in x]
    if kind == "text":
        texts, _ = text_dataset(n, seed)
        return [{"text": t} for t in texts]
    raise ValueError(f"kind must be 'features' or 'text', got {kind!r}")
