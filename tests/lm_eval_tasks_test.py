"""The lm-eval tasks shipped in evals/lm_eval/: rebuilt from their sources,
they are the files the repository ships, and every question is sound."""

import json
import os

from lm.data import country_qa
from lm.evaluate import lm_eval_tasks
from tests.conftest import ROOT

TASKS_DIR = os.path.join(ROOT, 'evals', 'lm_eval')


def _shipped(name):
  with open(os.path.join(TASKS_DIR, f'{name}.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _sound(rows):
  for row in rows:
    assert len(row['choices']) == lm_eval_tasks.CHOICES
    assert len(set(row['choices'])) == lm_eval_tasks.CHOICES, row
    assert 0 <= row['answer'] < lm_eval_tasks.CHOICES
  assert len({row['question'] for row in rows}) == len(rows)


def test_shipped_tasks_are_sound_and_capitals_rebuild_to_the_same_rows():
  for name in lm_eval_tasks.TASKS:
    rows = _shipped(name)
    assert len(rows) == lm_eval_tasks.QUESTIONS
    _sound(rows)
  assert lm_eval_tasks.country_capitals(
      country_qa.countryinfo_dir()) == _shipped('country_capitals')
  for name in lm_eval_tasks.TASKS:  # Each has its YAML and loader.
    with open(os.path.join(TASKS_DIR, f'lm_{name}.yaml'),
              encoding='utf-8') as f:
      assert f'local_data.{name}' in f.read()


def test_definitions_are_asked_of_plain_nouns_not_named_in_them(tmp_path):
  nouns = ['00000001 05 n 01 dog 0 000 | a domesticated canid kept as a pet',
           '00000002 05 n 01 cat 0 000 | a small feline kept as a pet',
           '00000003 05 n 01 horse 0 000 | a large hoofed animal ridden by '
           'people',
           '00000004 05 n 01 cow 0 000 | a cow is a mature female of cattle',
           '00000005 05 n 01 New_York 0 000 | the largest city of the state',
           '00000006 05 n 01 owl 0 000 | a nocturnal bird of prey with eyes',
           '00000007 05 n 01 ant 0 000 | tiny']
  verbs = ['00000008 38 v 01 run 0 000 | move fast by using the legs']
  for pos, lines in (('noun', nouns), ('verb', verbs), ('adj', []),
                     ('adv', [])):
    (tmp_path / f'data.{pos}').write_text('\n'.join(lines) + '\n')
  rows = lm_eval_tasks.wordnet_definitions(str(tmp_path))
  # cow (named in its gloss), New York (not one word), ant (gloss too
  # short) and run (a verb) are left out.
  answers = sorted(row['choices'][row['answer']] for row in rows)
  assert answers == ['cat', 'dog', 'horse', 'owl']
  _sound(rows)
  assert rows == lm_eval_tasks.wordnet_definitions(str(tmp_path))
