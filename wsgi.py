"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""

from portal import create_app
from portal.cli import app_or_exit

app = app_or_exit(create_app)
