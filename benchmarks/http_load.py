"""Load on an OpenAI-compatible server: concurrent streaming clients, timed.

Every client thread sends its requests one after another through the
official `openai` client, streaming, so the time to the first token is
seen as a user sees it. The same code drives lm's server and any other
(llama.cpp's), so their figures compare.
"""

import concurrent.futures
import dataclasses
import logging
import statistics
import threading
import time

import numpy as np

# Sixteen prompts of ordinary length; client i starts at prompt i.
PROMPTS = (
    'Once upon a time, in a village by the sea,',
    'The three most important inventions of the last century are',
    'Here is a short recipe for tomato soup:',
    'The history of the printing press began',
    'A good way to learn a new language is to',
    'The following is a letter to a friend who moved abroad:',
    'In the middle of the night, the old clock',
    'Photosynthesis is the process by which',
    'The rules of chess are simple to learn:',
    'My favourite place in the city is',
    'The train left the station at dawn, and',
    'To write clear code, a programmer should',
    'The ocean covers most of the planet, and',
    'When the first snow fell that winter,',
    'The museum opened a new exhibition about',
    'Scientists recently discovered that',
)


@dataclasses.dataclass
class Timing:
  started: float
  first_token: float | None
  ended: float
  tokens: int


def _one(client, model, prompt, max_tokens) -> Timing:
  started = time.perf_counter()
  first, chunks, usage = None, 0, None
  stream = client.completions.create(
      model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
      stream=True)
  for chunk in stream:
    if getattr(chunk, 'usage', None):
      usage = chunk.usage.completion_tokens
    if chunk.choices and chunk.choices[0].text:
      chunks += 1
      if first is None:
        first = time.perf_counter()
  # Servers that report usage in the stream are counted exactly; others
  # send one chunk per token.
  return Timing(started, first, time.perf_counter(),
                usage if usage is not None else chunks)


def run(base_url: str, model: str, clients: int, requests_per_client: int,
        max_tokens: int, api_key: str = 'none') -> dict:
  """Runs `clients` threads of `requests_per_client` greedy requests each;
  aggregate tokens/s and time-to-first-token statistics."""
  import openai  # pylint: disable=g-import-not-at-top
  logging.getLogger('httpx').setLevel(logging.WARNING)  # A line a request.
  client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                         timeout=3600)
  start = threading.Barrier(clients)

  def work(index):
    start.wait()
    return [_one(client, model, PROMPTS[(index + k * clients) % len(PROMPTS)],
                 max_tokens) for k in range(requests_per_client)]

  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    timings = [t for ts in pool.map(work, range(clients)) for t in ts]
  wall = max(t.ended for t in timings) - min(t.started for t in timings)
  tokens = sum(t.tokens for t in timings)
  ttft = [t.first_token - t.started for t in timings
          if t.first_token is not None]
  return {'clients': clients, 'requests': len(timings), 'tokens': tokens,
          # A request cut short shows here (greedy text may end at EOS).
          'fewest_tokens': min(t.tokens for t in timings),
          'seconds': round(wall, 2),
          'tokens_per_second': round(tokens / wall, 2),
          'ttft_median_s': round(statistics.median(ttft), 3) if ttft
                           else None,
          'ttft_p95_s': round(float(np.percentile(ttft, 95)), 3) if ttft
                        else None}
