"""Every installed platform is wired into every list the core keeps: a platform added to
portal.platforms.registry whose spec a core list forgot fails here, not in production."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from portal import ratelimit
from portal.config import declarations, secret_names
from portal.observability.logs import JsonFormatter, secret_values
from portal.platforms import registry

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

ROOT = Path(__file__).resolve().parent.parent
SPECS = registry.installed()
IDS = [spec.name for spec in SPECS]


def test_the_registry_lists_each_platform_package_once():
    packages = sorted(p.parent.name for p in (ROOT / "portal" / "platforms").glob("*/spec.py"))
    assert sorted(IDS) == packages
    assert len(set(IDS)) == len(IDS)
    for spec in SPECS:
        assert spec.tax in {"quoted", "added", "included"}, spec.name
        assert (ROOT / "templates" / spec.review_template).is_file(), spec.name


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_its_blueprint_is_registered(app, spec):
    if spec.blueprint is None:
        return
    assert app.blueprints[spec.blueprint.name] is spec.blueprint


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_its_entry_points_are_rate_limited(make_app, spec):
    app = make_app(RATELIMIT_ENTRY="1/minute")
    assert set(spec.entry_endpoints) <= set(ratelimit.entry_endpoints())
    for endpoint in spec.entry_endpoints:
        rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
        method = "POST" if "POST" in rule.methods else "GET"
        client = app.test_client()
        client.open(rule.rule, method=method)  # whatever it answers, it counts
        assert client.open(rule.rule, method=method).status_code == 429, endpoint


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_its_learner_pages_are_never_cached(client, spec):
    for prefix in spec.learner_paths:
        response = client.get(prefix + "no-such-page")
        assert response.headers["Cache-Control"] == "no-store", prefix


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_its_settings_are_read_and_its_secrets_masked(app, console, spec):
    assert spec.settings, "every platform says at least who sends its receipts"
    settings = app.config["PORTAL"]
    declared = {setting.name for setting in declarations(settings)}
    assert {setting.name for setting in spec.settings} <= declared
    assert f"{spec.name.upper()}_RECEIPTS" in {setting.name for setting in spec.settings}
    secrets, values = {}, {}
    for setting in spec.settings:
        assert getattr(settings, setting.attribute) is not None or setting.default is None
        if setting.secret:
            assert setting.name in secret_names(settings)
            value = f"secret-of-{setting.name.lower()}-0123456789"
            values[setting.attribute] = (value,) if isinstance(setting.default, tuple) else value
            secrets[setting.name] = value
    settings = app.config["PORTAL"] = dataclasses.replace(settings, **values)
    masked = secret_values(settings)
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "%s", (list(secrets.values()),), None
    )
    line = JsonFormatter(masked).format(record)
    page = console("admin").get("/admin/settings").text
    for name, value in secrets.items():
        assert value in masked, name
        assert value not in line, name
        assert f"PORTAL_{name}" in page
        assert value not in page, name


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_its_job_kinds_are_registered(app, spec):
    """The queue runs what the app's services list (portal.job_kinds): each of the platform's."""
    kinds = app.extensions["portal"].job_kinds
    for kind, job in spec.job_kinds.items():
        assert kinds[kind].run is job.run


def test_the_guide_lists_the_files_the_packages_have():
    """docs/adding-a-platform.md names each file a platform package may have; every file of
    the four packages is in that list, and every file the list calls required is in each."""
    guide = (ROOT / "docs" / "adding-a-platform.md").read_text()
    block = guide.split("<!-- files -->")[1]
    listed = {}
    for names, kind in re.findall(
        r"^- ((?:`[a-z_]+\.py`(?:, )?)+) \((required|optional)\)", block, re.M
    ):
        listed.update(dict.fromkeys(re.findall(r"`([a-z_]+\.py)`", names), kind))
    assert listed, "the guide's file list is missing"
    for spec in SPECS:
        package = ROOT / "portal" / "platforms" / spec.name
        files = {p.name for p in package.glob("*.py")}
        assert files <= set(listed), (spec.name, files - set(listed))
        required = {name for name, kind in listed.items() if kind == "required"}
        assert required <= files, (spec.name, required - files)
