from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.architectures import FraudLogistic, TextTransformer, build_module, tokenize
from models.artifact import (
    METADATA_FILE,
    InputSchema,
    load_artifact,
    load_metadata,
    resolve_artifact_path,
    save_artifact,
    sha256_file,
    validate_artifact,
)
from models.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    ChecksumMismatchError,
    ModelError,
    UnknownArchitectureError,
)


def _save_fraud(directory: Path, **overrides: object) -> FraudLogistic:
    torch.manual_seed(0)
    module = FraudLogistic()
    module.standardize.mean.fill_(1.5)
    kwargs: dict[str, object] = dict(
        name="fraud",
        version="fraud-test",
        architecture="fraud_logistic",
        params={"n_features": 30, "num_labels": 2},
        input_schema=InputSchema(kind="features", length=30),
        labels=["legit", "fraud"],
        positive_label="fraud",
        threshold=0.3,
        metrics={"auc": 0.9},
        created_by="tests",
    )
    kwargs.update(overrides)
    save_artifact(directory, module, **kwargs)  # type: ignore[arg-type]
    return module


def test_round_trip_restores_weights_buffers_and_metadata(tmp_path: Path) -> None:
    original = _save_fraud(tmp_path / "a")
    loaded = load_artifact(tmp_path / "a")
    assert loaded.metadata.version == "fraud-test"
    assert loaded.metadata.threshold == 0.3
    assert loaded.metadata.sha256 == sha256_file(tmp_path / "a" / "weights.pt")
    assert not loaded.module.training
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    assert torch.equal(loaded.module.state_dict()["standardize.mean"], torch.full((30,), 1.5))
    x = torch.randn(4, 30)
    assert torch.equal(loaded.module(x), original.eval()(x))
    assert validate_artifact(tmp_path / "a") == loaded.metadata


def test_sidecar_is_sorted_indented_json(tmp_path: Path) -> None:
    _save_fraud(tmp_path / "a")
    text = (tmp_path / "a" / METADATA_FILE).read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert text.startswith("{\n  ")


def test_checksum_mismatch_is_refused_naming_sha256(tmp_path: Path) -> None:
    _save_fraud(tmp_path / "a")
    weights = tmp_path / "a" / "weights.pt"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    for check in (validate_artifact, load_artifact):
        with pytest.raises(ChecksumMismatchError) as info:
            check(tmp_path / "a")
        err = info.value
        assert err.key == "sha256"
        assert err.actual_sha256 == sha256_file(weights) != err.expected_sha256
        assert "sha256" in str(err) and str(tmp_path / "a") in str(err)
        assert "models.train" in str(err)


def test_unknown_architecture_lists_known_ones(tmp_path: Path) -> None:
    _save_fraud(tmp_path / "a")
    sidecar = tmp_path / "a" / METADATA_FILE
    data = json.loads(sidecar.read_text())
    data["architecture"] = "resnet9000"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(UnknownArchitectureError) as info:
        validate_artifact(tmp_path / "a")
    assert info.value.architecture == "resnet9000"
    assert "fraud_mlp" in info.value.known
    assert "resnet9000" in str(info.value) and "architecture" in str(info.value)
    with pytest.raises(UnknownArchitectureError):
        load_artifact(tmp_path / "a")


def test_build_module_unknown_name_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"'nope'.*fraud_logistic"):
        build_module("nope", {})
    with pytest.raises(KeyError):
        build_module("nope", {})


def test_missing_artifact_names_both_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactNotFoundError) as info:
        load_artifact("models/artifacts/does-not-exist")
    err = info.value
    assert err.key == "artifact"
    assert len(err.tried) == 2
    assert str(tmp_path / "models/artifacts/does-not-exist" / METADATA_FILE) in str(err)
    project_root = Path(__file__).resolve().parents[2]
    assert str(project_root / "models/artifacts/does-not-exist" / METADATA_FILE) in str(err)


