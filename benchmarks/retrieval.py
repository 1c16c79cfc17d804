"""Athena's retrieval: recall@5 and MRR of BM25 alone, embeddings alone and the hybrid, over the shipped corpus.

40 questions, each with the section (``file#slug``) of ``corpus/`` that answers it; 14 of them
are paraphrases that share no content word with their answer, checked here (lowercased, stop
words removed, and again through FTS5's Porter stemmer, so ``retries`` and ``retry`` count as
one word): a question that breaks this stops the run. The index is built over the corpus's own
documents (not the README and architecture notes it links in, whose sections change with the
code; a second table shows the figures with them as distractors). Also printed: the build time
and ``retrieve_context``'s latency through a real in-process server. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agents.athena import DEFAULT_CORPUS, Athena
from agents.embeddings import Embedder, load_embedder
from agents.knowledge_index import CANDIDATES, RRF_K, KnowledgeIndex, Method, SyncReport, match_expression
from agents.sections import split_markdown
from agents.words import content_words
from kosmos_grpc import AgentServer, ServerSettings

from . import harness
from .harness import mark, sized

K = 5
#: Ranks past this count 0 in the mean reciprocal rank.
MRR_DEPTH = 10
METHODS: tuple[Method, ...] = ("bm25", "embeddings", "hybrid")
CALLS = sized(400, 60)


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    source: str
    paraphrase: bool = False


def tuning(position: int) -> bool:
    """Whether the question at ``position`` (from 0, in QUESTIONS) is in the tuning half: the even ones.

    Fixed before any parameter of the retriever was chosen: every parameter is chosen on the tuning
    half (20 questions, 7 of them paraphrases); the odd half (the other 20, 7 paraphrases) is
    held out, to show whether what was chosen carries over to questions it was not chosen on.
    """
    return position % 2 == 0


def q(text: str, source: str) -> Question:
    return Question(text, source)


def p(text: str, source: str) -> Question:
    """A paraphrase: it shares no content word with its answer."""
    return Question(text, source, paraphrase=True)


QUESTIONS = (
    q("What are the three methods of kosmos.v1.AgentService?", "overview.md#what-kosmos-is"),
    q("Which agent sends notifications by email?", "overview.md#the-seven-agents"),
    q("What is the default ttl_ms when it is zero?", "envelope.md#urgency-fields-priority-and-ttl_ms"),
    q("How many values may a payload hold by default?", "envelope.md#the-payload"),
    q("What happens when grpcurl leaves the message_id empty?", "envelope.md#identity-fields-message_id-and-timestamp"),
    q("How does a child call inherit the deadline through ctx.client?", "deadlines.md#deadlines-across-hops"),
    q("What is attempt_timeout_seconds for?", "deadlines.md#attempt-timeouts"),
    q("Which pattern does Zeus use for his status action?", "patterns.md#parallel"),
    q("In what order are compensations run when a saga step fails?", "patterns.md#saga-with-compensation"),
    q("What does scatter-gather return when some agents fail?", "patterns.md#scatter-gather"),
    q("Which status codes are retried?", "resilience.md#retries"),
    q("How long does a circuit stay open before a half-open probe?", "resilience.md#circuit-breakers"),
    q("Which agent is the fallback for Apollo?", "resilience.md#fallbacks"),
    q("What does the > wildcard match in a subject pattern?", "events.md#wildcards-in-patterns"),
    q("How do queue groups share events between subscribers?", "events.md#queue-groups"),
    q("On which subject is the outcome of a delegation announced?", "events.md#subjects-and-their-hierarchy"),
    q("What happens to events published while the embedded broker restarts?", "events.md#the-embedded-broker"),
    q("Which reflection version does grpcurl ask for?", "health.md#server-reflection"),
    q("What does Health/Watch send when the status changes?", "health.md#the-grpchealthv1-protocol"),
    q("What labels does agent_delegation_total have?", "observability.md#prometheus-metrics"),
    q("What does the kosmos_circuit_state gauge value 2 mean?", "observability.md#other-series-worth-watching"),
    q("What does the final marker of a stream mean?", "streaming.md#chunks-and-the-final-marker"),
    q("Where does Athena keep her index under state_dir?", "configuration.md#the-mesh-table"),
    q("Which keys go in [agents.athena.settings]?", "configuration.md#agent-settings"),
    q("What are the restart backoff delays of kosmos up?", "operations.md#restarts-and-crash-loops"),
    q("How does kosmos call print its result?", "operations.md#calling-agents-from-the-shell"),
    p("After repeated errors, does my client give up contacting a peer temporarily?", "resilience.md#circuit-breakers"),
    p("What occurs if a request expires before it gets processed?", "deadlines.md#what-happens-when-time-runs-out"),
    p("How can I roll back earlier work once a later stage breaks?", "patterns.md#saga-with-compensation"),
    p(
        "Can a pool of consumers divide incoming notifications so each is processed by a single one?",
        "events.md#queue-groups",
    ),
    p(
        "How can I see the path a request takes between services, hop after hop?",
        "observability.md#traces-with-opentelemetry",
    ),
    p(
        "Could a newly launched process receive requests before its initialisation completes?",
        "health.md#the-life-cycle-seen-through-health",
    ),
    p("What becomes of output the receiving side won't absorb?", "streaming.md#slow-readers-and-limits"),
    p("Which setup document gets picked if I don't pass one explicitly?", "configuration.md#finding-the-file"),
    p("What is the right way to shut down everything without leaving orphans?", "operations.md#stopping-cleanly"),
    p("Which member drafts prose, and which takes care of the archive?", "overview.md#the-seven-agents"),
    p("Can I use it on an air-gapped computer?", "faq.md#does-kosmos-need-internet-access"),
    p("Is there a key grouping all traffic of a job?", "envelope.md#tracking-fields-correlation_id-and-trace_id"),
    p(
        "If an intermediary just forwards someone else's breakdown, whose fault is recorded?",
        "resilience.md#blame-and-origin",
    ),
    p("Can tools discover an endpoint's interface without local definitions?", "health.md#server-reflection"),
)


def own_documents(folder: Path, into: Path) -> Path:
    """A copy of the corpus's own documents (its symlinks to the project's docs left out)."""
    into.mkdir()
    for path in sorted(folder.glob("*.md")):
        if not path.is_symlink():
            shutil.copy2(path, into / path.name)
    return into


def section_texts(folder: Path) -> dict[str, tuple[str, str, str]]:
    """``file#slug`` -> (document title, heading, text) of every section of the folder's documents."""
    found = {}
    for path in sorted(folder.glob("*.md")):
        title, sections = split_markdown(path.read_text(encoding="utf-8"), path.stem)
        for section in sections:
            found[f"{path.name}#{section.slug}"] = (title, section.heading, section.text)
    return found


