"""Who may change a rollout: bearer tokens compared in constant time, a token file named in config that
disables admin actions when missing, and client request ids accepted only in a safe format."""

import pytest

from serving.http import HTTPProblem
from serving.operators import check_bearer, check_request_id, token_from_file


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("", 401), ("Basic abc", 401), ("Bearer wrong", 403), ("Bearer s3cret-token ", None)],
)
def test_bearer(header, status):
    if status is None:
        check_bearer(header, "s3cret-token")
        return
    with pytest.raises(HTTPProblem) as refused:
        check_bearer(header, "s3cret-token")
    assert refused.value.status == status


def test_a_token_file_that_is_missing_or_empty_gives_no_token(tmp_path):
    assert token_from_file(str(tmp_path / "absent")) is None
    (tmp_path / "empty").write_text("\n")
    assert token_from_file(str(tmp_path / "empty")) is None
    (tmp_path / "token").write_text("abc123\n")
    assert token_from_file(str(tmp_path / "token")) == "abc123"


@pytest.mark.parametrize("request_id", [None, "", "3f1c2b7e-9a0d-4a51-bb1e-0c6f2a9d1e42", "job-42.retry:1"])
def test_safe_request_ids_are_kept(request_id):
    check_request_id(request_id)


@pytest.mark.parametrize("request_id", ["has space inside", "x" * 129, "<script>alert(1)</script>", "-lead"])
def test_other_request_ids_are_refused_naming_the_header(request_id):
    with pytest.raises(HTTPProblem) as refused:
        check_request_id(request_id)
    assert refused.value.status == 400 and refused.value.detail[0]["field"] == "X-Request-Id"
