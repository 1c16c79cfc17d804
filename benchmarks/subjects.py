"""The cost of matching a published subject with 0 and with 10,000 non-matching subscriptions.

Run with ``make bench``. The trie should make the two about equal.
"""

from __future__ import annotations

import statistics
import timeit

from kosmos_grpc.subjects import AUDIT_LOG, SubjectTrie, subject_tokens

ROUNDS = 15
CALLS = 20_000


def cost_ns(trie: SubjectTrie[int]) -> float:
    """Median over rounds of the time to validate and match one publish, in ns."""

    def publish() -> None:
        subject_tokens(AUDIT_LOG)
        trie.match(AUDIT_LOG)

    return statistics.median(timeit.timeit(publish, number=CALLS) / CALLS * 1e9 for _ in range(ROUNDS))


def main() -> None:
    alone: SubjectTrie[int] = SubjectTrie()
    alone.add("kosmos.events.audit.log", 0)
    crowded: SubjectTrie[int] = SubjectTrie()
    crowded.add("kosmos.events.audit.log", 0)
    for i in range(10_000):  # subscriptions a publish on the audit log must never pay for
        crowded.add(f"kosmos.agents.agent{i}.requests" if i % 2 else f"tenant{i}.events.>", i + 1)
    base, busy = cost_ns(alone), cost_ns(crowded)
    print("\nsubject matching: one publish on kosmos.events.audit.log, one matching subscription")
    print(f"  with no other subscriptions            {base:8.0f} ns")
    print(f"  with 10,000 non-matching subscriptions {busy:8.0f} ns   {busy / base:.2f}x   target <= 1.2x")


if __name__ == "__main__":
    main()
