from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.artifact import LoadedModel, load_artifact
from models.data import FRAUD_LABELS, TEXT_LABELS, fraud_dataset, text_dataset
from models.errors import InvalidInputError
from models.predictor import Predictor

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fraud_v1() -> Predictor:
    return Predictor(load_artifact("models/artifacts/fraud-v1"), CPU)


@pytest.fixture(scope="module")
def fraud_v2() -> Predictor:
    return Predictor(load_artifact("models/artifacts/fraud-v2"), CPU)


@pytest.fixture(scope="module")
def text_v1() -> Predictor:
    return Predictor(load_artifact("models/artifacts/text-v1"), CPU)


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    return fraud_dataset(5000, seed=123)


def _inputs(x: np.ndarray) -> list[dict[str, list[float]]]:
    return [{"features": [float(v) for v in row]} for row in x]


@pytest.mark.parametrize("name", ["fraud_v1", "fraud_v2", "text_v1"])
def test_output_contract(name: str, request: pytest.FixtureRequest) -> None:
    predictor: Predictor = request.getfixturevalue(name)
    outputs = predictor.predict_batch(predictor.example_inputs(64))
    assert len(outputs) == 64
    for out in outputs:
        assert set(out) == {"prediction", "confidence"}
        assert out["prediction"] in predictor.metadata.labels
        assert type(out["confidence"]) is float and 0.0 <= out["confidence"] <= 1.0
        assert round(out["confidence"], 6) == out["confidence"]
    assert predictor.version == predictor.metadata.version


def test_example_inputs_are_deterministic(fraud_v1: Predictor, text_v1: Predictor) -> None:
    assert fraud_v1.example_inputs(5) == fraud_v1.example_inputs(5)
    assert text_v1.example_inputs(5) == text_v1.example_inputs(5)


@pytest.mark.parametrize("name", ["fraud_v2", "text_v1"])
def test_batch_equals_one_by_one(name: str, request: pytest.FixtureRequest) -> None:
    predictor: Predictor = request.getfixturevalue(name)
    inputs = predictor.example_inputs(40)
    batched = predictor.predict_batch(inputs)
    single = [predictor.predict_batch([item])[0] for item in inputs]
    assert [o["prediction"] for o in batched] == [o["prediction"] for o in single]
    for b, s in zip(batched, single, strict=True):
        assert b["confidence"] == pytest.approx(s["confidence"], abs=1e-5)


def test_fraud_answers_are_identical_whatever_the_batch() -> None:
    # A shadow or a neighbour in the batch must never change a client's answer, not even in the 6th decimal.
    predictor = Predictor(load_artifact("models/artifacts/fraud-v2"), torch.device("cpu"))
    x, _ = fraud_dataset(600, seed=9)
    inputs = [{"features": [float(v) for v in row]} for row in x]
    alone = [predictor.predict_batch([item])[0] for item in inputs]
    for size in (3, 17, 64, 600):
        batched = [
            out for i in range(0, len(inputs), size) for out in predictor.predict_batch(inputs[i : i + size])
        ]
        assert batched == alone, size


def test_binary_decision_uses_threshold_and_reports_predicted_probability(
    fraud_v2: Predictor, holdout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = holdout
    outputs = fraud_v2.predict_batch(_inputs(x[:2000]))
    with torch.inference_mode():
        p_fraud = torch.softmax(fraud_v2.module(torch.from_numpy(x[:2000])), dim=-1)[:, 1].double()
    threshold = fraud_v2.metadata.threshold
    assert threshold != 0.5  # tuned on validation
    for out, p in zip(outputs, p_fraud.tolist(), strict=True):
        if out["prediction"] == "fraud":
            assert p >= threshold and out["confidence"] == pytest.approx(p, abs=1e-6)
        else:
            assert p < threshold and out["confidence"] == pytest.approx(1 - p, abs=1e-6)
    # Below a threshold < 0.5 a "legit" call can carry confidence < 0.5; it is still in [0, 1].
    assert any(o["prediction"] == "fraud" for o in outputs)


def test_dataset_positive_rate_is_about_two_percent(holdout: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = holdout
    assert x.shape == (5000, 30) and x.dtype == np.float32
    assert 0.01 <= y.mean() <= 0.03
    x2, y2 = fraud_dataset(5000, seed=123)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_v1_and_v2_agree_on_most_but_not_all(
    fraud_v1: Predictor, fraud_v2: Predictor, holdout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = holdout
    inputs = _inputs(x)
    p1 = [o["prediction"] for o in fraud_v1.predict_batch(inputs)]
    p2 = [o["prediction"] for o in fraud_v2.predict_batch(inputs)]
    agreement = sum(a == b for a, b in zip(p1, p2, strict=True)) / len(x)
    assert 0.90 <= agreement <= 0.999
    # Both actually flag frauds, and v2 is the better model.
    truth = [FRAUD_LABELS[i] for i in y]
    acc1 = sum(a == t for a, t in zip(p1, truth, strict=True)) / len(x)
    acc2 = sum(a == t for a, t in zip(p2, truth, strict=True)) / len(x)
    assert "fraud" in p1 and "fraud" in p2
    assert acc2 > acc1


def test_text_model_predicts_intents(text_v1: Predictor) -> None:
    texts, y = text_dataset(300, seed=999)
    outputs = text_v1.predict_batch([{"text": t} for t in texts])
    accuracy = sum(o["prediction"] == TEXT_LABELS[i] for o, i in zip(outputs, y, strict=True)) / len(texts)
    assert accuracy > 0.8
    assert (
        text_v1.predict_batch([{"text": "I was charged twice, please refund me"}])[0]["prediction"]
        == "billing"
    )
    assert text_v1.predict_batch([{"text": "?!"}])[0]["prediction"] in TEXT_LABELS


def test_text_longer_than_max_len_is_truncated(text_v1: Predictor) -> None:
    out = text_v1.predict_batch([{"text": "where is my package " * 100}])[0]
    assert out["prediction"] in TEXT_LABELS and math.isfinite(out["confidence"])


def test_encode_rejects_wrong_shapes(fraud_v1: Predictor) -> None:
    assert fraud_v1.encode([{"features": [0.0] * 30}] * 3).shape == (3, 30)
    with pytest.raises(InvalidInputError) as info:
        fraud_v1.encode([{"features": [0.0] * 30}, {"features": [1.0]}])
    assert info.value.errors[0]["field"] == "1.features"


def test_empty_batch(fraud_v1: Predictor) -> None:
    assert fraud_v1.predict_batch([]) == []


def test_multiclass_confidence_is_the_argmax_probability(text_v1: Predictor) -> None:
    inputs = text_v1.example_inputs(8)
    with torch.inference_mode():
        probs = torch.softmax(text_v1.module(text_v1.encode(inputs)), dim=-1)
    outputs = text_v1.predict_batch(inputs)
    for out, row in zip(outputs, probs, strict=True):
        assert out["prediction"] == TEXT_LABELS[int(row.argmax())]
        assert out["confidence"] == pytest.approx(float(row.max()), abs=1e-6)


def test_predictor_accepts_a_loaded_model(fraud_v1: Predictor) -> None:
    loaded = load_artifact("models/artifacts/fraud-v1")
    assert isinstance(loaded, LoadedModel)
    assert Predictor(loaded, CPU).predict_batch(fraud_v1.example_inputs(3)) == fraud_v1.predict_batch(
        fraud_v1.example_inputs(3)
    )
