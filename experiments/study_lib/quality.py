"""Generation diversity measures on sampled text (tokenizer-independent: whitespace words).

  distinct_n(texts, n)  unique n-grams / all n-grams, over every sample together
                        (Li et al. 2016's distinct-n); 1.0 = no n-gram repeats.
  repetition(text, n)   fraction of a sample's n-grams that already occurred earlier in
                        the same sample (degenerate loops push it towards 1).
  measures(texts)       both, plus mean length in words and characters.
"""

from __future__ import annotations


def words(text: str) -> list[str]:
  return text.split()


def ngrams(seq: list, n: int) -> list[tuple]:
  return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
  grams = [g for t in texts for g in ngrams(words(t), n)]
  return len(set(grams)) / len(grams) if grams else float("nan")


def repetition(text: str, n: int = 4) -> float:
  grams = ngrams(words(text), n)
  if not grams:
    return float("nan")
  seen, repeated = set(), 0
  for g in grams:
    if g in seen:
      repeated += 1
    seen.add(g)
  return repeated / len(grams)


def measures(texts: list[str]) -> dict:
  reps = [r for r in (repetition(t, 4) for t in texts) if r == r]
  return {
      "distinct_1": distinct_n(texts, 1),
      "distinct_2": distinct_n(texts, 2),
      "distinct_3": distinct_n(texts, 3),
      "repetition_4": sum(reps) / len(reps) if reps else float("nan"),
      "mean_words": sum(len(words(t)) for t in texts) / max(1, len(texts)),
      "mean_chars": sum(len(t) for t in texts) / max(1, len(texts)),
      "samples": len(texts),
  }
