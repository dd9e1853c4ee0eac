"""Text-to-text tasks: dataset builders, examples, training and generation."""

import json
import os
import shutil
import textwrap

import numpy as np
import pytest

from lm.data import country_qa
from lm.data import datasets
from lm.data import summarization
from lm.data import text_pairs
from lm.data import translation
from lm.data import wordnet
from lm.errors import UsageError
from lm.evaluate import score
from lm.evaluate import text_metrics
from lm.io import checkpoint
from lm.io import config_file
from lm.model import params as model_params
from lm.train import loop
from lm.train.trainer import Trainer


def test_seq2seq_example_shifts_the_target_behind_bos():
  ex = text_pairs.seq2seq_example([5, 6, 7, 8], [9, 10], bos_id=1, eos_id=2,
                                  pad_id=0, seq_len=4, target_len=5)
  np.testing.assert_array_equal(ex['encoder_inputs'], [5, 6, 7, 2])
  np.testing.assert_array_equal(ex['encoder_mask'], [1, 1, 1, 1])
  np.testing.assert_array_equal(ex['inputs'], [1, 9, 10, 0, 0])
  np.testing.assert_array_equal(ex['targets'], [9, 10, 2, 0, 0])
  np.testing.assert_array_equal(ex['weights'], [1, 1, 1, 0, 0])


def test_a_long_source_loses_its_end_and_the_prompt_keeps_its_instructions():
  encode = lambda text: [ord(c) for c in text]
  template = 'Sum up:\n{source}\nSummary: '
  assert text_pairs.prompt_ids(encode, template, 'def f(): pass', 64) == (
      encode('Sum up:\ndef f(): pass\nSummary: '))
  assert text_pairs.prompt_ids(encode, template, 'def f(): pass', 22) == (
      encode('Sum up:\ndef \nSummary: '))
  # A template longer than the room keeps its end, where the answer follows.
  assert text_pairs.prompt_ids(encode, template, 'x', 5) == encode('ary: ')


def test_instruct_example_scores_only_the_answer():
  ex = text_pairs.instruct_example([5, 6, 7], [8, 9], eos_id=2, pad_id=0,
                                   seq_len=6, target_len=4)
  # tokens 5 6 7 8 9 2: inputs are all but the last, targets all but first.
  np.testing.assert_array_equal(ex['inputs'], [5, 6, 7, 8, 9, 0])
  np.testing.assert_array_equal(ex['targets'], [6, 7, 8, 9, 2, 0])
  np.testing.assert_array_equal(ex['weights'], [0, 0, 1, 1, 1, 0])
  # Too long: the answer is cut to target_len, the prompt loses its start.
  ex = text_pairs.instruct_example(list(range(10, 20)), [8, 9, 8, 9],
                                   eos_id=2, pad_id=0, seq_len=6,
                                   target_len=3)
  np.testing.assert_array_equal(ex['inputs'], [16, 17, 18, 19, 8, 9])
  np.testing.assert_array_equal(ex['targets'], [17, 18, 19, 8, 9, 2])
  np.testing.assert_array_equal(ex['weights'], [0, 0, 0, 1, 1, 1])


def test_function_summaries_strip_the_docstring():
  code = textwrap.dedent('''
      def area(width, height):
          """Returns the area of a rectangle.

          Longer text that is not the summary.
          """
          return width * height

      def short():
          """Too short."""

      class Shape:
          async def draw(self):
              """Draws the shape on the screen."""
              pass
      ''')
  found = list(summarization.function_summaries(code))
  assert [(name, summary) for name, _, summary in found] == [
      ('area', 'Returns the area of a rectangle.'),
      ('draw', 'Draws the shape on the screen.')]
  assert found[0][1] == 'def area(width, height):\n    return width * height'
  assert found[1][1] == 'async def draw(self):\n    pass'


def test_country_questions_from_json(tmp_path):
  (tmp_path / 'peru.json').write_text(json.dumps(
      {'name': 'Peru', 'capital': 'Lima', 'region': 'Americas',
       'subregion': '', 'demonym': 'Peruvian', 'area': 1}))
  assert list(country_qa.read_questions(str(tmp_path))) == [
      ('Peru', 'What is the capital of Peru?', 'Lima'),
      ('Peru', 'In which region of the world is Peru?', 'Americas'),
      ('Peru', 'What is a person from Peru called?', 'Peruvian')]