def test_absolute_missing_path_tries_only_itself(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError) as info:
        resolve_artifact_path(tmp_path / "nothing")
    assert info.value.tried == [str(tmp_path / "nothing" / METADATA_FILE)]


def test_relative_path_resolves_against_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = resolve_artifact_path("models/artifacts/fraud-v1")
    assert resolved == Path(__file__).resolve().parents[2] / "models/artifacts/fraud-v1"


def test_relative_path_prefers_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_fraud(tmp_path / "models/artifacts/fraud-v1")
    monkeypatch.chdir(tmp_path)
    assert resolve_artifact_path("models/artifacts/fraud-v1") == tmp_path / "models/artifacts/fraud-v1"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.pop("sha256"), "sha256"),
        (lambda d: d.update(sha256="abc"), "sha256"),
        (lambda d: d.update(threshold=1.5), "threshold"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["input_schema"].pop("length"), "input_schema"),
        (lambda d: d.update(labels=["only"]), "labels"),
    ],
)
def test_invalid_sidecar_names_the_field(tmp_path: Path, edit, key: str) -> None:  # type: ignore[no-untyped-def]
    _save_fraud(tmp_path / "a")
    sidecar = tmp_path / "a" / METADATA_FILE
    data = json.loads(sidecar.read_text())
    edit(data)
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as info:
        load_metadata(tmp_path / "a")
    assert info.value.key == key
    assert str(sidecar) in str(info.value) and f"`{key}`" in str(info.value)


def test_sidecar_that_is_not_json(tmp_path: Path) -> None:
    _save_fraud(tmp_path / "a")
    (tmp_path / "a" / METADATA_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"model\.json"):
        validate_artifact(tmp_path / "a")


def test_positive_label_must_be_a_label(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="positive_label"):
        _save_fraud(tmp_path / "a", positive_label="scam")
    assert not (tmp_path / "a").exists()


def test_params_that_do_not_match_the_weights(tmp_path: Path) -> None:
    _save_fraud(tmp_path / "a")
    sidecar = tmp_path / "a" / METADATA_FILE
    data = json.loads(sidecar.read_text())
    data["params"] = {"n_features": 12, "num_labels": 2}
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as info:
        load_artifact(tmp_path / "a")
    assert info.value.key == "weights_file"
    data["params"] = {"bogus": 1}
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ArtifactError) as info:
        load_artifact(tmp_path / "a")
    assert info.value.key == "params"


def test_input_schema_requires_the_field_of_its_kind() -> None:
    with pytest.raises(ValueError, match="length is required"):
        InputSchema(kind="features")
    with pytest.raises(ValueError, match="max_chars is required"):
        InputSchema(kind="text")
    with pytest.raises(ValueError, match="applies to kind='features' only"):
        InputSchema(kind="text", max_chars=10, length=3)


def test_tokenize_is_stable_and_pads() -> None:
    ids = tokenize(["Refund, please!", "REFUND please", "", "a b c d e"], vocab_size=100, max_len=3)
    assert ids.dtype == torch.long and ids.shape == (4, 3)
    assert torch.equal(ids[0], ids[1])
    assert ids[0, 2] == 0 and (ids[2] == 0).all()
    assert ((ids[3] >= 1) & (ids[3] < 100)).all()
    # blake2b, not hash(): the same on every process and Python version.
    assert tokenize(["refund"], vocab_size=4096, max_len=4).tolist() == [[_expected_refund_id()]]


def _expected_refund_id() -> int:
    import hashlib

    return 1 + int.from_bytes(hashlib.blake2b(b"refund", digest_size=8).digest(), "little") % 4095


def test_text_transformer_handles_rows_without_tokens() -> None:
    torch.manual_seed(0)
    module = TextTransformer(vocab_size=50, max_len=8, d_model=16, nhead=2, num_layers=1, num_labels=3).eval()
    logits = module(tokenize(["!!!", "hello world"], vocab_size=50, max_len=8))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
