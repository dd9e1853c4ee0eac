"""Data: Shakespeare builder, tokenizers, and the grain pipeline."""

import itertools
import os

import grain
import numpy as np
import pytest

from lm.data import build
from lm.data import config as data_config
from lm.data import datasets
from lm.data import objectives
from lm.data import pipeline
from lm.data import sentiment
from lm.data import shakespeare
from lm.data import tokenizers

TRICKY = 'ROMEO:\nBut soft!  what light\n\n\tthrough 窓 yonder 日本語 breaks?  \n'


def test_the_config_knows_every_dataset_the_builders_build():
  assert sorted(data_config.DATASETS) == sorted(datasets.BUILDERS)


def test_markdown_becomes_speaker_colon_lines():
  markdown = ('### SCENE I. Verona.\n\n_Enter SAMPSON_\n\n**SAMPSON**  \n'
              "Gregory, o' my word,  \n\\--we'll not carry coals.\n")
  assert shakespeare.markdown_to_text(markdown) == (
      'SCENE I. Verona.\n\nEnter SAMPSON\n\nSAMPSON:\n'
      "Gregory, o' my word,\n--we'll not carry coals.\n")


def test_empty_headings_join_the_next_section():
  sections = shakespeare.split_scenes('# Play\n## ACT I\n### SCENE I\ntext\n'
                                      '### SCENE II\nmore\n')
  assert [heading for heading, _ in sections] == ['SCENE I', 'SCENE II']
  assert '# Play' in sections[0][1] and '## ACT I' in sections[0][1]


def test_shakespeare_splits_are_disjoint_and_cover_every_play(data_dir):
  builder = datasets.get_builder('shakespeare', data_dir)
  train = list(datasets.documents(builder, 'train'))
  validation = list(datasets.documents(builder, 'validation'))
  assert len(train) > 600 and len(validation) > 50
  assert len({ex['play'] for ex in train}) == 38
  assert not {ex['text'] for ex in train} & {ex['text'] for ex in validation}
  with open(os.path.join(builder.data_dir, 'LICENSE')) as f:
    assert 'public domain' in f.read()
  assert any(b'ROMEO:\n' in ex['text'] for ex in train)


def test_byte_tokenizer_round_trips_newlines_and_cjk():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(TRICKY)
  assert tok.decode(ids) == TRICKY
  assert tok.token_bytes()[ids].sum() == len(TRICKY.encode('utf-8'))


def test_sentencepiece_round_trips_newlines_and_cjk(tmp_path):
  corpus = ['To be, or not to be, that is the question:\nWhether tis nobler '
            'in the mind to suffer\n'] * 50
  tok = tokenizers.train_sentencepiece(corpus, vocab_size=300)
  ids = tok.encode(TRICKY)
  assert tok.decode(ids) == TRICKY
  assert tok.token_bytes()[ids].sum() == len(TRICKY.encode('utf-8'))
  assert tok.encode('\n') == [tok.encode('\n')[0]]  # newline is one token
  tok.save(str(tmp_path))
  assert tokenizers.load_tokenizer(str(tmp_path)).encode(TRICKY) == ids


def test_pipeline_windows_overlap_by_one_and_cover_the_stream():
  tokens = np.arange(23, dtype=np.int32)
  windows = pipeline.Windows(tokens, stride=5, length=6)
  assert len(windows) == 4
  examples = [objectives.causal_example(windows[i]) for i in range(4)]
  np.testing.assert_array_equal(
      np.concatenate([e['inputs'] for e in examples]), tokens[:20])
  np.testing.assert_array_equal(
      np.concatenate([e['targets'] for e in examples]), tokens[1:21])


def _numbered(count):
  return grain.MapDataset.range(count).map(
      lambda i: {'id': np.int32(i), 'weights': np.float32(1.0)})


def test_eval_batches_pad_the_last_batch_with_rows_of_no_weight():
  batches = list(pipeline.eval_batches(_numbered(7), 3))
  assert [b['id'].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5],
                                                 [6, 0, 0]]
  np.testing.assert_array_equal(batches[-1]['weights'], [1, 0, 0])


@pytest.mark.parametrize('endless', [False, True])
def test_processes_together_read_the_batches_of_one_process(endless):
  examples = _numbered(10).shuffle(0).repeat() if endless else _numbered(10)
  make = pipeline.train_batches if endless else pipeline.eval_batches
  alone = [b['id'] for b in itertools.islice(make(examples, 4), 3)]
  parts = [[b['id'] for b in itertools.islice(make(examples, 4, p, 2), 3)]
           for p in range(2)]
  for step, batch in enumerate(alone):
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step], parts[1][step]]), batch)


