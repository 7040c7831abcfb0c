"""The config loader under random edits (hypothesis): every config is either valid or refused with
`InvalidConfigError` naming a key; no other exception, no hang."""

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.configfile import check_config
from serving.errors import InvalidConfigError

ROOT = Path(__file__).resolve().parents[2]
BASES = [yaml.safe_load((ROOT / "configs" / name).read_text()) for name in ("demo.yaml", "demo-rollout.yaml")]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def key_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += key_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += key_paths(value, (*prefix, i))
    return out


PATHS = [(i, path) for i, base in enumerate(BASES) for path in key_paths(base)]


def edit(config: Any, path: tuple, how: str, value: Any) -> None:
    *parents, last = path
    node = config
    for key in parents:
        node = node[key]
    if how == "delete" and isinstance(node, dict):
        del node[last]
    elif how == "unknown key" and isinstance(node, dict):
        node[f"{last}_unknown"] = value
    else:
        node[last] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_edit_is_valid_or_refused_naming_a_key(data):
    which, _ = data.draw(st.sampled_from(PATHS))
    config = copy.deepcopy(BASES[which])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for i, p in PATHS if i == which]
        path = data.draw(st.sampled_from(paths))
        how = data.draw(st.sampled_from(["replace", "delete", "unknown key"]))
        try:
            edit(config, path, how, data.draw(values))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path's parent
    try:
        check_config(config, "fuzzed.yaml")
    except InvalidConfigError as exc:
        message = str(exc)
        assert "fuzzed.yaml" in message and exc.errors, message
        assert all(e.key and e.problem for e in exc.errors), exc.errors
        assert "Traceback" not in message
