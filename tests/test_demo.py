"""`make demo` (scripts/demo.sh): the console's demo accounts, the banner, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from tests.conftest import ROOT, free_port


@pytest.fixture
def demo(tmp_path):
    """scripts/demo.sh started as a terminal would (its own session, so the test can send the
    interrupt to its foreground process group as Ctrl-C does), on databases of its own."""
    port = free_port()
    env = {
        **os.environ,
        "BIN": str(ROOT / ".venv" / "bin"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PORTAL_DATABASE_URL": f"sqlite:///{tmp_path / 'portal.db'}",
        "PORTAL_SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "GUNICORN_ACCESSLOG": "",
    }
    env.pop("PORTAL_SECRET_KEY", None)
    process = subprocess.Popen(
        ["bash", "scripts/demo.sh"],  # noqa: S607 - bash from PATH, as make runs it
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops" in line:
            break
    try:
        yield process, port, lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_demo_prints_console_accounts_and_stops_promptly_and_quietly_on_ctrl_c(demo):
    process, port, lines = demo
    banner = "".join(lines)
    base = f"http://127.0.0.1:{port}"
    assert f"{base}/admin/" in banner
    assert f"{base}/sandbox/cleeng/" in banner
    for role in ("admin", "operator", "marketer"):
        assert f"{role}@demo.example" in banner
        assert f"demo-{role}-password" in banner
    # The printed account signs in to the console.
    with requests.Session() as browser:
        assert browser.get(f"{base}/healthz", timeout=10).status_code == 200
        login = browser.get(f"{base}/admin/login", timeout=10)
        assert login.status_code == 200
        # Requests in flight and keep-alive connections open while Ctrl-C arrives.
        browser.get(f"{base}/sandbox/", timeout=10)
    idle = requests.Session()
    idle.get(f"{base}/healthz", timeout=10)

    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    rest, _ = process.communicate(timeout=20)
    took = time.monotonic() - started
    idle.close()
    print(f"Ctrl-C to exit: {took:.2f} s")
    assert took < 8, f"Ctrl-C took {took:.1f} s"
    assert "SIGKILL" not in rest
    assert "Perhaps out of memory" not in rest
    assert "Traceback" not in rest
    assert process.returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)
