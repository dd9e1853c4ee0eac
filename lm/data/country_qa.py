"""Closed-book question answering about countries, as a tfds builder (offline).

Facts come from the JSON files of the PyPI package `countryinfo` 1.0.1 (MIT
license): for each country, its capital, region, subregion and demonym
become a question with a short answer ("What is the capital of Peru?" ->
"Lima"). There is no context passage: the model must know the answer, so
this measures what a pretrained model carries and how well fine-tuning
teaches it the answer format. A hash of the country's name puts all its
questions in one split (80/10/10), so test countries are never seen in
training.
"""

import glob
import json
import os

import tensorflow_datasets as tfds

from lm.data import sources

QUESTIONS = {
    'capital': 'What is the capital of {}?',
    'region': 'In which region of the world is {}?',
    'subregion': 'In which part of its region is {}?',
    'demonym': 'What is a person from {} called?',
}


def countryinfo_dir() -> str:
  return os.path.join(sources.package_dir(
      'countryinfo', 'the country_qa task',
      'pip install --no-deps countryinfo==1.0.1'), 'data')


def read_questions(data_dir: str):
  """(country, question, answer) for every fact the files give."""
  for path in sorted(glob.glob(os.path.join(data_dir, '*.json'))):
    with open(path, encoding='utf-8') as f:
      country = json.load(f)
    name = country.get('name')
    for field, question in QUESTIONS.items():
      answer = country.get(field)
      if name and isinstance(answer, str) and answer.strip():
        yield name, question.format(name), answer.strip()


class CountryQA(tfds.core.GeneratorBasedBuilder):
  """Questions about countries with short answers."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'countryinfo 1.0.1: capital, region, subregion, '
                            'demonym.'}
  METRICS = ('exact_match', 'token_f1')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Questions about countries (capital, region, subregion, '
                    'demonym) and their short answers.',
        features=tfds.features.FeaturesDict({
            'source': tfds.features.Text(), 'target': tfds.features.Text(),
            'reference': tfds.features.Text()}),
        supervised_keys=('source', 'target'),
        homepage='https://pypi.org/project/countryinfo/',
        license='MIT (countryinfo 1.0.1)')

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    questions = list(read_questions(countryinfo_dir()))
    return {split: self._generate_examples(questions, split)
            for split in sources.SPLITS}

  def _generate_examples(self, questions, split):
    for index, (country, question, answer) in enumerate(questions):
      if sources.split_of(country) == split:
        yield index, {'source': question, 'target': answer,
                      'reference': country}
