"""The extractive composer: the context's sentences most relevant to the instructions, ordered and cited.

Offline and deterministic: the documents' snippets are cut into sentences, each scored by the
cosine similarity of its embedding to the instructions', the best kept (near-duplicates of a
better one dropped), then put back in the order the retriever ranked their documents and, within
a document, the order they were written in, so the text reads as its sources do rather than
jumping between them. Each sentence cites its source as ``[n]``, numbered by first use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.embeddings import cosine

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from agents.embeddings import Embedder

__all__ = [
    "DUPLICATE_COSINE",
    "MIN_RELEVANCE",
    "Composition",
    "Sentence",
    "compose",
    "no_sources",
    "numbered_sources",
    "sentences_of",
]

#: Two sentences this similar say the same thing: the lesser is dropped. WordLlama puts a
#: rewording of a sentence at 0.83 to 0.92 and distinct sentences on one subject at 0.6 at most.
DUPLICATE_COSINE = 0.8
#: Below this a sentence is unrelated to the instructions (WordLlama: -0.1 to 0.1 for unrelated
#: text), and is not written even when nothing better is given.
MIN_RELEVANCE = 0.1
#: Fewer words than this is a label or a heading, not a sentence worth quoting.
MIN_WORDS = 3
#: A sentence fewer of whose tokens than this are words is code or a command line, not prose.
MIN_WORD_SHARE = 0.6

# A sentence ends at . ! or ? (closing quotes or brackets included) before a space and a capital,
# digit, quote or bracket: "e.g. the" does not end one, nor does "3.5".
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[A-Z0-9\"'(\[`])")
_LIST_MARK = re.compile(r"^(?:[-*+]|\d{1,3}[.)])\s+")
# A word as prose has it: letters (an apostrophe or hyphen inside), maybe a number, in quotes,
# brackets or backticks, before its punctuation. Not `f(x)`, `a=b` or `{"k": 1}`.
_WORD = re.compile(r"[(\"'`\u201c]*(?:[A-Za-z][\w'\u2019-]*|\d[\d.,%]*)[)\"'`\u201d,.;:!?]*")
_ELLIPSIS = ("...", "\u2026")
_HIGHLIGHT = "**"


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence of the context: its document's rank, its place in that document, its text."""

    document: int
    position: int
    text: str


@dataclass(frozen=True, slots=True)
class Composition:
    """What the composer wrote: the pieces of the text in order (the stream's chunks), and its citations."""

    pieces: list[str]
    citations: list[dict[str, Any]]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def no_sources(note: str | None = None) -> Composition:
    """The honest answer to instructions that came with no document to write from."""
    why = f" ({note.strip()[:300]})" if note and note.strip() else ""
    text = (
        f"No sources were given{why}, so there is nothing to write from: Dionysus writes only from the context given."
    )
    return Composition([text], [])


