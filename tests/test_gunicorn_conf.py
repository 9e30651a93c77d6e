"""gunicorn.conf.py: its settings as gunicorn reads them, from the environment."""

from __future__ import annotations

import json
import logging
import os
import runpy
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

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


def access_logger(settings, **env):
    """gunicorn.conf.py's logger as gunicorn builds it from the file's settings."""
    conf = settings(**env)
    config = Config()
    config.set("accesslog", conf["accesslog"])
    config.set("logger_class", conf["logger_class"])
    return config.logger_class(config)


def access_lines(settings, tmp_path, requests: list[tuple[dict, list, str, int]]) -> list[str]:
    """The access lines gunicorn.conf.py's logger writes for (environ, response headers, status,
    bytes sent) each, through gunicorn's own handlers."""
    logger = access_logger(settings, GUNICORN_ACCESSLOG=str(tmp_path / "access.log"))
    try:
        for environ, headers, status, sent in requests:
            response = SimpleNamespace(status=status, headers=headers, sent=sent)
            logger.access(response, None, environ, timedelta(seconds=1, microseconds=2345))
    finally:
        for handler in list(logger.access_log.handlers):  # gunicorn's loggers are global
            handler.close()
            logger.access_log.removeHandler(handler)
    return (tmp_path / "access.log").read_text().splitlines()


def test_each_access_line_is_one_json_object_whatever_the_path_and_agent(settings, tmp_path):
    """A quote, a backslash or an encoded newline in the path or the User-Agent stays inside its
    value: one request, one line, valid JSON (a JSON-shaped access_log_format broke on all
    three)."""
    forged = '\\\n{"status": 200, "path": "/admin"}'
    lines = access_lines(
        settings,
        tmp_path,
        [
            (
                {
                    "REMOTE_ADDR": "203.0.113.9",
                    "REQUEST_METHOD": "GET",
                    # WSGI gives the path as Latin-1: "/x<forged>/é" as the URL's UTF-8 bytes
                    "PATH_INFO": ("/x" + forged + "/é").encode().decode("latin-1"),
                    "QUERY_STRING": "api_key=query-secret",
                    "HTTP_USER_AGENT": 'evil\\agent "quoted"\r\n{"forged": 1}',
                },
                [("Content-Type", "text/html"), ("X-Request-Id", "req-12345678")],
                "404 NOT FOUND",
                207,
            ),
            ({"REQUEST_METHOD": "POST", "PATH_INFO": "/orders/ord_x/pay"}, [], "303 SEE OTHER", 0),
        ],
    )
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["path"] == "/x" + forged + "/é"
    assert first["agent"] == 'evil\\agent "quoted"\r\n{"forged": 1}'
    assert first["status"] == 404
    assert first["bytes"] == 207
    assert first["duration_us"] == 1_002_345
    assert first["request_id"] == "req-12345678"
    assert first["remote"] == "203.0.113.9"
    assert first["method"] == "GET"
    assert datetime.fromisoformat(first["time"]).utcoffset() == timedelta(0)
    assert "query-secret" not in "\n".join(lines)  # the query string is never logged
    assert second["request_id"] == second["remote"] == second["agent"] == "-"
    assert (second["method"], second["status"], second["bytes"]) == ("POST", 303, 0)


def test_no_access_line_when_the_access_log_is_off(settings):
    logger = access_logger(settings, GUNICORN_ACCESSLOG="")
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append
    logger.access_log.addHandler(catcher)
    response = SimpleNamespace(status="200 OK", headers=[], sent=5)
    logger.access(response, None, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, timedelta(0))
    assert records == []
