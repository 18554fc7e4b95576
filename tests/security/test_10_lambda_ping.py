"""Finding 10 (Lambda part): the handler's ping revealed install paths to anyone who could invoke it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hsds_backends_lambda")

from hsds_backends_lambda.handler import _State, handle_event  # noqa: E402


def test_finding_10_a_ping_says_only_that_it_is_alive(tmp_path: Path) -> None:
    """Finding 10: ``{"ping": true}`` answered the module paths of the install."""
    state = _State({"ROOT_DIR": str(tmp_path), "BUCKET_NAME": "b"})
    try:
        pong = handle_event({"ping": True}, state)
    finally:
        state.close()
    assert pong == {"statusCode": 200, "body": "", "pong": True, "invocations": 1}
    assert str(Path(__file__).anchor) not in repr({k: v for k, v in pong.items() if k != "body"})


def test_diagnostics_are_opt_in(tmp_path: Path) -> None:
    state = _State({"ROOT_DIR": str(tmp_path), "BUCKET_NAME": "b", "HSDS_LAMBDA_DIAGNOSTICS": "1"})
    try:
        pong = handle_event({"ping": True}, state)
    finally:
        state.close()
    assert set(pong["modules"]) == {"hsds_backends", "numpy", "numcodecs"} and pong["modules"]["numpy"].endswith(".py")
