"""The tokenizer beside a Hugging Face checkpoint, in whichever form it comes.

  tokenizer.json              any `tokenizers` file (MiniLM, Llama, ...)
  vocab.txt                   a BERT WordPiece vocabulary
  encoder.json + vocab.bpe    GPT-2's byte-level BPE (as OpenAI published it)
  vocab.json + merges.txt     the same, as Hugging Face saves it

Special tokens come from tokenizer_config.json / special_tokens_map.json
where present, else from the conventions of the vocabulary (BERT's [CLS],
[SEP], [PAD]; GPT-2's <|endoftext|>).
"""

import os

import tokenizers as hf_tokenizers

from lm.data import tokenizers
from lm.errors import UsageError
from lm.io import json_files
from lm.io import layout

_GPT2_FILES = (('encoder.json', 'vocab.bpe'), ('vocab.json', 'merges.txt'))
# Fallbacks by role when no config names a token, in order of preference.
_ROLE_TOKENS = {'bos': ('bos_token', 'cls_token'),
                'eos': ('eos_token', 'sep_token'),
                'pad': ('pad_token', 'eos_token', 'sep_token')}
_CONVENTIONAL = {'bos_token': ('<|endoftext|>', '[CLS]', '<s>'),
                 'cls_token': ('[CLS]',),
                 'eos_token': ('<|endoftext|>', '[SEP]', '</s>'),
                 'sep_token': ('[SEP]',), 'pad_token': ('[PAD]', '<pad>')}


def find_tokenizer(directory: str) -> tokenizers.Tokenizer:
  """The tokenizer stored in `directory`, or one error listing what to add
  or saying what is damaged."""
  return tokenizers.reading(directory, _find_tokenizer)


def _find_tokenizer(directory: str) -> tokenizers.Tokenizer:
  path = lambda name: os.path.join(directory, name)
  if os.path.exists(path(layout.SENTENCEPIECE_TOKENIZER)) or (
      os.path.exists(path('tokenizer.json'))
      and tokenizers.is_byte_marker(path('tokenizer.json'))):
    # lm's own formats: a workdir, or a model exported from one.
    return tokenizers.load_tokenizer(directory)
  if os.path.exists(path('tokenizer.json')):
    tokenizer = hf_tokenizers.Tokenizer.from_file(path('tokenizer.json'))
  elif os.path.exists(path('vocab.txt')):
    tokenizer = hf_tokenizers.BertWordPieceTokenizer(
        path('vocab.txt'), lowercase=_config(directory).get(
            'do_lower_case', True))._tokenizer  # pylint: disable=protected-access
  else:
    for vocab, merges in _GPT2_FILES:
      if os.path.exists(path(vocab)) and os.path.exists(path(merges)):
        tokenizer = gpt2_bpe(path(vocab), path(merges))
        break
    else:
      raise UsageError(
          f'no tokenizer in {directory}: expected tokenizer.json, vocab.txt, '
          'encoder.json + vocab.bpe, or vocab.json + merges.txt; point '
          '--tokenizer at a directory holding one')
  return _with_special_tokens(tokenizer, directory)


def gpt2_bpe(vocab_path: str, merges_path: str) -> hf_tokenizers.Tokenizer:
  """GPT-2's byte-level BPE from its vocabulary and merge list."""
  bpe = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE.from_file(
      vocab_path, merges_path))
  bpe.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  bpe.decoder = hf_tokenizers.decoders.ByteLevel()
  if bpe.token_to_id('<|endoftext|>') is not None:
    bpe.add_special_tokens([hf_tokenizers.AddedToken('<|endoftext|>',
                                                     special=True)])
  return bpe


def _config(directory: str) -> dict:
  """tokenizer_config.json over special_tokens_map.json, either optional."""
  merged = {}
  for name in ('special_tokens_map.json', 'tokenizer_config.json'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      merged.update(json_files.load_object(path, 'tokenizer config'))
  return merged


def _token_text(value) -> str | None:
  return value.get('content') if isinstance(value, dict) else value


def _with_special_tokens(tokenizer: hf_tokenizers.Tokenizer, directory: str
                         ) -> tokenizers.HfTokenizer:
  config = _config(directory)
  ids = {}
  for role, keys in _ROLE_TOKENS.items():
    for key in keys:
      candidates = ([_token_text(config[key])] if config.get(key)
                    else list(_CONVENTIONAL[key]))
      found = [tokenizer.token_to_id(t) for t in candidates
               if tokenizer.token_to_id(t) is not None]
      if found:
        ids[role] = found[0]
        break
    else:
      raise UsageError(f'the tokenizer in {directory} names no {role} token; '
                       f'add "{keys[0]}" to its tokenizer_config.json')
  return tokenizers.HfTokenizer(tokenizer, pad_id=ids['pad'],
                                bos_id=ids['bos'], eos_id=ids['eos'],
                                chat_template=config.get('chat_template'))
