"""gunicorn settings, each overridable from the environment.

Threads (the gthread worker) absorb upstream latency: a checkout spends most of its time waiting
on the platform and on Stripe, and a waiting thread costs little. See README "Serving".
"""

import json
import multiprocessing
import os
import shutil
import tempfile
import traceback
from datetime import UTC, datetime, timedelta

from gunicorn.glogging import Logger

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", min(multiprocessing.cpu_count() * 2, 8)))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", 16))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 60))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 30))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 5))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", 0))
limit_request_line = 8190
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty: no access log
# Each worker proves it is alive by touching a file on every turn of its loop: on tmpfs that is a
# memory write, on a disk-backed /tmp a metadata update (gunicorn's FAQ advises /dev/shm).
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or (
    "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - mkstemp, unlinked at once
)
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")


class JsonAccessLogger(Logger):
    """gunicorn's logger, with each access line one JSON object made by json.dumps: time (UTC),
    client, method, path without the query string, status, bytes, duration in µs, the response's
    X-Request-Id and the User-Agent. Every value is escaped, so a quote, a backslash or an
    encoded newline in a path or a User-Agent cannot break the line or forge another, which a
    JSON-shaped `access_log_format` allows (gunicorn escapes only the double quote). Also
    cheaper: gunicorn fills its format from a table of every header and environ variable."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        request_id = "-"
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = value
                break
        path = environ.get("PATH_INFO") or ""
        try:  # WSGI hands the path over as Latin-1; the URL's bytes are UTF-8 as a rule
            path = path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "remote": environ.get("REMOTE_ADDR", "-"),
            "method": environ.get("REQUEST_METHOD"),
            "path": path,
            "status": int(status) if str(status).isdigit() else str(status),
            "bytes": getattr(resp, "sent", None),
            "duration_us": request_time // timedelta(microseconds=1),
            "request_id": request_id,
            "agent": environ.get("HTTP_USER_AGENT", "-"),
        }
        try:
            self.access_log.info(json.dumps(entry, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - gunicorn's own rule: a log line never fails a request
            self.error(traceback.format_exc())


logger_class = JsonAccessLogger
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
# Prometheus: each worker writes its counters to files in this folder and /metrics merges them,
# so a scrape sees the whole instance, not one worker. A folder of our own unless one is given.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="portal-prometheus-")


def on_starting(server):
    # The app sizes its database and HTTP pools to the threads of one worker.
    os.environ["GUNICORN_THREADS"] = str(server.cfg.threads)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):  # figures of an earlier run would be counted again
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
