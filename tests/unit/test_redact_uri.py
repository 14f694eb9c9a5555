"""p2p.settings.redact_uri: the one place URI credentials are hidden before printing."""

from __future__ import annotations

import pytest

from p2p.settings import redact_uri


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:PW@host:5000/x", "http://u:***@host:5000/x"),
        ("postgresql://mlflow:pg-secret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("https://t0ken@host/api", "https://***@host/api"),
        ("http://u:p@ss@h/x", "http://u:***@h/x"),  # "@" in the password
        ("http://u:pa/ss@h", "http://u:***@h"),  # "/" in the password
        (
            "API request to http://u:s3cr3t@127.0.0.1:1/api/2.0/x failed; retry http://a:b@c",
            "API request to http://u:***@127.0.0.1:1/api/2.0/x failed; retry http://a:***@c",
        ),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("http://host:5000/path", "http://host:5000/path"),
        ("http://host/a@b", "http://host/a@b"),
        ("s3://bucket/key", "s3://bucket/key"),
    ],
)
def test_redact_uri(text, shown):
    assert redact_uri(text) == shown
