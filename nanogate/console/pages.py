"""The console's HTML shells, filled from the templates beside this file."""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from string import Template

from nanogate import __version__
from nanogate.console.money import Money

# Path segment -> title, in the navigation's order.
PAGES = {
    "overview": "Overview",
    "keys": "Accounts & keys",
    "usage": "Usage",
    "tasks": "Tasks",
    "upstreams": "Upstreams",
    "playground": "Playground",
}


@cache
def _template(name: str) -> Template:
    text = (resources.files("nanogate.console") / "templates" / name).read_text("utf-8")
    return Template(text)


def render(page: str, csrf_token: str, key_prefix: str, money: Money) -> str:
    current = ' aria-current="page"'
    nav = "".join(
        f'<li><a href="/console/{slug}"{current if slug == page else ""}>{escape(title)}</a></li>'
        for slug, title in PAGES.items()
    )
    rate = escape(f"{money.credits_per_unit:,} credits = {money.format(money.credits_per_unit)}")
    return _template("layout.html").substitute(
        title=escape(PAGES[page]),
        page=page,
        csrf=escape(csrf_token),
        key_prefix=escape(key_prefix),
        nav=nav,
        main=_template(f"{page}.html").substitute(rate=rate),
        version=__version__,
        money_prefix=escape(money.prefix),
        credits_per_unit=money.credits_per_unit,
        rate=rate,
    )


def login() -> str:
    return _template("login.html").substitute(version=__version__)
