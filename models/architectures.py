"""The torch architectures an artifact may name, and the text tokenizer that feeds `text_transformer`.

Each architecture is registered in `ARCHITECTURES` under the name that ``model.json`` records; its
keyword arguments are the artifact's ``params``. Input standardisation (fraud) lives in registered
buffers, so it travels in the state_dict with the weights rather than in a separate file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from models.errors import ModelError

FRAUD_FEATURES = 30
_TOKEN_SPLIT = re.compile(r"[\W_]+")


class UnknownArchitecture(ModelError, KeyError):
    """`build_module` was asked for a name that is not in `ARCHITECTURES`.

    Attributes:
        architecture: the name that was asked for.
        known: the registered names.
    """

    def __init__(self, architecture: str, known: list[str]) -> None:
        self.architecture = architecture
        self.known = sorted(known)
        super().__init__(f"unknown architecture {architecture!r}; expected one of {self.known}")

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return str(self.args[0])


class _Standardize(nn.Module):
    """(x - mean) / std with both in buffers; std is floored so a constant feature cannot divide by zero."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std.clamp_min(1e-6)

    def fit(self, x: torch.Tensor) -> None:
        """Set mean and std from a training matrix ``x`` of shape [N, n_features]."""
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-6))


class FraudLogistic(nn.Module):
    """Logistic regression on standardised transaction features: [B, n_features] -> [B, num_labels] logits."""

    def __init__(self, n_features: int = FRAUD_FEATURES, num_labels: int = 2) -> None:
        super().__init__()
        self.standardize = _Standardize(n_features)
        self.linear = nn.Linear(n_features, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(self.standardize(x))
        return logits


class FraudMLP(nn.Module):
    """A ReLU MLP on standardised transaction features: [B, n_features] -> [B, num_labels] logits."""

    def __init__(
        self,
        n_features: int = FRAUD_FEATURES,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.1,
        num_labels: int = 2,
    ) -> None:
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive sizes, got {list(hidden)!r}")
        self.standardize = _Standardize(n_features)
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, num_labels))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(self.standardize(x))
        return logits


class TextTransformer(nn.Module):
    """A small transformer encoder classifier over hashed token ids.

    Input is token ids [B, L] with 0 as padding (see `tokenize`); output is [B, num_labels] logits
    from a masked mean pool of the encoder's last layer.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        max_len: int = 64,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        num_labels: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.position = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True
        )
        # Nested tensors would change numerics with the batch's padding; keep batch == one-by-one.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : self.max_len]
        pad = ids == 0
        # A row with no tokens (e.g. only punctuation) would make attention all -inf and yield NaN;
        # let it attend to its first (padding) position instead.
        pad[:, 0] &= ~pad.all(dim=1)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)[None]
        x = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1)
        logits: torch.Tensor = self.head(pooled)
        return logits


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "fraud_logistic": FraudLogistic,
    "fraud_mlp": FraudMLP,
    "text_transformer": TextTransformer,
}


def build_module(architecture: str, params: dict[str, Any]) -> nn.Module:
    """Build an untrained module of a registered architecture.

    Args:
        architecture: a key of `ARCHITECTURES`, e.g. ``"fraud_mlp"``.
        params: keyword arguments for that architecture, e.g. ``{"hidden": [64, 32], "dropout": 0.1}``.

    Returns:
        The module, with freshly initialised weights (load a state_dict into it).

    Raises:
        UnknownArchitecture: ``architecture`` is not registered (a `ModelError` and a `KeyError`).
        TypeError, ValueError: ``params`` do not fit the architecture.
    """
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise UnknownArchitecture(architecture, list(ARCHITECTURES)) from None
    return factory(**params)


def _token_id(token: str, vocab_size: int) -> int:
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (vocab_size - 1)


def tokenize(texts: list[str], vocab_size: int, max_len: int) -> torch.Tensor:
    """Hash texts into token ids, the input `TextTransformer` expects.

    Lowercases, splits on runs of non-alphanumeric characters, hashes each token with blake2b into
    ``[1, vocab_size)`` (0 is padding), truncates to ``max_len`` and right-pads with 0 to the longest
    row in the batch (at least one column). Deterministic across processes, unlike ``hash()``.

    Args:
        texts: the texts to encode.
        vocab_size: number of embedding rows (ids are in ``[1, vocab_size)``); at least 2.
        max_len: the most tokens kept per text.

    Returns:
        A LongTensor of shape [len(texts), L] with ``1 <= L <= max_len``.

    Example:
        >>> tokenize(["Refund please!", ""], vocab_size=4096, max_len=8).shape
        torch.Size([2, 2])
    """
    if vocab_size < 2 or max_len < 1:
        raise ValueError(
            f"need vocab_size >= 2 and max_len >= 1, got vocab_size={vocab_size}, max_len={max_len}"
        )
    rows = [
        [_token_id(t, vocab_size) for t in _TOKEN_SPLIT.split(text.lower()) if t][:max_len] for text in texts
    ]
    width = max([1, *(len(r) for r in rows)])
    out = torch.zeros((len(texts), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
