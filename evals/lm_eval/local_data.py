"""Loads a task's JSON-lines file from this folder, wherever lm-eval runs.

lm-eval imports this file for the tasks' `custom_dataset` (`!function`);
the data files are built by `python -m tools.lm_eval_tasks`.
"""

import json
import os

import datasets

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
  with open(os.path.join(_HERE, f'{name}.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  return datasets.DatasetDict({'test': datasets.Dataset.from_list(rows)})


def country_capitals(**kwargs):
  del kwargs  # lm-eval passes the task's metadata.
  return _load('country_capitals')


def wordnet_definitions(**kwargs):
  del kwargs
  return _load('wordnet_definitions')
