"""The baseline for bench/run.py: a bare Flask app that answers "hello", served by gunicorn with
the same gunicorn.conf.py and the same worker settings as the portal.

    gunicorn -c gunicorn.conf.py bench.hello_app:app
"""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return "hello"