def test_verses_align_by_reference_and_drop_empty_ones():
  english = {('Gen', 1, 1): 'In the beginning', ('Gen', 1, 2): 'And the earth',
             ('Gen', 1, 3): ''}
  spanish = {('Gen', 1, 1): 'En el principio', ('Gen', 1, 3): 'Y dijo'}
  assert list(translation.aligned_pairs(english, spanish)) == [
      (('Gen', 1, 1), 'In the beginning', 'En el principio')]
  assert translation.clean_verse(' \u00b6 For God  so\nloved ') == (
      'For God so loved')


def test_missing_apt_sources_say_what_to_install(tmp_path):
  with pytest.raises(UsageError, match='apt-get install sword-text-kjv'):
    translation.read_verses(str(tmp_path), translation.SOURCE_MODULE)
  with pytest.raises(UsageError, match='apt-get install wordnet-base'):
    wordnet.read_synsets(str(tmp_path))


def test_wordnet_glosses_labels_and_synonyms(tmp_path):
  lines = {
      'noun': ['  1 This software and database is licensed',
               '00001740 05 n 02 dog 0 domestic_dog 0 000 | a domesticated '
               'canid; "the dog barked"',
               '00001750 05 n 02 dog 0 hound 0 000 | a hunting dog'],
      'verb': ['00001760 38 v 02 run 0 race 0 000 | move fast by using '
               "one's feet"],
      'adj': ['00001770 00 a 02 glad(p) 0 happy 0 000 | feeling joy'],
      'adv': []}
  for pos, content in lines.items():
    (tmp_path / f'data.{pos}').write_text('\n'.join(content) + '\n')
  synsets = wordnet.read_synsets(str(tmp_path))
  assert [(s.lexname, s.gloss) for s in synsets] == [
      ('noun.animal', 'a domesticated canid'),
      ('noun.animal', 'a hunting dog'),
      ('verb.motion', "move fast by using one's feet"),
      ('adj.all', 'feeling joy')]
  assert len(wordnet.LEXNAMES) == 45
  table = wordnet.synonyms(str(tmp_path))
  assert table['dog'] == ('hound',)  # 'domestic dog' is two words
  assert table['glad'] == ('happy',)


# ------------------------------------------------------ training and eval ----


@pytest.fixture(scope='module')
def summaries_dir(tmp_path_factory):
  """A fake stdlib of 40 modules, built into a docstring_summaries dataset."""
  root = tmp_path_factory.mktemp('stdlib')
  for i in range(40):
    (root / f'module{i}.py').write_text(textwrap.dedent(f'''
        def add_{i}(a, b):
            """Adds two numbers plus {i}."""
            return a + b + {i}

        def scale_{i}(values):
            """Scales every value by {i}."""
            return [v * {i} for v in values]
        '''))
  builder_class = type('FixtureSummaries', (summarization.DocstringSummaries,),
                       {'STDLIB': str(root)})
  data_dir = str(tmp_path_factory.mktemp('tfds_summaries'))
  original = datasets.BUILDERS['docstring_summaries']
  datasets.BUILDERS['docstring_summaries'] = builder_class
  builder = datasets.get_builder('docstring_summaries', data_dir)
  yield data_dir, builder
  datasets.BUILDERS['docstring_summaries'] = original


def text_config(tiny, data_dir, objective):
  config = tiny
  config.data.update(name='docstring_summaries', data_dir=data_dir,
                     objective=objective, seq_len=48, target_len=16,
                     batch_size=8, eval_batch_size=16,
                     prompt='{source}\nSummary: ')
  config.train.update(num_steps=4, eval_every=4, checkpoint_every=4)
  config.optim.warmup_steps = 1
  config.evaluate.update(beam_size=2, batch_size=8, max_examples=6)
  if objective == 'seq2seq':
    config.model.update(family='encoder_decoder', position='relative',
                        num_kv_heads=0, max_len=64)
  return config


def test_fixture_dataset_splits_whole_files(summaries_dir):
  _, builder = summaries_dir
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert sum(counts.values()) == 80 and min(counts.values()) > 0
  assert all(n % 2 == 0 for n in counts.values())  # both functions of a file


