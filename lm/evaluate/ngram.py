"""An interpolated Kneser-Ney n-gram language model (Chen & Goodman, 1999).

The classic baseline for perplexity and bits per byte. The highest order
uses counts; each lower order uses continuation counts (in how many distinct
contexts a suffix follows), and every order is interpolated with the one
below, down to a uniform distribution over the vocabulary:

  P(w | h) = max(c(h w) - D, 0) / c(h)  +  D * N1+(h .) / c(h) * P(w | h')

with h' the context h without its first token, and one discount D per order.
Contexts never seen give all their mass to the lower order.
"""

import collections
import math

import numpy as np


class KneserNey:
  """Counts of a token stream; `log_prob(context, token)` in nats."""

  def __init__(self, tokens, order: int, vocab_size: int,
               discount: float = 0.75):
    if order < 1:
      raise ValueError(f'order must be >= 1, got {order}')
    self.order, self.vocab_size, self.discount = order, vocab_size, discount
    tokens = [int(t) for t in tokens]
    # counts[n][context][token]: raw counts at the top order, continuation
    # counts below it.
    self.counts = [collections.defaultdict(collections.Counter)
                   for _ in range(order)]
    top = order - 1  # the longest context
    for i in range(top, len(tokens)):
      self.counts[top][tuple(tokens[i - top:i])][tokens[i]] += 1
    # Continuation counts: each distinct (x, context, token) at order n + 1
    # adds one to (context, token) at order n.
    for n in range(top, 0, -1):
      source = self.counts[n]
      for longer_context, followers in source.items():
        context = longer_context[1:]
        for token in followers:
          self.counts[n - 1][context][token] += 1
    self._totals = [{h: sum(c.values()) for h, c in level.items()}
                    for level in self.counts]

  def prob(self, context: tuple[int, ...], token: int) -> float:
    p = 1.0 / self.vocab_size
    for n in range(0, self.order):  # from the shortest context up
      if n > len(context):
        break
      h = tuple(context[len(context) - n:]) if n else ()
      followers = self.counts[n].get(h)
      if not followers:
        continue  # unseen context: keep the lower-order estimate
      total = self._totals[n][h]
      p = (max(followers.get(token, 0) - self.discount, 0.0) / total
           + self.discount * len(followers) / total * p)
    return p

  def stream_nll(self, tokens) -> np.ndarray:
    """nats of each token after the first, given the ones before it."""
    tokens = [int(t) for t in tokens]
    out = np.empty(len(tokens) - 1)
    for i in range(1, len(tokens)):
      context = tuple(tokens[max(0, i - self.order + 1):i])
      out[i - 1] = -math.log(self.prob(context, tokens[i]))
    return out
