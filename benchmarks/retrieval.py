"""Athena's retrieval: recall@5 and MRR of BM25 alone, embeddings alone and the hybrid, over the shipped corpus.

40 questions, each with the section (``file#slug``) of ``corpus/`` that answers it; 14 of them
are paraphrases that share no content word with their answer, checked here (lowercased, stop
words removed, and again through FTS5's Porter stemmer, so ``retries`` and ``retry`` count as
one word): a question that breaks this stops the run. The index is built over the corpus's own
documents (not the README and architecture notes it links in, whose sections change with the
code; a second table shows the figures with them as distractors). The questions are split in two
halves fixed before any parameter was chosen (:func:`tuning`: even positions tune, odd ones are
held out); each method is scored on both and on all. Also printed: where the embeddings and the
hybrid rank each paraphrase's answer, the hybrid's figures with other fusion parameters on the
tuning half, the build time, and ``retrieve``'s latency in-process and through a real in-process
server. When the optional MiniLM embedder (:mod:`agents.minilm`) is installed, the own documents'
table, the target and the costs again with it: the same questions, halves and fusion constants
(chosen with WordLlama, not tuned again). Run with ``make bench``.
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
from agents.fusion import COVERAGE_POWER, RRF_K
from agents.knowledge_index import CANDIDATES, KnowledgeIndex, Method, SyncReport, match_expression
from agents.sections import clip, split_markdown
from agents.words import content_words
from kosmos_grpc import AgentServer, ConfigError, ServerSettings

from . import harness
from .harness import mark, sized

K = 5
#: Ranks past this count 0 in the mean reciprocal rank.
MRR_DEPTH = 10
#: How deep the paraphrases' answers are looked for, to show how far each one is.
DEEP = 50
METHODS: tuple[Method, ...] = ("bm25", "embeddings", "hybrid")
CALLS = sized(400, 60)
#: The optional embedder compared with the default, WordLlama (its package installed with --no-deps).
MINILM = "agents.minilm:minilm"


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


#: The questions (positions in QUESTIONS) of each half, and all of them.
HALVES = {
    "tuning": [i for i in range(len(QUESTIONS)) if tuning(i)],
    "held-out": [i for i in range(len(QUESTIONS)) if not tuning(i)],
    "all": list(range(len(QUESTIONS))),
}
WORDED = [i for i, question in enumerate(QUESTIONS) if not question.paraphrase]
PARAPHRASES = [i for i, question in enumerate(QUESTIONS) if question.paraphrase]


def ranks(index: KnowledgeIndex, method: Method, depth: int = MRR_DEPTH) -> list[int | None]:
    """Where ``method`` ranks each question's answer (from 1), None past ``depth``."""
    found: list[int | None] = []
    for question in QUESTIONS:
        ranked = [document.source for document in index.retrieve(question.text, depth, method)]
        found.append(ranked.index(question.source) + 1 if question.source in ranked else None)
    return found


def score(found: list[int | None], positions: list[int]) -> Scores:
    """Recall@K and MRR@MRR_DEPTH over the questions at ``positions``."""
    chosen = [found[i] for i in positions]
    return Scores(
        sum(rank is not None and rank <= K for rank in chosen) / len(chosen),
        statistics.mean(1 / rank if rank else 0.0 for rank in chosen),
    )


def table(index: KnowledgeIndex, heading: str) -> dict[Method, list[int | None]]:
    """Print each method's recall@5 / MRR on each half and on all, and recall@5 of each kind; return the ranks."""
    print(f"\n{heading}")
    halves = "".join(f"{f'{name} ({len(at)})':>17}" for name, at in HALVES.items())
    print(f"  {'method':<11}{halves}  recall@5: {len(WORDED)} worded, {len(PARAPHRASES)} paraphrases")
    found = {method: ranks(index, method) for method in METHODS}
    for method, got in found.items():
        cells = "".join(f"{f'{s.recall:.3f} / {s.mrr:.3f}':>17}" for s in (score(got, at) for at in HALVES.values()))
        kinds = (score(got, WORDED).recall, score(got, PARAPHRASES).recall)
        print(f"  {method:<11}{cells}  {kinds[0]:>17.3f} {kinds[1]:>12.3f}")
    return found


def ceiling(index: KnowledgeIndex) -> float:
    """The share of questions whose answer is in BM25's top K or the embeddings' top K."""
    found = 0
    for question in QUESTIONS:
        tops = (index.retrieve(question.text, K, method) for method in ("bm25", "embeddings"))
        found += any(question.source in {document.source for document in top} for top in tops)
    return found / len(QUESTIONS)


def constants(index: KnowledgeIndex) -> None:
    """The hybrid on the tuning half with other fusion constants and coverage powers: what they were chosen by."""
    shipped = {"rrf_constant": index.rrf_constant, "coverage_power": index.coverage_power}
    for label, attribute, values in (
        ("RRF constant", "rrf_constant", (0, 1, 5, 20, 60)),
        ("coverage power", "coverage_power", (0, 1, 2, 3, 6)),
    ):
        shown = []
        for value in values:
            setattr(index, attribute, value)
            s = score(ranks(index, "hybrid"), HALVES["tuning"])
            shown.append(f"{value:g}{'*' if value == shipped[attribute] else ''}: {s.recall:.3f} / {s.mrr:.3f}")
        setattr(index, attribute, shipped[attribute])
        print(f"  hybrid on the tuning half, recall@5 / MRR by {label} (* shipped):", ", ".join(shown))