@pytest.mark.slow
def test_text_task_trains_and_scores_generated_text(tiny, tmp_path,
                                                    summaries_dir):
  config = text_config(tiny, summaries_dir[0], 'instruct')
  final = loop.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final['loss'])
  result = score.evaluate_workdir(str(tmp_path), 'test', {})
  assert {'rouge1', 'rouge2', 'rougeL', 'loss'} <= set(result['metrics'])
  assert 0 <= result['metrics']['rougeL'] <= 100
  assert result['generation']['examples'] == 6
  assert len(result['samples']) == 5
  with open(os.path.join(tmp_path, 'eval', 'docstring_summaries_test.json'),
            encoding='utf-8') as f:
    assert json.load(f)['metrics'] == result['metrics']
  assert 'rougeL' in score.markdown_table(result)


@pytest.mark.slow
def test_beam_summaries_are_never_empty_and_score_at_least_greedy(
    tiny, tmp_path, summaries_dir):
  """A fixed small encoder-decoder, trained on the fixture's summaries: beam
  search writes text wherever greedy does, and scores at least its ROUGE-L.
  (decode_test.py makes EOS the likeliest first token, where beam search
  once returned the empty summary.)"""
  config = text_config(tiny, summaries_dir[0], 'seq2seq')
  config.train.update(num_steps=60, eval_every=60, checkpoint_every=60)
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  trainer = Trainer(config_file.load_config(workdir))
  params, _ = checkpoint.load_params(
      workdir, model_params.abstract_params(trainer.model))
  sources, references = zip(*trainer.data.pairs('test'))
  written = {}
  for beam_size in (1, 2):  # (2: the workdir's own, scored below.)
    eval_config = trainer.config.evaluate.copy_and_resolve_references()
    eval_config.beam_size = beam_size
    written[beam_size] = score.generate_texts(trainer, params, list(sources),
                                              eval_config)
  assert all(written[2][i] for i, text in enumerate(written[1]) if text)
  rouge_l = {k: text_metrics.rouge(v, list(references))['rougeL']
             for k, v in written.items()}
  assert rouge_l[1] > 0 and rouge_l[2] >= rouge_l[1], rouge_l
  # The workdir's own scoring writes beam search's text.
  result = score.evaluate_workdir(workdir, 'test', {})
  assert result['generation']['decoding'].startswith('beam 2')
  assert result['samples'][0]['prediction'] == score.generate_texts(
      trainer, params, [sources[0]], trainer.config.evaluate)[0]


@pytest.mark.slow
def test_a_decoder_is_scored_zero_shot_on_another_task(
    float_workdir, summaries_dir, tiny, tmp_path):
  """evaluate --task: the workdir's model and tokenizer on another config's
  data (a Shakespeare model asked for docstring summaries)."""
  workdir = str(tmp_path / 'float')
  shutil.copytree(float_workdir, workdir)
  task = text_config(tiny, summaries_dir[0], 'instruct')
  task.model.update(d_model=999)  # The task's model is not the one scored.
  task.data.tokenizer = 'sentencepiece'
  result = score.evaluate_workdir(workdir, 'test', {}, task=task)
  assert result['dataset'] == 'docstring_summaries'
  assert result['generation'] == {'examples': 6, 'decoding': 'greedy'}
  assert 0 <= result['metrics']['rougeL'] <= 100
  assert os.path.exists(os.path.join(workdir, 'eval',
                                     'docstring_summaries_test.json'))


def test_text_task_refuses_the_wrong_family(tiny, summaries_dir):
  config = text_config(tiny, summaries_dir[0], 'seq2seq')
  config.model.family = 'decoder'
  with pytest.raises(UsageError, match='trains encoder_decoder models'):
    Trainer(config)
  config = text_config(tiny, summaries_dir[0], 'instruct')
  config.data.name = 'shakespeare'
  with pytest.raises(UsageError, match='has no source/target pairs'):
    Trainer(config)


def test_unknown_task_is_named(tiny):
  tiny.data.name = 'squad'
  with pytest.raises(UsageError, match="unknown dataset 'squad'"):
    Trainer(tiny)
