"""The sandbox learner pages render in: an `ImmutableSandboxedEnvironment` with autoescape,
strict undefined, a short list of filters and globals, and a loader chain (a published override
from the database, then the default template from `templates/`).

An override names the default it builds on as `default:<name>` (`{% extends
"default:review.html" %}`), so a marketer changes blocks and need not copy the page. Only
learner-facing templates load here: the console's and the sandbox's are not reachable, nor is
any file outside `templates/`.
"""

from __future__ import annotations

import contextvars
import os
import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal, format_percent
from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError, pass_context
from jinja2.ext import Extension
from jinja2.filters import FILTERS
from jinja2.lexer import Token
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from portal import i18n
from portal.money import format_money

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"
DEFAULT_PREFIX = "default:"
NOT_LEARNER_FACING = ("admin/", "sandbox/")
EXTENSIONS = (".html", ".txt", ".svg")
# Markup that runs code or sends the page elsewhere has no place in an override: the check before
# publishing refuses it, and the loader refuses it again (a row changed behind the console's back
# falls back to the default instead of reaching a learner).
ACTIVE_MARKUP = re.compile(
    r"<\s*(script|iframe|object|embed|base|form|meta)\b|\son[a-z]+\s*=|javascript\s*:", re.I
)

# Published overrides for the render under way: {template name: (identity, source)}. Set by
# portal.branding.render for each page; empty (defaults only) everywhere else.
live_overrides: contextvars.ContextVar[dict[str, tuple[object, str]] | None] = (
    contextvars.ContextVar("live_overrides", default=None)
)


def current_overrides() -> dict[str, tuple[object, str]]:
    return live_overrides.get() or {}


# Names of the overrides a render loaded, so a failure is recorded against them.
overrides_used: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "overrides_used", default=None
)


