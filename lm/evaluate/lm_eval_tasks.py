"""Multiple-choice tasks for lm-evaluation-harness, built from offline data.

Two tasks, each a JSON-lines file of {"question", "choices", "answer"}
(answer: the index of the right choice) that `evals/lm_eval/` ships with
its task YAML:

  country_capitals      "What is the capital of Peru?" among four capitals
                        (PyPI `countryinfo`)
  wordnet_definitions   which word a WordNet 3.0 noun definition defines,
                        among four words (Debian `wordnet-base`)

The harness scores each choice by its log-likelihood after the question,
so a served model (local-completions) and the same weights in transformers
(hf) must rank the choices alike: the tasks check lm's log-probabilities
end to end. `tools/lm_eval_tasks.py` rebuilds the files; the same
seed gives the same bytes.
"""

import json
import os
import random
import re

from lm.data import country_qa
from lm.data import wordnet
from lm.io import files

CHOICES = 4
QUESTIONS = 100
TASKS = ('country_capitals', 'wordnet_definitions')


def _multiple_choice(items, count, seed):
  """`count` questions from (question, answer) items; the wrong choices
  are other items' answers."""
  rng = random.Random(seed)
  answers = sorted({answer for _, answer in items})
  picked = rng.sample(items, min(count, len(items)))
  rows = []
  for question, answer in picked:
    wrong = rng.sample([a for a in answers if a != answer], CHOICES - 1)
    position = rng.randrange(CHOICES)
    choices = wrong[:position] + [answer] + wrong[position:]
    rows.append({'question': question, 'choices': choices,
                 'answer': position})
  return rows


def country_capitals(countryinfo_dir: str, count: int = QUESTIONS,
                     seed: int = 0) -> list[dict]:
  items = sorted({(q, a) for _, q, a in country_qa.read_questions(
      countryinfo_dir) if q.startswith('What is the capital')})
  return _multiple_choice(items, count, seed)


def wordnet_definitions(wordnet_dir: str = wordnet.WORDNET_DIR,
                        count: int = QUESTIONS, seed: int = 0) -> list[dict]:
  """Nouns named by one plain lower-case word whose definition does not
  contain it."""
  items = set()
  for synset in wordnet.read_synsets(wordnet_dir):
    word = synset.words[0]
    if (synset.lexname.startswith('noun.') and re.fullmatch('[a-z]+', word)
        and 20 <= len(synset.gloss) <= 100
        and word not in synset.gloss.lower()):
      items.add((f'Which word means "{synset.gloss}"?', word))
  return _multiple_choice(sorted(items), count, seed)


def write_jsonl(rows: list[dict], path: str) -> None:
  files.write_atomic(path, ''.join(json.dumps(row, ensure_ascii=False) + '\n'
                                   for row in rows))


def build(output_dir: str, countryinfo_dir: str,
          wordnet_dir: str = wordnet.WORDNET_DIR) -> dict[str, int]:
  """Writes both tasks' data files into `output_dir`; their sizes."""
  tasks = {'country_capitals': country_capitals(countryinfo_dir),
           'wordnet_definitions': wordnet_definitions(wordnet_dir)}
  for name, rows in tasks.items():
    write_jsonl(rows, os.path.join(output_dir, f'{name}.jsonl'))
  return {name: len(rows) for name, rows in tasks.items()}
