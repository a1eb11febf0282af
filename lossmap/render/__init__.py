"""Renderers read an `Analysis` and never call Keras."""
import os

import jinja2

TEMPLATE_DIRS = [
    os.path.join(os.path.dirname(os.path.dirname(__file__)), "templates"),  # installed wheel
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "templates"),  # source tree
]


def environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([d for d in TEMPLATE_DIRS if os.path.isdir(d)]),
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = format_number
    return env


def template_source(name: str) -> str:
    """A file from the templates directory as it is (a stylesheet, say), found as templates are."""
    env = environment(autoescape=False)
    return env.loader.get_source(env, name)[0]


def format_number(value, digits=6):
    if value is None:
        return "n/a"
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1e5 or mag < 1e-4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def anchor_id(prefix: str, key: str) -> str:
    """A stable, HTML-safe fragment id for a term, a layer or a source step.

    Hostile names (quotes, angle brackets, spaces) cannot break out of an
    attribute: everything outside [A-Za-z0-9_-] is hex-escaped.
    """
    safe = "".join(c if c.isalnum() and c.isascii() or c in "-_" else f".{ord(c):x}" for c in key)
    return f"{prefix}-{safe}"
