"""Athena's fusion of her two rankings: reciprocal rank fusion, BM25's votes weighed by how much of the query they hold.

BM25 ranks every section that holds any word of the query. Asked a question worded unlike its
answer (a paraphrase), it still ranks first the sections that happen to hold one of its common
words ("request", "use"), and plain reciprocal rank fusion lets those push the embeddings' answer
out of the top five. So each of BM25's votes counts by the section's coverage of the query: the
share of the query's words, each weighed by its inverse document frequency, that the section
holds (a word no section holds weighs the most, as the rarest). A section holding the rare words
of a question keeps its whole vote; one that shares a single common word with a paraphrase
keeps almost none, and the embeddings decide. ``benchmarks/retrieval.py`` measures it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence, Set

__all__ = ["COVERAGE_POWER", "RRF_K", "coverage", "fuse"]

#: Reciprocal rank fusion's constant: a section's fused score is the sum over the rankings of
#: weight / (RRF_K + its rank). Cormack, Clarke and Buettcher (SIGIR 2009) fused lists 1,000 deep
#: with 60; lists 20 deep at the same ratio give about 1. With 60 here the curve is nearly flat:
#: any section both lists place in their middle outranks one that a single method ranks first.
#: With 1, a first place weighs as much as two third places.
RRF_K = 1
#: BM25's vote for a section is multiplied by its coverage of the query to this power. Chosen on
#: the benchmark's tuning half: 0.5 to 6 put the same questions in the top five there; 3 gave
#: the best mean reciprocal rank (ties broken towards the smaller power).
COVERAGE_POWER = 3.0


def fuse(
    rankings: Iterable[Sequence[int]],
    constant: float = RRF_K,
    weights: Sequence[Mapping[int, float] | None] = (),
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of rankings (ids, best first): (id, score), best first, ties by id.

    ``weights[i]``, when given, maps an id of ranking ``i`` to the weight of that ranking's vote
    for it (an id it leaves out: 1).
    """
    scores: dict[int, float] = {}
    for position, ranking in enumerate(rankings):
        weight = weights[position] if position < len(weights) else None
        for rank, item in enumerate(ranking, start=1):
            vote = 1.0 if weight is None else weight.get(item, 1.0)
            scores[item] = scores.get(item, 0.0) + vote / (constant + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


def coverage(
    holders: Mapping[str, Set[int]], sections: int, among: Iterable[int], power: float = COVERAGE_POWER
) -> dict[int, float]:
    """Each section of ``among``: its share of the query's words, weighed by their rarity, to ``power``.

    ``holders`` maps each word of the query to every section that holds it (its document
    frequency is their number), ``sections`` is how many the corpus has. A word's weight is its
    inverse document frequency, ln((sections + 1) / (holders + 0.5)): positive even for a word
    every section holds, largest for one none holds.
    """
    weight = {word: math.log((sections + 1) / (len(found) + 0.5)) for word, found in holders.items()}
    total = sum(weight.values())
    if total <= 0:
        return {}
    return {
        section: (sum(w for word, w in weight.items() if section in holders[word]) / total) ** power
        for section in among
    }
