"""The words of a text as Athena's lexical search sees them: lowercased letter-and-digit runs, and English stop words.

The same split as SQLite FTS5's ``unicode61`` tokenizer (``_`` and punctuation separate words),
so a query's words are the tokens its full-text index holds.
"""

from __future__ import annotations

import re

__all__ = ["STOP_WORDS", "content_words", "words"]

_WORD = re.compile(r"[^\W_]+")

_STOP_WORDS = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can cannot could did do does doing down during each else
    ever every few for from further get gets got had has have having he her here hers herself
    him himself his how i if in into is it its itself just let lets me might more most much must
    my myself no nor not now of off on once one only or other ought our ours ourselves out over
    own per same shall she should so some such than that the their theirs them themselves then
    there these they this those through thus to too under until up upon us very via was we were
    what when where whether which while who whom whose why will with within without would yet
    you your yours yourself yourselves
"""
#: Contractions, written whole: split as any text is, they give their parts (``isn``, ``t``, ``ll``).
_CONTRACTIONS = """
    aren't couldn't didn't doesn't don't hadn't hasn't haven't isn't it's i'd i'll i'm mustn't
    shan't shouldn't they're we've wasn't weren't won't wouldn't
"""


def words(text: str) -> list[str]:
    """Every word of ``text``, lowercased, in order."""
    return [word.lower() for word in _WORD.findall(text)]


#: Words too common to say what a question is about (question words and auxiliaries included).
STOP_WORDS = frozenset(words(_STOP_WORDS) + words(_CONTRACTIONS))


def content_words(text: str) -> list[str]:
    """The words of ``text`` that are not stop words, in order, each once."""
    return list(dict.fromkeys(word for word in words(text) if word not in STOP_WORDS))