def numbered_sources(documents: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """Each document's citation number (its source's, numbered by first appearance), and the citations."""
    numbers: dict[str, int] = {}
    citations: list[dict[str, Any]] = []
    of_document = []
    for document in documents:
        source = str(document["source"])
        if source not in numbers:
            numbers[source] = len(numbers) + 1
            title = str(document.get("title") or source)
            citations.append({"index": numbers[source], "source": source, "title": title})
        of_document.append(numbers[source])
    return of_document, citations


def sentences_of(snippet: str) -> Iterator[str]:
    """The sentences of a snippet: highlight marks gone, headings, code, tables and cut-off fragments left out."""
    text = snippet.replace(_HIGHLIGHT, "")
    for block in _blocks(text):
        pieces = _SENTENCE_END.split(block)
        for piece in pieces:
            sentence = piece.strip()
            if sentence.startswith(_ELLIPSIS):  # the snippet starts inside a sentence: whole only if a capital follows
                sentence = sentence.lstrip(".\u2026 ")
                if not sentence[:1].isupper():
                    continue
            if sentence.endswith(_ELLIPSIS):  # the snippet was cut inside it
                continue
            words = sentence.split()
            if len(words) < MIN_WORDS or sentence.endswith(":"):  # too short, or the lead-in to a list or code
                continue
            if sum(1 for word in words if _WORD.fullmatch(word)) < MIN_WORD_SHARE * len(words):
                continue
            if sentence[-1].isalnum() or sentence[-1] in "`)*_":
                sentence += "."  # a list item or a line without its full stop
            yield sentence


def _blocks(text: str) -> Iterator[str]:
    """Markdown prose as blocks of joined lines: a paragraph or a list item each; headings, code and tables dropped."""
    lines: list[str] = []
    fenced = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            fenced = not fenced
            line = ""
        if fenced or line.startswith(("#", "|", ">")) or not line:
            if lines:
                yield " ".join(lines)
            lines = []
            continue
        if _LIST_MARK.match(line):
            if lines:
                yield " ".join(lines)
            lines = [_LIST_MARK.sub("", line)]
            continue
        lines.append(line)
    if lines:
        yield " ".join(lines)


def compose(
    instructions: str,
    documents: Sequence[Mapping[str, Any]],
    max_sentences: int,
    embedder: Embedder,
    *,
    note: str | None = None,
) -> Composition:
    """Up to ``max_sentences`` of the documents' sentences, the most relevant to ``instructions``, cited.

    Blocking (it embeds every sentence): run it in a thread.
    """
    if not documents:
        return no_sources(note)
    sentences = [
        Sentence(rank, position, text)
        for rank, document in enumerate(documents)
        for position, text in enumerate(sentences_of(str(document.get("snippet", ""))))
    ]
    if not sentences:
        return Composition([f"The {_count(len(documents), 'source')} given hold no sentence to quote."], [])
    rows = embedder.embed([instructions, *(s.text for s in sentences)])
    query, vectors = rows[0], rows[1:]
    scores = cosine(query, vectors)
    chosen = _pick(scores, vectors, max_sentences)
    if not chosen:
        return Composition(
            [f"None of the {_count(len(documents), 'source')} given says anything close to these instructions."], []
        )
    # Back in the order of the sources: by the retriever's rank, then as each document has them.
    chosen.sort(key=lambda i: (sentences[i].document, sentences[i].position))
    return _render([sentences[i] for i in chosen], documents)


def _pick(scores: np.ndarray[Any, Any], vectors: np.ndarray[Any, Any], limit: int) -> list[int]:
    """The indexes of the best sentences, best first, skipping any too close to one already kept.

    Ties are broken by the sentences' order (a stable sort), so the same input picks the same.
    """
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for index in order.tolist():
        if len(kept) == limit or scores[index] < MIN_RELEVANCE:
            break
        if kept and float(np.max(vectors[kept] @ vectors[index])) > DUPLICATE_COSINE:
            continue
        kept.append(index)
    return kept


def _render(chosen: list[Sentence], documents: Sequence[Mapping[str, Any]]) -> Composition:
    """The sentences as pieces of text, each citing its source, a paragraph per document; the citations used."""
    of_document, every = numbered_sources(documents)
    renumbered: dict[int, int] = {}  # a source's number among all given -> its number by first use here
    pieces: list[str] = []
    for index, sentence in enumerate(chosen):
        number = renumbered.setdefault(of_document[sentence.document], len(renumbered) + 1)
        if index:  # a sentence of the same document goes on its paragraph; another's starts one
            pieces.append(
                (" " if sentence.document == chosen[index - 1].document else "\n\n") + _cited(sentence.text, number)
            )
        else:
            pieces.append(_cited(sentence.text, number))
    citations = [{**every[given - 1], "index": number} for given, number in renumbered.items()]
    return Composition(pieces, citations)


def _cited(sentence: str, number: int) -> str:
    """``sentence`` with ``[number]`` before its closing punctuation, where a reader looks for it."""
    if sentence[-1] in ".!?":
        return f"{sentence[:-1]} [{number}]{sentence[-1]}"
    return f"{sentence} [{number}]"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
