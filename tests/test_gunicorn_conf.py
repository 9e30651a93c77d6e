"""gunicorn.conf.py: its settings as gunicorn reads them, from the environment."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

CONF = str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py")


@pytest.fixture
def settings(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("GUNICORN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # not a folder of its own

    def load(**env) -> dict:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(CONF)

    return load


def test_the_access_log_goes_to_stdout_unless_told_otherwise(settings):
    assert settings()["accesslog"] == "-"
    assert settings(GUNICORN_ACCESSLOG="/var/log/portal/access.log")["accesslog"] == (
        "/var/log/portal/access.log"
    )


def test_an_empty_access_log_setting_turns_it_off(settings):
    assert settings(GUNICORN_ACCESSLOG="")["accesslog"] is None  # gunicorn: None = no access log


def test_the_workers_heartbeat_file_is_in_memory_where_it_can_be(settings, tmp_path):
    expected = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - what it checks
    assert settings()["worker_tmp_dir"] == expected
    assert settings(GUNICORN_WORKER_TMP_DIR=str(tmp_path))["worker_tmp_dir"] == str(tmp_path)
