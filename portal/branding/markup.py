"""The check of what an override makes learners receive: the rendered HTML of a page or an
email, parsed with a real HTML5 parser (justhtml, the WHATWG algorithm a browser uses), compared
with the default template's rendering of the same page.

Reading the template source cannot work: `<fo{##}rm>`, `{% raw %}`, entities, case and
attribute tricks all turn into markup only when the template runs. So the check reads the
output, the way the learner's browser will:

- **Allow-listed elements and attributes only.** Text, headings, lists, tables, links, images
  and a few inline SVG shapes. No scripts, styles, frames, objects, `<base>`, `<meta>` refresh,
  `<template>`, MathML, event handlers (`on*`) or `style` attributes on pages (emails may carry
  inline styles, without `url()`).
- **URLs by scheme and origin.** Links: a path on the portal, `https:`, `mailto:` or `tel:`
  (emails: `https:` to the brand's allowed hosts and the portal); images: served by the portal.
  `javascript:`, `data:` and the rest are refused.
- **The essentials stay as the default renders them.** Every part of the default page marked
  `data-locked` (the order summary, the Pay / Try again / Cancel forms, the tax-country form)
  appears in the override's output exactly once, unchanged and not hidden; no form exists
  outside them; `<html lang>`, a non-empty `<title>`, and the `<meta>`/`<link>` elements (the
  stylesheets) are the default's.

`problems()` answers with sentences a marketer can act on; an empty list means the output may
be served.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from justhtml import JustHTML

LOCKED = "data-locked"
LOCKED_NAMES = {
    "summary": "the order summary (product, quantities and amounts)",
    "pay": "the Pay, Try again and Cancel forms",
    "tax-country": "the tax country form",
}

TEXT_ELEMENTS = frozenset(
    "html head body title main header footer nav section article aside div span p "
    "h1 h2 h3 h4 h5 h6 a abbr b strong i em small s u mark q cite code kbd samp sub sup time "
    "data br hr wbr ul ol li dl dt dd figure figcaption blockquote pre address bdi bdo del ins "
    "table caption thead tbody tfoot tr th td col colgroup img details summary center font".split()
)
HEAD_ELEMENTS = frozenset({"meta", "link"})
FORM_ELEMENTS = frozenset(
    "form input button select option optgroup textarea label fieldset legend output".split()
)
SVG_ELEMENTS = frozenset("svg g path rect circle ellipse line polyline polygon title desc".split())
# Named so the marketer reads what was refused and why.
REFUSED_WHY = {
    "script": "scripts never run on checkout pages",
    "style": "styles come from the brand's colours and the portal's stylesheet",
    "iframe": "frames are not allowed",
    "frame": "frames are not allowed",
    "frameset": "frames are not allowed",
    "object": "embedded objects are not allowed",
    "embed": "embedded objects are not allowed",
    "applet": "embedded objects are not allowed",
    "portal": "embedded pages are not allowed",
    "base": "<base> would send every link elsewhere",
    "template": "hidden template content is not allowed",
    "noscript": "<noscript> is not allowed",
    "math": "MathML is not allowed",
    "foreignobject": "foreign content in SVG is not allowed",
    "use": "SVG references are not allowed",
    "image": "SVG images are not allowed (use the brand logo)",
    "animate": "SVG animation is not allowed",
    "set": "SVG animation is not allowed",
    "plaintext": "<plaintext> is not allowed",
    "xmp": "<xmp> is not allowed",
}

GLOBAL_ATTRIBUTES = frozenset("class id lang dir title role hidden tabindex translate".split())
ELEMENT_ATTRIBUTES = {
    "a": frozenset({"href", "rel", "target", "hreflang"}),
    "img": frozenset({"src", "alt", "width", "height", "loading", "decoding"}),
    "time": frozenset({"datetime"}),
    "data": frozenset({"value"}),
    "td": frozenset({"colspan", "rowspan", "headers"}),
    "th": frozenset({"colspan", "rowspan", "headers", "scope", "abbr"}),
    "ol": frozenset({"start", "reversed", "type"}),
    "li": frozenset({"value"}),
    "col": frozenset({"span"}),
    "colgroup": frozenset({"span"}),
    "details": frozenset({"open"}),
}
EMAIL_ATTRIBUTES = frozenset(
    "style align valign width height cellpadding cellspacing border bgcolor color face size".split()
)
SVG_ATTRIBUTES = frozenset(
    "viewbox fill stroke stroke-width stroke-linecap stroke-linejoin stroke-dasharray "
    "stroke-opacity fill-opacity fill-rule clip-rule d x y width height rx ry cx cy r points "
    "x1 y1 x2 y2 focusable aria-hidden aria-label role class xmlns transform opacity "
    "preserveaspectratio".split()
)
# Where a locked part may not sit: inside these it is hidden, inert or not a form of its own.
HIDING_ANCESTORS = frozenset(
    "a button label details summary dialog select option noscript template".split()
)
HIDING_ATTRIBUTES = frozenset({"hidden", "inert", "aria-hidden"})
HIDING_CLASSES = frozenset({"skip"})
LINK_SCHEMES = frozenset({"https", "mailto", "tel"})
STYLE_REFUSED = ("url(", "expression", "@import", "\\", "behavior", "-moz-binding", "image-set")


@dataclass(frozen=True)
class Rules:
    """What the output of one render may contain besides what the default renders.

    `email`: an email (inline styles allowed, absolute URLs). `public_url`: the portal's
    external base URL (emails' images must be under it). `link_hosts`: the hosts an email's
    https links may point to."""

    email: bool = False
    public_url: str = ""
    link_hosts: frozenset[str] = field(default_factory=frozenset)


def _parse(html: str):
    return JustHTML(html, sanitize=False).root


def _elements(node, ancestors=()):
    """Each element with its ancestors, in document order (a <template>'s content is not
    walked: <template> itself is refused)."""
    for child in node.children or ():
        if child.name.startswith(("#", "!")):
            continue
        yield child, ancestors
        yield from _elements(child, (*ancestors, child))


def _comments(node):
    for child in node.children or ():
        if child.name == "#comment":
            yield child
        elif not child.name.startswith(("#", "!")):
            yield from _comments(child)


def _clean_url(value: str) -> str:
    """The URL as a browser reads it: C0 controls and spaces around it dropped, tabs and
    newlines inside it removed."""
    value = value.strip("".join(chr(c) for c in range(0x21)))
    return "".join(ch for ch in value if ch not in "\t\n\r")


def _scheme(url: str) -> str | None:
    head = url.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if ":" in head:
        return head.split(":", 1)[0].lower()
    return None


def _portal_path(url: str) -> bool:
    """A path on the portal itself: `/...`, never `//host` or `/\\host`."""
    return url.startswith("/") and not url.startswith(("//", "/\\"))


def _quote(value: str, limit: int = 80) -> str:
    value = value if len(value) <= limit else value[: limit - 1] + "…"
    return repr(value)


@dataclass
class _Reference:
    """What the default rendering has: what the override's output is compared with."""

    lang: str | None
    head: Counter
    locked: dict[str, Counter]
    urls: set[str]


def _head_items(root) -> Counter:
    return Counter(
        (el.name, tuple(sorted((el.attrs or {}).items())))
        for el, _ancestors in _elements(root)
        if el.namespace == "html" and el.name in HEAD_ELEMENTS
    )


def _locked_parts(root) -> dict[str, Counter]:
    parts: dict[str, Counter] = {}
    for el, _ancestors in _elements(root):
        name = (el.attrs or {}).get(LOCKED)
        if name is not None:
            parts.setdefault(name, Counter())[el.to_html(pretty=False)] += 1
    return parts


def _html_lang(root) -> str | None:
    for el, _ancestors in _elements(root):
        if el.name == "html":
            return (el.attrs or {}).get("lang")
    return None


def reference(default_html: str) -> _Reference:
    root = _parse(default_html)
    urls = set()
    for el, _ancestors in _elements(root):
        for attr in ("href", "src"):
            value = (el.attrs or {}).get(attr)
            if value is not None:
                urls.add(_clean_url(value))
    return _Reference(_html_lang(root), _head_items(root), _locked_parts(root), urls)


def problems(rendered: str, default_html: str, rules: Rules | None = None) -> list[str]:
    """What is wrong with `rendered` (an override's output) against `default_html` (the default
    template's output for the same page and data)."""
    return problems_against(rendered, reference(default_html), rules or Rules())


def problems_against(rendered: str, ref: _Reference, rules: Rules) -> list[str]:
    root = _parse(rendered)
    found: list[str] = []

    def add(message: str) -> None:
        if message not in found:
            found.append(message)

    # The frame: language, title, the stylesheets and the <meta> elements.
    if ref.lang is not None and _html_lang(root) != ref.lang:
        add(f'The page must keep <html lang="{ref.lang}"> (extend the default page).')
    titles = [el for el, _a in _elements(root) if el.name == "title" and el.namespace == "html"]
    if len(titles) != 1 or not titles[0].to_text().strip():
        add("The page must have one non-empty <title> (extend the default page).")
    head = _head_items(root)
    if head != ref.head:
        extra = head - ref.head
        missing = ref.head - head
        for name, attrs in extra:
            add(
                f"<{name} {' '.join(f'{k}={v!r}' for k, v in attrs)}> is not allowed: "
                "<meta> and <link> come from the default page only (no refresh, no other "
                "stylesheets or icons)."
            )
        if missing:
            add(
                "The default page's <meta> and <link> elements (its stylesheets) are missing: "
                "extend the default page instead of replacing it."
            )

    # The locked parts: each exactly as the default renders it, once, and visible.
    locked_nodes = {}
    for el, ancestors in _elements(root):
        name = (el.attrs or {}).get(LOCKED)
        if name is None:
            continue
        if any((a.attrs or {}).get(LOCKED) is not None for a in ancestors):
            add(f"A locked part ({name}) cannot be placed inside another.")
            continue
        locked_nodes.setdefault(name, []).append((el, ancestors))
    for name in sorted(set(ref.locked) | set(locked_nodes)):
        what = LOCKED_NAMES.get(name, name)
        expected = ref.locked.get(name, Counter())
        got = Counter(el.to_html(pretty=False) for el, _a in locked_nodes.get(name, ()))
        if got != expected:
            if sum(got.values()) < sum(expected.values()):
                add(
                    f"The page lost {what}: keep the default's blocks that contain it "
                    f"(it cannot be replaced or left out)."
                )
            else:
                add(f"{_upper_first(what)} must appear exactly as the default page renders it.")
        for _el, ancestors in locked_nodes.get(name, ()):
            for ancestor in ancestors:
                attrs = ancestor.attrs or {}
                classes = set((attrs.get("class") or "").split())
                if (
                    ancestor.name in HIDING_ANCESTORS
                    or HIDING_ATTRIBUTES & attrs.keys()
                    or HIDING_CLASSES & classes
                ):
                    add(f"{_upper_first(what)} cannot be inside <{ancestor.name}> or hidden.")

    locked_ids = {id(el) for nodes in locked_nodes.values() for el, _a in nodes}

    def walk(node, in_locked: bool):
        for child in node.children or ():
            if child.name == "#comment" or child.name.startswith(("#", "!")):
                continue
            inside = in_locked or id(child) in locked_ids
            if not inside:
                _check_element(child, ref, rules, add)
            # A locked part equal to the default's is the default's markup: trusted as is.
            if not (id(child) in locked_ids and _same_as_default(child, ref)):
                walk(child, inside)

    walk(root, False)
    if rules.email:
        for comment in _comments(root):
            text = comment.data or ""
            if "[if" in text.lower() or "<" in text:
                add("Conditional comments and markup inside comments are not allowed in email.")
    return found


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _same_as_default(el, ref: _Reference) -> bool:
    name = (el.attrs or {}).get(LOCKED)
    return el.to_html(pretty=False) in ref.locked.get(name, ())


def _check_element(el, ref: _Reference, rules: Rules, add) -> None:
    name = el.name.lower()
    attrs = el.attrs or {}
    if el.namespace == "svg":
        if name in REFUSED_WHY or name not in SVG_ELEMENTS:
            add(f"<{el.name}> is not allowed in SVG ({REFUSED_WHY.get(name, 'not on the list')}).")
            return
        for attr, value in attrs.items():
            lowered = attr.lower()
            if lowered.startswith("on"):
                add(f"Event handlers ({attr}) are not allowed.")
            elif lowered not in SVG_ATTRIBUTES:
                add(f'The SVG attribute {attr}="…" is not allowed on <{el.name}>.')
            elif "url(" in (value or "").lower().replace(" ", ""):
                add(f"{attr} on <{el.name}> cannot reference anything (url(…)).")
        return
    if el.namespace != "html":
        add(f"<{el.name}> is not allowed ({REFUSED_WHY.get(name, 'foreign content')}).")
        return
    if name in REFUSED_WHY:
        add(f"<{name}> is not allowed: {REFUSED_WHY[name]}.")
        return
    if name in FORM_ELEMENTS:
        add(
            f"<{name}> is not allowed in an override: forms come only from the locked checkout "
            "parts (Pay, Try again, Cancel)."
        )
        return
    if name in HEAD_ELEMENTS:
        return  # compared with the default's as a whole above
    if name not in TEXT_ELEMENTS:
        add(f"<{name}> is not on the list of allowed elements.")
        return
    allowed = ELEMENT_ATTRIBUTES.get(name, frozenset())
    for attr, value in attrs.items():
        lowered = attr.lower()
        value = value or ""
        if lowered.startswith("on"):
            add(f"Event handlers ({attr} on <{name}>) are not allowed.")
            continue
        if lowered == LOCKED:
            add(f"{LOCKED} is reserved for the default page's locked parts.")
            continue
        if rules.email and lowered in EMAIL_ATTRIBUTES:
            if lowered == "style":
                _check_style(name, value, add)
            continue
        if lowered.startswith("aria-") or (lowered.startswith("data-") and lowered != LOCKED):
            continue
        if lowered not in GLOBAL_ATTRIBUTES and lowered not in allowed:
            why = " (no inline styles on pages)" if lowered == "style" else ""
            add(f'The attribute {attr}="…" is not allowed on <{name}>{why}.')
            continue
        if name == "a" and lowered == "href":
            _check_link(value, ref, rules, add)
        elif name == "img" and lowered == "src":
            _check_image(value, ref, rules, add)


def _check_style(name: str, value: str, add) -> None:
    compact = "".join(value.lower().split())
    while "/*" in compact:
        start = compact.index("/*")
        end = compact.find("*/", start + 2)
        compact = compact[:start] + (compact[end + 2 :] if end >= 0 else "")
    for token in STYLE_REFUSED:
        if token in compact:
            add(f"Inline styles on <{name}> cannot load anything or run code ({token!r}).")


def _check_link(value: str, ref: _Reference, rules: Rules, add) -> None:
    url = _clean_url(value)
    if url in ref.urls:
        return
    scheme = _scheme(url)
    if rules.email:
        if scheme == "mailto":
            return
        host = (urlsplit(url).hostname or "").lower() if scheme == "https" else None
        if scheme == "https" and host and host in rules.link_hosts:
            return
        add(
            f"The link {_quote(url)} is not allowed in an email: use https:// addresses on "
            f"{', '.join(sorted(rules.link_hosts)) or 'the brand’s hosts'}, or mailto:."
        )
        return
    if scheme is None:
        if url.startswith(("//", "/\\", "\\")):
            add(f"The link {_quote(url)} leaves the portal without a scheme: use https://.")
        return
    if scheme not in LINK_SCHEMES:
        add(f"The link {_quote(url)} is not allowed: use https:, mailto:, tel: or a path.")


def _check_image(value: str, ref: _Reference, rules: Rules, add) -> None:
    url = _clean_url(value)
    if url in ref.urls:
        return
    if rules.email:
        base = rules.public_url.rstrip("/")
        if base and any(url.startswith(f"{base}{path}") for path in ("/static/", "/brand/")):
            rest = url[len(base) :]
            if ".." not in rest and "\\" not in rest:
                return
        add(
            f"The image {_quote(url)} is not served by the portal: emails may show the brand "
            "logo and the portal's own images only."
        )
        return
    if _portal_path(url) and ".." not in url and "\\" not in url:
        return
    add(
        f"The image {_quote(url)} is not served by the portal: use the brand logo or an image "
        "under /static/."
    )


# --- languages --------------------------------------------------------------------------------

READ_ATTRIBUTES = ("alt", "title", "aria-label", "placeholder")


def _texts(html: str) -> set[str]:
    """The pieces of text a learner reads on a page: text nodes and the attributes read out
    (alt, title, aria-label), whitespace collapsed, only those with a word in them."""
    found = set()

    def walk(node):
        for child in node.children or ():
            if child.name == "#text":
                text = " ".join((child.data or "").split())
                if sum(ch.isalpha() for ch in text) >= 3:
                    found.add(text)
            elif not child.name.startswith(("#", "!")):
                if child.name in {"script", "style"}:
                    continue
                for attr in READ_ATTRIBUTES:
                    value = " ".join(((child.attrs or {}).get(attr) or "").split())
                    if sum(ch.isalpha() for ch in value) >= 3:
                        found.add(value)
                walk(child)

    walk(_parse(html))
    return found


def untranslated(rendered: str, rendered_in_source_language: str, default: str) -> list[str]:
    """Text of an override's rendering in a language that is word for word its rendering in
    the source language (English), and not in the default page's rendering in that language
    (which has the learner's own data, the brand name...): what that learner would read in
    English."""
    same = _texts(rendered) & _texts(rendered_in_source_language)
    return sorted(same - _texts(default))


# --- plain-text emails --------------------------------------------------------------------------


def _text_links(text: str) -> set[str]:
    """The web addresses a mail client would turn into links in a plain-text message."""
    found = set()
    for word in text.split():
        word = word.strip("<>()[]{}\"'.,;:!?")
        if word.lower().startswith(("http://", "https://", "www.", "//")):
            found.add(word)
    return found


def text_problems(rendered: str, default: str, rules: Rules) -> list[str]:
    """The links of a plain-text email override: each one the default message has, or https to
    the hosts an HTML email may link to."""
    problems = []
    allowed = _text_links(default)
    for link in sorted(_text_links(rendered) - allowed):
        parts = urlsplit(link)
        if parts.scheme == "https" and (parts.hostname or "").lower() in rules.link_hosts:
            continue
        problems.append(
            f"The address {_quote(link)} is not allowed in an email: use https:// addresses on "
            f"{', '.join(sorted(rules.link_hosts)) or 'the brand’s hosts'}."
        )
    return problems
