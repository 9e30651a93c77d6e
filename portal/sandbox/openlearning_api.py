"""An OpenLearning stand-in: course pages whose "Join now" posts a freshly signed token to the
portal's External Enrolment URL (as OpenLearning's custom payment gateway does), the enrolment
API the portal calls after payment, and the course page a learner lands on afterwards.

Tokens are signed RS256 with a sandbox key pair kept in the instance folder; its public half is
the portal's configured OpenLearning key unless the operator configured another one.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import re
import secrets
import tempfile
import time
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from joserfc import jwt
from joserfc.jwk import RSAKey

from portal.money import format_money, to_minor

bp = Blueprint("sandbox_openlearning", __name__, url_prefix="/sandbox/openlearning")

API_PREFIX = "/sandbox/openlearning/v2.2/"
KEY_FILE = "sandbox-openlearning-key.pem"
TOKEN_MINUTES = 10
ENROLMENT = "openlearning.enrolment"
LEARNER = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")

COURSES = {
    "python-foundations": {
        "title": "Python Foundations",
        "summary": "Eight weeks from your first variable to a small web scraper.",
        "course": "64b7f0c2a1e4d3b2c1a09f11",
        "class": "64b7f0c9a1e4d3b2c1a09f12",
        "currency": "AUD",
        "price": "149.00",
    },
    "kanji-in-context": {
        "title": "Kanji in Context",
        "summary": "Read 300 everyday kanji in real signs, menus and timetables.",
        "course": "64b7f0f3a1e4d3b2c1a09f21",
        "class": "64b7f0f8a1e4d3b2c1a09f22",
        "currency": "JPY",
        "price": 12000,  # a JSON number, as OpenLearning may send it
    },
    "data-analytics-program": {
        "title": "Data Analytics Professional Program",
        "summary": "Four courses and a capstone project, enrolled as one program.",
        "program": "64b7f1d0a1e4d3b2c1a09f31",
        "currency": "USD",
        "price": "990.00",
    },
}
CLASSES = {c["class"] for c in COURSES.values() if "class" in c}
PROGRAMS = {c["program"] for c in COURSES.values() if "program" in c}


def _store():
    return current_app.extensions["sandbox_store"]


def _settings():
    return current_app.config["PORTAL"]


# --- the sandbox signing key --------------------------------------------------------------------


def sandbox_key_pair(instance_path: str) -> tuple[bytes, str]:
    """(private PEM, public PEM) of the sandbox's signing key, made once per instance folder.

    Every gunicorn worker starts at once: the key is written to a temporary file and linked into
    place, so the first writer wins and the others read its key."""
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, KEY_FILE)
    if not os.path.exists(path):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, temporary = tempfile.mkstemp(dir=instance_path, prefix=".openlearning-key-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    with open(path, "rb") as handle:
        private_pem = handle.read()
    public_pem = (
        serialization.load_pem_private_key(private_pem, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def sign_token(slug: str, learner: str) -> tuple[str, dict]:
    """A fresh "Join now" token for `learner`, as OpenLearning would sign it."""
    course = COURSES[slug]
    now = int(time.time())
    claims = {
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + TOKEN_MINUTES * 60,
        "sub": learner,
        "aud": _settings().openlearning_audience,
        "title": course["title"],
        "currency": course["currency"],
        "price": course["price"],
        "redirect_url": _settings().public_url
        + url_for("sandbox_openlearning.learn", slug=slug, learner=learner),
    }
    if "program" in course:
        claims["program"] = course["program"]
    else:
        claims["course"] = course["course"]
        claims["class"] = course["class"]
    private_pem, _public = sandbox_key_pair(current_app.instance_path)
    return jwt.encode({"alg": "RS256"}, claims, RSAKey.import_key(private_pem)), claims


def _uses_sandbox_key() -> bool:
    configured = (_settings().openlearning_public_key or "").strip()
    return configured == sandbox_key_pair(current_app.instance_path)[1].strip()


# --- the enrolment API ----------------------------------------------------------------------------


@bp.before_request
def api_guard():
    if not request.path.startswith(API_PREFIX):
        return None
    request.get_data()  # cached first, so the call log keeps the body after form parsing
    store = _store()
    settings = _settings()
    latency = store.control("openlearning_latency_ms", settings.sandbox_latency_ms)
    if latency:
        time.sleep(latency / 1000)
    given = request.args.get("api_key", "")
    expected = settings.openlearning_api_key or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return _answer(401, errors=["Invalid API key."])
    fault_rate = store.control("openlearning_fault_rate", settings.sandbox_fault_rate)
    timeout_rate = store.control("openlearning_timeout_rate", 0.0)
    draw = random.random()  # noqa: S311
    if request.method != "GET" and draw < fault_rate:
        return _answer(503, errors=["Service unavailable (sandbox fault injection)."])
    if request.method != "GET" and draw < fault_rate + timeout_rate:
        g.sandbox_late_answer = True  # a timeout: done here, but answered too late (below)
    return None


@bp.after_request
def late_answer(response):
    """The timeout fault: the call took effect, and its answer comes after the portal's read
    timeout, as when a platform's answer is slow or lost on the way back."""
    if g.get("sandbox_late_answer"):
        time.sleep(_settings().http_read_timeout + 0.5)
    return response


