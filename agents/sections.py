"""Splits a Markdown document into its title and sections, one per ``##`` or ``###`` heading.

Athena indexes sections rather than whole files: an answer is usually a few paragraphs under one
heading, and a section is what a citation can point at (``file#slug``, GitHub's anchor). Headings
inside fenced code blocks (a TOML comment, a shell prompt) are text, not headings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Section", "clip", "slugify", "split_markdown"]

#: An ATX heading: up to three spaces, 1 to 6 ``#``, a space, the text, optional closing ``#``s.
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
#: What GitHub keeps of a heading in its anchor: letters, digits, ``_``, ``-`` and spaces (then ``-``).
_NOT_IN_SLUG = re.compile(r"[^\w\- ]", re.UNICODE)
_SPACES = re.compile(r"[^\S\n]+")
# Lines stay lines (a list item, a code fence, a table row), so a writer can tell prose from the rest.
_BLANKS = re.compile(r"\s*\n\s*")
#: Headings deeper than this stay inside the section above them.
SECTION_DEPTH = 3
INTRODUCTION = "Introduction"


@dataclass(frozen=True, slots=True)
class Section:
    """One section: its anchor, its heading, and its text, each line's whitespace runs made single spaces."""

    slug: str
    heading: str
    text: str


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: ``The [mesh] table`` -> ``the-mesh-table``."""
    plain = heading.replace("`", "").strip().lower()
    return _NOT_IN_SLUG.sub("", plain).replace(" ", "-") or "section"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with ``…`` when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def _squeeze(lines: list[str]) -> str:
    return _BLANKS.sub("\n", _SPACES.sub(" ", "\n".join(lines))).strip()


def split_markdown(text: str, fallback_title: str) -> tuple[str, list[Section]]:
    """The document's title (its first ``#`` heading, else ``fallback_title``) and its non-empty sections.

    The text before the first section heading is the section ``Introduction``, anchored at the
    title's slug (where GitHub puts the text under the title). Repeated slugs get ``-1``, ``-2``.
    """
    title: str | None = None
    parts: list[tuple[str | None, list[str]]] = [(None, [])]  # (heading, lines); None: the introduction
    fence: str | None = None
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            parts[-1][1].append(line)
            continue
        if opened:
            fence = opened.group(1)
            parts[-1][1].append(line)
            continue
        found = _HEADING.match(line)
        if found and len(found.group(1)) == 1 and title is None:
            title = found.group(2).strip() or None
        elif found and len(found.group(1)) <= SECTION_DEPTH:
            parts.append((found.group(2).strip(), []))
        else:
            parts[-1][1].append(line)
    title = title or fallback_title
    seen: dict[str, int] = {}
    sections = []
    for heading, lines in parts:
        base = slugify(heading if heading is not None else title)
        count = seen.get(base, 0)
        seen[base] = count + 1  # counted for every heading, as GitHub counts its anchors
        body = _squeeze(lines)
        if not body:
            continue  # a heading with a sub-heading right under it, or no introduction
        slug = base if count == 0 else f"{base}-{count}"
        sections.append(Section(slug, heading if heading is not None else INTRODUCTION, body))
    return title, sections