def paraphrase_ranks(index: KnowledgeIndex) -> None:
    """Where the embeddings and the hybrid rank each paraphrase's answer: what bounds the hybrid."""
    print(f"  each paraphrase's answer, ranked by the embeddings / the hybrid (- past {DEEP}):")
    found = {method: ranks(index, method, DEEP) for method in ("embeddings", "hybrid")}
    for i in PARAPHRASES:
        shown = " / ".join(f"{found[method][i] or '-':>2}" for method in ("embeddings", "hybrid"))
        half = "tuning" if tuning(i) else "held-out"
        print(f"    {shown}  {half:<8}  {clip(QUESTIONS[i].text, 70)}")


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


def build(embedder: Embedder, name: str, corpus: Path, database: Path) -> tuple[KnowledgeIndex, SyncReport, float]:
    """The index of ``corpus``, built from nothing, then opened again: says how long each took (returns the first)."""
    began = time.perf_counter()
    index = KnowledgeIndex(database, corpus, embedder, name)
    built = index.sync()
    build_seconds = time.perf_counter() - began
    began = time.perf_counter()
    again = KnowledgeIndex(database, corpus, embedder, name)
    reopened = again.sync()
    reopen_ms = (time.perf_counter() - began) * 1000
    again.close()
    print(
        f"  index of {built.files} documents, {built.sections} sections: built in {build_seconds:.2f} s, "
        f"opened again in {reopen_ms:.1f} ms ({reopened.embedded} sections embedded again)"
    )
    return index, built, build_seconds


def verdict(index: KnowledgeIndex, found: dict[Method, list[int | None]]) -> None:
    """The target (on all the questions, and on the held-out half alone), and what bounds it."""
    print(f"  the answer in BM25's top 5 or the embeddings' top 5: {ceiling(index):.3f} (what fusing them can reach)")
    paraphrase_ranks(index)
    constants(index)
    for half in ("all", "held-out"):
        recall = {method: score(got, HALVES[half]).recall for method, got in found.items()}
        above = recall["hybrid"] > max(recall["bm25"], recall["embeddings"])
        reached = mark(recall["hybrid"] >= 0.9)
        print(f"  target on {half}: hybrid recall@5 >= 0.9: {reached}; above both others: {mark(above)}")


def in_process(index: KnowledgeIndex) -> float:
    """Milliseconds of ``retrieve`` (the hybrid, k=5) called directly, without gRPC: the retriever's own cost (p50)."""
    samples = []
    for i in range(CALLS):
        started = time.perf_counter()
        index.retrieve(QUESTIONS[i % len(QUESTIONS)].text, K)
        samples.append((time.perf_counter() - started) * 1000)
    print(f"  retrieve() in-process, {CALLS} calls: p50 {statistics.median(samples):.2f} ms")
    return statistics.median(samples)


def own_with(spec: str, own: Path, work: Path) -> tuple[float, float, float] | None:
    """The own documents' table, target and costs with the embedder ``spec``: (load s, build s, retrieve p50 ms).

    None, saying why, when it cannot be loaded (MiniLM's package not installed).
    """
    began = time.perf_counter()
    try:
        embedder = load_embedder(spec)
    except ConfigError as exc:
        print(f"\nwith {spec}: skipped: {exc}")
        return None
    loaded = time.perf_counter() - began
    print(f"\nwith the embedder {spec} (loaded in {loaded:.2f} s), the fusion's constants as shipped:")
    index, built, seconds = build(embedder, spec, own, work / "own-other.sqlite3")
    try:
        verdict(index, table(index, f"the corpus's own {built.files} documents ({built.sections} sections), {spec}"))
        return loaded, seconds, in_process(index)
    finally:
        index.close()


def main() -> None:
    check_questions(section_texts(DEFAULT_CORPUS))
    paraphrases = sum(question.paraphrase for question in QUESTIONS)
    print(f"Athena's retrieval: {len(QUESTIONS)} questions ({paraphrases} paraphrases sharing no content word)")
    print(
        f"  hybrid: BM25 and embedding candidates ({CANDIDATES} each), reciprocal rank fusion (constant {RRF_K}),"
        f" BM25's votes weighed by coverage to the power {COVERAGE_POWER:g}"
    )
    began = time.perf_counter()
    embedder = load_embedder()
    loaded = time.perf_counter() - began
    print(f"  embedder (WordLlama) loaded in {loaded:.2f} s")
    with tempfile.TemporaryDirectory(prefix="kosmos-retrieval-") as scratch:
        work = Path(scratch)
        own = own_documents(DEFAULT_CORPUS, (work / "own").resolve())
        index, built, seconds = build(embedder, "wordllama", own, work / "own.sqlite3")
        try:
            found = table(index, f"the corpus's own {built.files} documents ({built.sections} sections)")
            verdict(index, found)
            costs = {"WordLlama": (loaded, seconds, in_process(index))}
        finally:
            index.close()
        other = own_with(MINILM, own, work)
        if other is not None:
            costs["MiniLM"] = other
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
    print(f"  p50 {statistics.median(samples):.2f} ms, p99 {p99:.2f} ms (WordLlama)")
    print(f"\ncosts over the own {built.sections} sections: embedder loaded, index built, retrieve() p50 in-process:")
    for label, (load_s, build_s, p50) in costs.items():
        print(f"  {label:<10} {load_s:6.2f} s {build_s:8.2f} s {p50:8.2f} ms")


def cli() -> None:
    """No options but ``--quick``: fewer calls timed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="time 60 calls, not 400 (also KOSMOS_BENCH_QUICK=1)")
    parser.parse_args()
    main()


if __name__ == "__main__":
    harness.main(cli, "benchmarks.retrieval")
