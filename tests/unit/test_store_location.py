"""The store as a path or a URL: parsing, the config key that names it, and a password that never shows."""

from __future__ import annotations

import pytest

from rollout.controller import PROJECT_ROOT, resolve_store_location
from rollout.store_url import StoreLocation, parse_store_location, password_of, redact, scrub
from serving.config import IngressConfig, validate_section
from serving.errors import InvalidConfigError

SECRET = "s3cr3t-pw"
PG = f"postgresql://canary:{SECRET}@db.internal:5432/rollouts?sslmode=require"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (".canary/rollout.db", StoreLocation("sqlite", ".canary/rollout.db")),
        ("sqlite:///.canary/rollout.db", StoreLocation("sqlite", ".canary/rollout.db")),
        ("sqlite:////var/lib/canary/rollout.db", StoreLocation("sqlite", "/var/lib/canary/rollout.db")),
        (PG, StoreLocation("postgresql", PG)),
        ("postgres://db/rollouts", StoreLocation("postgresql", "postgres://db/rollouts")),
    ],
)
def test_locations_parse_to_their_backend(value, expected):
    assert parse_store_location(value) == expected


@pytest.mark.parametrize("value", ["mysql://root:s3cr3t-pw@db/x", "sqlite:///", "sqlite://relative.db", ""])
def test_other_locations_are_refused_saying_what_is_expected(value):
    with pytest.raises(ValueError, match="postgresql://") as info:
        parse_store_location(value)
    assert SECRET not in str(info.value)


def test_passwords_are_masked_in_the_user_info_and_the_query():
    assert redact(PG) == "postgresql://canary:***@db.internal:5432/rollouts?sslmode=require"
    assert redact(f"postgresql://db/x?user=u&password={SECRET}&sslmode=verify-full") == (
        "postgresql://db/x?user=u&password=***&sslmode=verify-full"
    )
    assert redact("postgresql://canary@db/x") == "postgresql://canary@db/x"
    assert redact("/var/lib/canary:weird@name.db") == "/var/lib/canary:weird@name.db"  # a path stays a path
    assert password_of(PG) == SECRET and password_of("postgresql://db/x") is None
    assert scrub(f"driver said: bad token near {SECRET}", PG) == "driver said: bad token near ***"
    encoded = "postgresql://u:p%40ss@db/x"
    assert scrub("bad password p@ss and p%40ss", encoded) == "bad password *** and ***"


def test_relative_sqlite_locations_resolve_under_the_project_root():
    assert resolve_store_location(".canary/r.db") == str(PROJECT_ROOT / ".canary" / "r.db")
    assert resolve_store_location("sqlite:///.canary/r.db") == str(PROJECT_ROOT / ".canary" / "r.db")
    assert resolve_store_location("sqlite:////tmp/r.db") == "/tmp/r.db"
    assert resolve_store_location(PG) == PG  # handed to the driver as written


def store_section(store: dict) -> IngressConfig:
    return validate_section(IngressConfig, {"rollout": {"store": store}}, source="Ingress user_config")


def test_the_url_key_is_accepted_and_is_what_the_controller_opens():
    store = store_section({"url": PG}).rollout.store
    assert store.url == PG and store.location == PG
    assert store.path == PG  # callers that read `path` open the URL too
    assert store_section({}).rollout.store.location == ".canary/rollout.db"
    assert store_section({"path": "/data/r.db"}).rollout.store.location == "/data/r.db"


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ({"url": PG, "path": "other.db"}, "not both"),
        (
            {"url": "mysql://root:s3cr3t-pw@db/x"},
            "`store.url`: unsupported store URL 'mysql://root:***@db/x'",
        ),
        ({"url": "rollout.db"}, "`store.url`: 'rollout.db' is not a URL"),
        ({"url": 5}, "`store.url` must be a string"),
        ({"path": PG}, "`store.path` is a file, got the URL 'postgresql://canary:***@"),
    ],
)
def test_a_bad_store_is_refused_at_load_time_naming_the_key_without_the_password(store, says):
    with pytest.raises(InvalidConfigError) as info:
        store_section(store)
    message = str(info.value)
    assert "`rollout.store`" in message and says in message and "postgresql://" in message
    assert SECRET not in message


def test_dumps_and_reprs_mask_the_password_and_a_dump_validates_again():
    config = store_section({"url": PG})
    dumped = config.model_dump(mode="json")
    assert SECRET not in str(dumped) and SECRET not in repr(config)
    assert dumped["rollout"]["store"]["url"] == redact(PG)
    again = IngressConfig.model_validate(dumped)  # what a restarted controller does with its stored config
    assert again.rollout.store.location == redact(PG)
