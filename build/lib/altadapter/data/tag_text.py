"""The one tag normaliser: how a caption or a prompt splits into danbooru-style tags.

The dataset tools (`altadapter.data.tags`) and the vocab adapter's prompt matching (`altadapter.encoding`)
both read tags through these two functions, so a tag the converter wrote is the tag a prompt matches.
"""

from __future__ import annotations

import re

# The write-up's prompts mix ASCII `,` and full-width `，`; one-tag-per-line files separate by newlines.
SEPARATORS = re.compile(r"[,，\r\n]")
# Danbooru keeps underscores inside these emoticon tags; turning them into spaces would change their meaning.
KAOMOJI = frozenset(
    {"^_^", "o_o", "0_0", "x_x", "u_u", "=_=", ">_<", "@_@", "+_+", "+_-", "._.", "3_3", "6_9", ">_o", "|_|"}
)


def normalise_tag(raw: str, *, underscores_to_spaces: bool = False) -> str:
    """One tag as written between separators: BOM dropped, whitespace runs collapsed (and `_` to spaces)."""
    tag = " ".join(raw.replace("\ufeff", "").split())
    if underscores_to_spaces and tag not in KAOMOJI:
        tag = " ".join(tag.replace("_", " ").split())
    return tag


def tag_spans(text: str, *, underscores_to_spaces: bool = False) -> list[tuple[int, int, str]]:
    """(start, end, tag) of every non-empty tag of `text`, repeats kept; [start, end) spans the whole
    stretch between two separators, surrounding whitespace included."""
    spans = []
    start = 0
    for end, next_start in [(m.start(), m.end()) for m in SEPARATORS.finditer(text)] + [(len(text), 0)]:
        tag = normalise_tag(text[start:end], underscores_to_spaces=underscores_to_spaces)
        if tag:
            spans.append((start, end, tag))
        start = next_start
    return spans