def is_learner_template(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        return False
    return name.endswith(EXTENSIONS) and not name.startswith(NOT_LEARNER_FACING)


def learner_template_names() -> list[str]:
    names = []
    for folder, dirs, files in os.walk(TEMPLATES_DIR):
        rel = os.path.relpath(folder, TEMPLATES_DIR).replace(os.sep, "/")
        dirs.sort()
        for file in sorted(files):
            name = file if rel == "." else f"{rel}/{file}"
            if is_learner_template(name):
                names.append(name)
    return sorted(names, key=lambda n: (n.count("/"), n))


def default_source(name: str) -> str:
    if not is_learner_template(name):
        raise TemplateNotFound(name)
    path = TEMPLATES_DIR / name
    if not path.is_file():
        raise TemplateNotFound(name)
    return path.read_text(encoding="utf-8")


class LearnerLoader(BaseLoader):
    """Override (from `overrides()`), then the default file. `default:<name>` skips the
    override."""

    def __init__(self, overrides):
        self.overrides = overrides

    def get_source(self, environment, template):
        name, use_override = template, True
        if template.startswith(DEFAULT_PREFIX):
            name, use_override = template[len(DEFAULT_PREFIX) :], False
        if not is_learner_template(name):
            raise TemplateNotFound(template)
        if use_override:
            current = self.overrides()
            if name in current:
                identity, source = current[name]
                used = overrides_used.get()
                if used is not None and name not in used:
                    used.append(name)
                found = ACTIVE_MARKUP.search(source)
                if found:
                    line = source.count("\n", 0, found.start()) + 1
                    raise TemplateSyntaxError(
                        f"{found.group(0).strip()!r} is not allowed in an override", line, name
                    )
                return source, None, lambda: self.overrides().get(name, (None,))[0] == identity
        source = default_source(name)
        if not use_override:
            return source, str(TEMPLATES_DIR / name), lambda: True
        return source, str(TEMPLATES_DIR / name), lambda: name not in self.overrides()


# --- filters: a short list, nothing that marks text safe or reaches Python objects --------------

SAFE_BUILTIN_FILTERS = (
    "abs",
    "capitalize",
    "count",
    "d",
    "default",
    "e",
    "escape",
    "first",
    "int",
    "join",
    "last",
    "length",
    "lower",
    "replace",
    "round",
    "string",
    "title",
    "trim",
    "truncate",
    "upper",
    "wordcount",
)


@pass_context
def money_filter(context, amount_minor, currency=None):
    """`{{ order.amount_minor|money }}`: the order's currency in the page's locale."""
    order = context.get("order")
    currency = currency or (order or {}).get("currency") or "USD"
    return format_money(int(amount_minor or 0), str(currency), context.get("locale") or "en")


def _when(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, date):
        raise TypeError("expected a date or time")
    return value


@pass_context
def date_filter(context, value, format="medium"):  # noqa: A002 - Babel's own parameter name
    value = _when(value)
    locale = context.get("locale") or "en"
    if isinstance(value, datetime):
        return format_date(value.date(), format=format, locale=locale)
    return format_date(value, format=format, locale=locale)


@pass_context
def datetime_filter(context, value, format="medium"):  # noqa: A002
    return format_datetime(_when(value), format=format, locale=context.get("locale") or "en")


@pass_context
def number_filter(context, value):
    return format_decimal(Decimal(str(value)), locale=context.get("locale") or "en")


@pass_context
def percent_filter(context, value):
    """`20|percent` -> 20 % in French, 20% in English (value in percent, not a fraction)."""
    return format_percent(Decimal(str(value)) / 100, locale=context.get("locale") or "en")


def allowed_filters() -> dict:
    filters = {name: FILTERS[name] for name in SAFE_BUILTIN_FILTERS}
    filters.update(
        money=money_filter,
        date=date_filter,
        datetime=datetime_filter,
        number=number_filter,
        percent=percent_filter,
    )
    return filters


# --- the render budget ---------------------------------------------------------------------------
#
# A page renders in a few thousand steps and a few milliseconds; an override may not make every
# learner wait (a triple loop of a million steps took 0.4 s a page). Each step the sandbox sees
# counts: a loop iteration, a call, an attribute or item lookup, an arithmetic operator, a piece
# of output. Past RENDER_STEPS steps or RENDER_MILLISECONDS the render stops with
# RenderBudgetExceeded: at check time the override is refused with that reason, at request time
# the default page is served and an operator alerted (portal.branding.render).

RENDER_STEPS = 200_000
RENDER_MILLISECONDS = 1000
OUTPUT_MAX_CHARS = 2 * 1024 * 1024
# The longest string or list one `*` may make, and the largest `**` exponent.
REPEAT_MAX = 100_000
POWER_MAX = 1_000


class RenderBudgetExceeded(SecurityError):
    """The template took more steps or time than a learner page may."""


@dataclass
class Budget:
    steps: int = RENDER_STEPS
    milliseconds: int = RENDER_MILLISECONDS
    used: int = 0
    started: float = 0.0
    # Time counts once an override takes part (the defaults are ours: a busy host must not
    # turn them into errors); steps always count.
    timed: bool = False

    def __post_init__(self):
        self.started = time.monotonic()
        self.deadline = self.started + self.milliseconds / 1000

    def tick(self, count: int = 1) -> None:
        self.used += count
        if self.used > self.steps:
            raise RenderBudgetExceeded(
                f"the page takes more than {self.steps:,} steps to render (loops, calls and "
                "lookups): make it simpler"
            )
        if self.timed and time.monotonic() > self.deadline:
            raise RenderBudgetExceeded(
                f"the page takes longer than {self.milliseconds} ms to render: make it simpler"
            )


render_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "render_budget", default=None
)


def tick(count: int = 1) -> None:
    budget = render_budget.get()
    if budget is not None:
        budget.tick(count)


# Every `{% for x in EXPR %}` becomes `{% for x in LOOP_GUARD(EXPR) %}`, so each iteration is a
# step. The name is reserved: a template that uses it does not compile.
LOOP_GUARD = "_budgeted_loop"


def budgeted_loop(iterable):
    for item in iterable:
        tick()
        yield item


