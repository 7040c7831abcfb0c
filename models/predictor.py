"""Turn parsed request inputs into predictions with a loaded model: encode, forward, decide."""

from __future__ import annotations

import random
from typing import Any

import torch

from models.architectures import tokenize
from models.artifact import ArtifactMetadata, LoadedModel
from models.data import FRAUD_FEATURE_NAMES, fraud_dataset, text_dataset
from models.errors import InvalidInputError


class Predictor:
    """Runs a `LoadedModel` on batches of parsed inputs.

    Inputs are what `models.inputs.parse_request` returns: ``{"features": [...]}`` or ``{"text": "..."}``.
    Outputs are ``{"prediction": label, "confidence": float}``, confidence the probability of the
    predicted label, in [0, 1], rounded to 6 decimals.

    Example:
        >>> from models.artifact import load_artifact
        >>> predictor = Predictor(load_artifact("models/artifacts/fraud-v1"), torch.device("cpu"))
        >>> predictor.predict_batch(predictor.example_inputs(2))[0].keys()
        dict_keys(['prediction', 'confidence'])
    """

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self._loaded = loaded
        self.device = device
        # An answer must not depend on which requests share its batch: float32 kernels pick different
        # reduction orders by batch size, which moves the 6th decimal of a confidence now and then. The
        # tabular models are tiny, so they run in float64, where that noise is far below the rounding.
        self._dtype = torch.float64 if loaded.metadata.input_schema.kind == "features" else torch.float32
        self.module = loaded.module.to(device=device, dtype=self._dtype).eval()
        meta = loaded.metadata
        self._positive = meta.labels.index(meta.positive_label) if meta.positive_label is not None else None

    @property
    def version(self) -> str:
        """The artifact's version, e.g. ``fraud-v2``."""
        return self._loaded.metadata.version

    @property
    def metadata(self) -> ArtifactMetadata:
        """The artifact's metadata."""
        return self._loaded.metadata

    def encode(self, inputs: list[dict[str, Any]]) -> torch.Tensor:
        """Encode parsed inputs as the module's input tensor, on the predictor's device.

        Features become float64 [B, length]; texts become token ids [B, max_len] (see `tokenize`), padded
        to the model's full length so that a text's answer does not depend on its batch-mates' lengths.

        Raises:
            InvalidInputError: an input lacks the field the schema needs or has the wrong length.
        """
        schema = self.metadata.input_schema
        if schema.kind == "features":
            rows = []
            for i, item in enumerate(inputs):
                row = item.get("features")
                if not isinstance(row, list | tuple) or len(row) != schema.length:
                    got = len(row) if isinstance(row, list | tuple) else type(row).__name__
                    raise InvalidInputError(
                        [
                            {
                                "field": f"{i}.features",
                                "message": f"expected exactly {schema.length} numbers, got {got}",
                            }
                        ]
                    )
                rows.append(row)
            return torch.tensor(rows, dtype=self._dtype, device=self.device).reshape(
                len(rows), schema.length or 0
            )
        texts = []
        for i, item in enumerate(inputs):
            text = item.get("text")
            if not isinstance(text, str):
                raise InvalidInputError([{"field": f"{i}.text", "message": "must be a string"}])
            texts.append(text)
        params = self.metadata.params
        max_len = int(params.get("max_len", 64))
        ids = tokenize(texts, int(params.get("vocab_size", 4096)), max_len)
        if ids.shape[1] < max_len:
            ids = torch.nn.functional.pad(ids, (0, max_len - ids.shape[1]))
        return ids.to(self.device)

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predict a batch; one ``{"prediction", "confidence"}`` dict per input, in order.

        Binary models with a ``positive_label`` predict it when its probability is at least the
        artifact's ``threshold``; other models predict the argmax.
        """
        if not inputs:
            return []
        x = self.encode(inputs)
        with torch.inference_mode():
            # in float64: float32 would turn a large logit into inf and the confidence into NaN
            probs = torch.softmax(self.module(x).double(), dim=-1).cpu()
        labels = self.metadata.labels
        if self._positive is not None:
            p_pos = probs[:, self._positive]
            positive = p_pos >= self.metadata.threshold
            index = torch.where(positive, self._positive, 1 - self._positive)
            confidence = torch.where(positive, p_pos, 1.0 - p_pos)
        else:
            confidence, index = probs.max(dim=-1)
        confidence = confidence.clamp(0.0, 1.0)
        return [
            {"prediction": labels[int(i)], "confidence": round(float(c), 6)}
            for i, c in zip(index.tolist(), confidence.tolist(), strict=True)
        ]

    def example_inputs(self, n: int) -> list[dict[str, Any]]:
        """``n`` deterministic valid inputs for warm-up (realistic ones where the schema allows)."""
        schema = self.metadata.input_schema
        if schema.kind == "features":
            length = schema.length or 0
            if length == len(FRAUD_FEATURE_NAMES):
                x, _ = fraud_dataset(n, seed=0)
                return [{"features": [float(v) for v in row]} for row in x]
            rng = random.Random(0)
            return [{"features": [rng.gauss(0.0, 1.0) for _ in range(length)]} for _ in range(n)]
        texts, _ = text_dataset(n, seed=0)
        return [{"text": t[: schema.max_chars]} for t in texts]
