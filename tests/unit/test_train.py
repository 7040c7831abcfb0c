from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.artifact import load_artifact, validate_artifact
from models.train import main, roc_auc, train_all


def test_training_twice_gives_identical_artifacts(tmp_path: Path) -> None:
    first = train_all(tmp_path / "a", only="fraud", quick=True, log=False)
    second = train_all(tmp_path / "b", only="fraud", quick=True, log=False)
    assert set(first) == {"fraud-v1", "fraud-v2"}
    for version in first:
        assert first[version].sha256 == second[version].sha256
        a = load_artifact(tmp_path / "a" / version).module.state_dict()
        b = load_artifact(tmp_path / "b" / version).module.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (tmp_path / "a" / version / "model.json").read_bytes() == (
            tmp_path / "b" / version / "model.json"
        ).read_bytes()
    metrics = first["fraud-v2"].metrics
    assert {"auc", "accuracy", "agreement_with_v1"} <= set(metrics)
    assert metrics["auc"] > 0.7


def test_cli_quick_text(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert (
        main(
            [
                "--out",
                str(tmp_path),
                "--only",
                "text",
                "--quick",
                "--text-d-model",
                "16",
                "--text-heads",
                "2",
                "--text-layers",
                "1",
                "--text-vocab",
                "256",
            ]
        )
        == 0
    )
    metadata = validate_artifact(tmp_path / "text-v1")
    assert metadata.params["d_model"] == 16 and metadata.params["vocab_size"] == 256
    assert "text-v1" in capsys.readouterr().out
    assert not (tmp_path / "fraud-v1").exists()


def test_training_restores_torch_global_settings(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    train_all(tmp_path, only="text", quick=True, log=False)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_roc_auc_by_ranks() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([1.0, 1.0, 1.0]), np.array([0, 1, 0])) == 0.5
    assert roc_auc(np.array([3.0, 2.0, 1.0]), np.array([1, 0, 0])) == 1.0
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([1, 1])))