def check_questions(sections: dict[str, tuple[str, str, str]]) -> None:
    """Stop the run unless each source exists, and each paraphrase shares no word (nor stem) with its answer."""
    problems = []
    if len(QUESTIONS) < 30:
        problems.append(f"{len(QUESTIONS)} questions, fewer than 30")
    paraphrases = [question for question in QUESTIONS if question.paraphrase]
    if 3 * len(paraphrases) < len(QUESTIONS):
        problems.append(f"{len(paraphrases)} paraphrases of {len(QUESTIONS)} questions: fewer than a third")
    stems = sqlite3.connect(":memory:")
    stems.execute("CREATE VIRTUAL TABLE t USING fts5 (title, heading, body, tokenize = 'porter unicode61')")
    for question in QUESTIONS:
        if question.source not in sections:
            problems.append(f"{question.source}: no such section (for {question.text!r})")
            continue
        if not question.paraphrase:
            continue
        answer = " ".join(sections[question.source])
        shared = set(content_words(question.text)) & set(content_words(answer))
        if shared:
            problems.append(f"paraphrase {question.text!r} shares {sorted(shared)} with {question.source}")
        stems.execute("DELETE FROM t")
        stems.execute("INSERT INTO t VALUES (?, ?, ?)", sections[question.source])
        expression = match_expression(question.text)
        if expression and stems.execute("SELECT count(*) FROM t WHERE t MATCH ?", (expression,)).fetchone()[0]:
            problems.append(f"paraphrase {question.text!r} shares a stemmed word with {question.source}")
    if problems:
        print("benchmarks.retrieval: the question set breaks its rules:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(2)


@dataclass(frozen=True, slots=True)
class Scores:
    recall: float
    mrr: float
    recall_lexical: float
    recall_paraphrase: float


def evaluate(index: KnowledgeIndex, method: Method) -> Scores:
    """Recall@K and MRR@MRR_DEPTH of ``method`` over every question, and recall@K of each kind."""
    hits: dict[bool, list[bool]] = {False: [], True: []}
    reciprocal = []
    for question in QUESTIONS:
        ranked = [document.source for document in index.retrieve(question.text, MRR_DEPTH, method)]
        rank = ranked.index(question.source) + 1 if question.source in ranked else None
        hits[question.paraphrase].append(rank is not None and rank <= K)
        reciprocal.append(1 / rank if rank else 0.0)
    every = hits[False] + hits[True]
    return Scores(
        sum(every) / len(every),
        statistics.mean(reciprocal),
        sum(hits[False]) / len(hits[False]),
        sum(hits[True]) / len(hits[True]),
    )


def table(index: KnowledgeIndex, heading: str) -> dict[Method, Scores]:
    """Print each method's scores under ``heading``; return them."""
    lexical = sum(not question.paraphrase for question in QUESTIONS)
    print(f"\n{heading}")
    print(f"  {'method':<12} {'recall@5':>9} {'MRR@10':>8} {f'recall@5, {lexical} worded':>22} {'paraphrases':>12}")
    scores = {method: evaluate(index, method) for method in METHODS}
    for method, s in scores.items():
        print(f"  {method:<12} {s.recall:>9.3f} {s.mrr:>8.3f} {s.recall_lexical:>22.3f} {s.recall_paraphrase:>12.3f}")
    return scores


def ceiling(index: KnowledgeIndex) -> float:
    """The share of questions whose answer is in BM25's top K or the embeddings' top K."""
    found = 0
    for question in QUESTIONS:
        tops = (index.retrieve(question.text, K, method) for method in ("bm25", "embeddings"))
        found += any(question.source in {document.source for document in top} for top in tops)
    return found / len(QUESTIONS)


def constants(index: KnowledgeIndex) -> None:
    """The hybrid's recall@5 and MRR with other constants of reciprocal rank fusion, to show the choice."""
    shipped = index.rrf_constant
    shown = []
    for constant in (0, 1, 5, 20, 60):
        index.rrf_constant = constant
        s = evaluate(index, "hybrid")
        shown.append(f"{constant:g}{'*' if constant == shipped else ''}: {s.recall:.3f} / {s.mrr:.3f}")
    index.rrf_constant = shipped
    print("  hybrid recall@5 / MRR by RRF constant (* shipped):", ", ".join(shown))


async def latency(corpus: Path, state: Path, samples: list[float]) -> None:
    """Milliseconds of each of CALLS ``retrieve_context`` calls through a real server, one at a time."""
    server = AgentServer(
        Athena(), ServerSettings(grace_seconds=1), agent_settings={"corpus": str(corpus)}, state_dir=state
    )
    await server.start()
    try:
        for i in range(CALLS):
            question = QUESTIONS[i % len(QUESTIONS)].text
            started = time.perf_counter()
            await server.coordinator.delegate("athena", "retrieve_context", {"query": question})
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        await server.stop(0)


def build(embedder: Embedder, corpus: Path, database: Path) -> tuple[KnowledgeIndex, SyncReport]:
    """The index of ``corpus``, built from nothing, then opened again: says how long each took."""
    began = time.perf_counter()
    index = KnowledgeIndex(database, corpus, embedder, "wordllama")
    built = index.sync()
    build_seconds = time.perf_counter() - began
    began = time.perf_counter()
    again = KnowledgeIndex(database, corpus, embedder, "wordllama")
    reopened = again.sync()
    reopen_ms = (time.perf_counter() - began) * 1000
    again.close()
    print(
        f"  index of {built.files} documents, {built.sections} sections: built in {build_seconds:.2f} s, "
        f"opened again in {reopen_ms:.1f} ms ({reopened.embedded} sections embedded again)"
    )
    return index, built


def verdict(index: KnowledgeIndex, scores: dict[Method, Scores]) -> None:
    """The target, and what bounds it."""
    print(f"  the answer in BM25's top 5 or the embeddings' top 5: {ceiling(index):.3f} (what fusing them can reach)")
    constants(index)
    hybrid = scores["hybrid"].recall
    best_other = max(scores["bm25"].recall, scores["embeddings"].recall)
    print(f"  target: hybrid recall@5 >= 0.9: {mark(hybrid >= 0.9)}; above both others: {mark(hybrid > best_other)}")


def main() -> None:
    check_questions(section_texts(DEFAULT_CORPUS))
    paraphrases = sum(question.paraphrase for question in QUESTIONS)
    print(f"Athena's retrieval: {len(QUESTIONS)} questions ({paraphrases} paraphrases sharing no content word)")
    print(f"  hybrid: BM25 and embedding candidates ({CANDIDATES} each), reciprocal rank fusion, constant {RRF_K}")
    began = time.perf_counter()
    embedder = load_embedder()
    print(f"  embedder (WordLlama) loaded in {time.perf_counter() - began:.2f} s")
    with tempfile.TemporaryDirectory(prefix="kosmos-retrieval-") as scratch:
        work = Path(scratch)
        own = own_documents(DEFAULT_CORPUS, (work / "own").resolve())
        index, built = build(embedder, own, work / "own.sqlite3")
        try:
            scores = table(index, f"the corpus's own {built.files} documents ({built.sections} sections)")
            verdict(index, scores)
        finally:
            index.close()
        shipped = KnowledgeIndex(work / "all.sqlite3", DEFAULT_CORPUS, embedder, "wordllama")
        try:
            report = shipped.sync()
            table(
                shipped,
                f"with the README and architecture notes too ({report.files} documents, {report.sections} sections)",
            )
        finally:
            shipped.close()
        samples: list[float] = []
        harness.run(latency(own, work / "athena", samples))
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"\nretrieve_context through an in-process server, {CALLS} calls one at a time:")
    print(f"  p50 {statistics.median(samples):.2f} ms, p99 {p99:.2f} ms")


def cli() -> None:
    """No options but ``--quick``: fewer calls timed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="time 60 calls, not 400 (also KOSMOS_BENCH_QUICK=1)")
    parser.parse_args()
    main()


if __name__ == "__main__":
    harness.main(cli, "benchmarks.retrieval")