class LoopBudget(Extension):
    """Wraps each for loop's iterable in LOOP_GUARD, on the token stream (public Jinja API)."""

    def filter_stream(self, stream):
        previous = None
        state = None  # None, "target" (after `for`), "iterable" (after `in`)
        depth = 0
        for token in stream:
            if token.type == "name" and token.value == LOOP_GUARD:
                raise TemplateSyntaxError(
                    f"{LOOP_GUARD} is a reserved name", token.lineno, stream.name, stream.filename
                )
            if state == "iterable":
                ends = token.type == "block_end" or (
                    token.type == "name" and token.value in {"if", "recursive"}
                )
                if depth == 0 and ends:
                    yield Token(token.lineno, "rparen", ")")
                    state = None
                elif token.type in {"lparen", "lbracket", "lbrace"}:
                    depth += 1
                elif token.type in {"rparen", "rbracket", "rbrace"}:
                    depth -= 1
            elif state == "target" and token.type == "name" and token.value == "in":
                yield token
                yield Token(token.lineno, "name", LOOP_GUARD)
                yield Token(token.lineno, "lparen", "(")
                state, depth = "iterable", 0
                previous = token
                continue
            elif (
                previous is not None
                and previous.type == "block_begin"
                and token.type == "name"
                and token.value == "for"
            ):
                state = "target"
            previous = token
            yield token


class LearnerEnvironment(ImmutableSandboxedEnvironment):
    """Also refuses every attribute that starts with an underscore, on anything (the sandbox
    already refuses dunders and Python internals), and counts the steps of a render against
    its budget."""

    has_fixed_overrides = False  # set on the throwaway environments of drafts
    intercepted_binops = frozenset({"*", "**", "+", "-", "/", "//", "%"})
    intercepted_unops = frozenset({"-", "+"})

    def is_safe_attribute(self, obj, attr, value):
        if attr.startswith("_"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        """Compiling a template (once per process) is not the page's time: the clock of the
        render under way stops meanwhile."""
        started = time.monotonic()
        try:
            return super().compile(source, name, filename, raw, defer_init)
        finally:
            budget = render_budget.get()
            if budget is not None:
                budget.deadline += time.monotonic() - started

    def call_binop(self, context, operator, left, right):
        tick()
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(times, int)
                    and len(sequence) * times > REPEAT_MAX
                ):
                    raise RenderBudgetExceeded("that repetition makes too long a value")
        if operator == "**" and isinstance(right, int | float) and abs(right) > POWER_MAX:
            raise RenderBudgetExceeded("that power is too large")
        return super().call_binop(context, operator, left, right)

    def call_unop(self, context, operator, arg):
        tick()
        return super().call_unop(context, operator, arg)

    def getattr(self, obj, attribute):
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        tick()
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - the sandbox's signature
        tick()
        return super().call(__context, __obj, *args, **kwargs)


def render_budgeted(template, context: dict, *, timed: bool = False) -> str:
    """`template.render(context)` within a render budget: each piece of output is a step, and
    the output may not grow past OUTPUT_MAX_CHARS."""
    token = render_budget.set(Budget(timed=timed))
    try:
        parts: list[str] = []
        size = 0
        for part in template.generate(context):
            size += len(part)
            if size > OUTPUT_MAX_CHARS:
                raise RenderBudgetExceeded("the page is too long")
            tick()
            parts.append(part)
        return "".join(parts)
    finally:
        render_budget.reset(token)


def build_environment(language: str, overrides) -> LearnerEnvironment:
    """A sandboxed environment for one language; `overrides()` returns the override map."""
    env = LearnerEnvironment(
        loader=LearnerLoader(overrides),
        autoescape=True,
        undefined=StrictUndefined,
        auto_reload=True,
        extensions=["jinja2.ext.i18n", LoopBudget],
        cache_size=400,
    )
    env.filters = allowed_filters()
    # No lipsum, cycler, joiner, dict or namespace: range (the sandbox's bounded one) only.
    # (`_` is the i18n extension's alias of gettext, installed with it below.)
    env.globals = {
        "range": env.globals["range"],
        "_": env.globals["_"],
        LOOP_GUARD: budgeted_loop,
    }
    env.install_gettext_translations(i18n.translations(language), newstyle=True)
    return env


_live: dict[str, LearnerEnvironment] = {}


def live_environment(language: str) -> LearnerEnvironment:
    """The long-lived environment of a language, reading overrides from `live_overrides`."""
    env = _live.get(language)
    if env is None:
        env = _live[language] = build_environment(language, current_overrides)
    return env


def fixed_environment(language: str, overrides: dict[str, str]) -> LearnerEnvironment:
    """A throwaway environment with a fixed set of overrides (drafts: preview, validation)."""
    fixed = {name: (("draft", hash(source)), source) for name, source in overrides.items()}
    env = build_environment(language, lambda: fixed)
    env.has_fixed_overrides = bool(fixed)
    return env