def _answer(status: int, *, data=None, errors=None):
    _store().log_call(
        "openlearning",
        request.method,
        request.path,
        request.get_data(as_text=True) or None,
        status,
    )
    body: dict = {"meta": {"status": status}}
    if data is not None:
        body["data"] = data
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    return response


def _enrol(target: str, user: str, fields: dict):
    store = _store()
    object_id = f"{target}:{user}"
    if store.get(ENROLMENT, object_id) is not None:
        return _answer(400, errors={"user": ["This user is already enrolled."]})
    enrolment = {"id": secrets.token_hex(12), "user": user, **fields, "created": int(time.time())}
    store.put(ENROLMENT, object_id, enrolment)
    return _answer(200, data=enrolment)


@bp.post("/v2.2/enrolments/")
def enrol_in_class():
    if request.mimetype != "application/x-www-form-urlencoded":
        return _answer(415, errors=["Send the enrolment as application/x-www-form-urlencoded."])
    class_id = request.form.get("class", "")
    user = request.form.get("user", "")
    fields = {"class": class_id, "user": user}
    errors = {name: ["This field is required."] for name, value in fields.items() if not value}
    if errors:
        return _answer(400, errors=errors)
    if class_id not in CLASSES:
        return _answer(404, errors=["Class not found."])
    return _enrol(f"class:{class_id}", user, {"class": class_id})


@bp.post("/v2.2/institutions/<institution>/programs/<program>/enrolments/")
def enrol_in_program(institution, program):
    if institution != _settings().openlearning_audience or program not in PROGRAMS:
        return _answer(404, errors=["Program not found."])
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not data["user"]:
        return _answer(400, errors={"user": ["This field is required."]})
    unknown = sorted(set(data) - {"user"})
    if unknown:
        return _answer(400, errors={name: ["Unknown field."] for name in unknown})
    return _enrol(
        f"program:{program}", data["user"], {"program": program, "institution": institution}
    )


# --- the course pages -----------------------------------------------------------------------------


def _course_or_404(slug: str) -> dict:
    if slug not in COURSES:
        abort(404)
    return COURSES[slug]


def _learner_or_none() -> str | None:
    learner = request.args.get("learner", "")
    return learner if LEARNER.fullmatch(learner) else None


def _enrolment(course: dict, learner: str) -> dict | None:
    target = f"program:{course['program']}" if "program" in course else f"class:{course['class']}"
    return _store().get(ENROLMENT, f"{target}:{learner}")


def _price(course: dict) -> str:
    return format_money(to_minor(str(course["price"]), course["currency"]), course["currency"])


def new_learner() -> str:
    return "learner-" + secrets.token_hex(4)


@bp.get("/")
def index():
    learner = _learner_or_none() or new_learner()
    courses = [
        {"slug": slug, **course, "display_price": _price(course)}
        for slug, course in COURSES.items()
    ]
    calls = list(reversed(_store().calls("openlearning")[-20:]))
    return render_template(
        "sandbox/openlearning_index.html", courses=courses, learner=learner, calls=calls
    )


@bp.get("/courses/<slug>/")
def course_page(slug):
    course = _course_or_404(slug)
    learner = _learner_or_none()
    if learner is None:
        # Each visitor without a learner id is a new demo learner.
        return redirect(url_for(".course_page", slug=slug, learner=new_learner()), 303)
    token, claims = sign_token(slug, learner)
    return render_template(
        "sandbox/openlearning_course.html",
        slug=slug,
        course=course,
        price=_price(course),
        learner=learner,
        token=token,
        claims=json.dumps(claims, indent=2),
        enrol_url=_settings().public_url + "/openlearning/enrol",
        enrolled=_enrolment(course, learner) is not None,
        own_key=_uses_sandbox_key(),
    )


@bp.get("/courses/<slug>/learn")
def learn(slug):
    course = _course_or_404(slug)
    learner = _learner_or_none()
    if learner is None:
        abort(404)
    return render_template(
        "sandbox/openlearning_learn.html",
        slug=slug,
        course=course,
        learner=learner,
        enrolment=_enrolment(course, learner),
    )