def _objective(name, **kwargs):
  return objectives.Objective(name=name, vocab_size=1000, bos_id=2, eos_id=3,
                              seq_len=200, **kwargs)


def test_masked_lm_picks_15_percent_and_splits_them_80_10_10():
  objective = _objective('masked')
  window = np.random.default_rng(0).integers(10, 1000, 200)
  rng = np.random.default_rng(1)
  counts = np.zeros(3)
  for _ in range(200):
    example = objective.example(window, rng)
    chosen = example['weights'] > 0
    assert chosen.sum() == 30
    np.testing.assert_array_equal(example['targets'], window)
    # Unchosen positions are untouched.
    np.testing.assert_array_equal(example['inputs'][~chosen], window[~chosen])
    masked = example['inputs'][chosen] == objective.mask_id
    kept = example['inputs'][chosen] == window[chosen]
    counts += [masked.sum(), (~masked & ~kept).sum(), kept.sum()]
  shares = counts / counts.sum()
  np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.02)


def test_span_corruption_splits_a_window_into_sentinel_pairs():
  objective = _objective('span')
  noise, spans = objective.span_counts()
  assert (noise, spans) == (30, 10)
  window = np.arange(100, 300)
  example = objective.example(window, np.random.default_rng(0))
  enc, targets = example['encoder_inputs'], example['targets']
  assert len(enc) == 200 - noise + spans + 1
  assert len(targets) == noise + spans + 1
  assert enc[-1] == targets[-1] == objective.eos_id
  np.testing.assert_array_equal(example['inputs'][1:], targets[:-1])
  # Putting each sentinel's span back where the sentinel stands in the
  # encoder input gives the window again.
  pieces = {}
  for token in targets[:-1]:
    if token >= objective.sentinel_id:
      current = pieces.setdefault(token, [])
    else:
      current.append(token)
  restored = [t for token in enc[:-1] for t in (
      pieces[token] if token >= objective.sentinel_id else [token])]
  np.testing.assert_array_equal(restored, window)
  assert enc.max() == objective.sentinel_id + spans - 1


@pytest.fixture(scope='module')
def lm_data(data_dir):
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  data = tiny_config(data_dir).data
  return build.make(data, build.tokenizer(data))


def test_scoring_builds_the_validation_batches_without_reading_train(
    lm_data, data_dir, monkeypatch):
  read = []
  documents = datasets.documents
  monkeypatch.setattr(datasets, 'documents', lambda builder, split: (
      read.append(split), documents(builder, split))[1])
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  data = tiny_config(data_dir).data
  evaluation = build.make(data, lm_data.tokenizer, evaluation_only=True)
  assert read == ['validation'] and evaluation.train is None
  for want, got in zip(lm_data.validation, evaluation.validation):
    np.testing.assert_array_equal(got['inputs'], want['inputs'])
    np.testing.assert_array_equal(got['weights'], want['weights'])


def test_iterator_state_restores_the_same_next_batches(lm_data):
  it = iter(lm_data.train.to_iter_dataset())
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)['inputs'] for _ in range(2)]
  resumed = iter(lm_data.train.to_iter_dataset())
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)['inputs'], want)


def test_train_batches_are_shuffled_windows_of_text(lm_data):
  batch = next(iter(lm_data.train.to_iter_dataset()))
  assert batch['inputs'].shape == (8, 32)
  np.testing.assert_array_equal(batch['inputs'][:, 1:],
                                batch['targets'][:, :-1])
  text = lm_data.tokenizer.decode(batch['inputs'][0])
  assert text.isprintable() or '\n' in text


@pytest.mark.slow
def test_tweet_sentiment_splits_are_disjoint_and_labelled(data_dir):
  # Built in the session's data_dir, which the classifier tests read too.
  builder = datasets.get_builder('tweet_sentiment', data_dir)
  texts = {}
  for split in ('train', 'validation', 'test'):
    source = datasets.documents(builder, split)
    examples = [source[i] for i in range(len(source))]  # Each read once.
    texts[split] = {example['text'] for example in examples}
    assert {int(example['label']) for example in examples} == {0, 1, 2}
  assert not texts['train'] & texts['test']
  assert not texts['train'] & texts['validation']
  total = sum(len(t) for t in texts.values())
  assert 0.08 < len(texts['test']) / total < 0.12
  assert builder.info.features['label'].names == list(sentiment.CLASSES)
