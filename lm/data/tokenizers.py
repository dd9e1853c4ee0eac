"""Tokenizers: byte-level, SentencePiece and imported ones, one interface.

Each reports how many UTF-8 bytes each token stands for, which is what makes
bits-per-byte comparable across tokenizers. The byte-level and SentencePiece
tokenizers trained here round-trip any text exactly.

A workdir stores its tokenizer as `tokenizer.model` (SentencePiece),
`tokenizer.json` (a Hugging Face `tokenizers` file, for imported checkpoints,
with `tokenizer_config.json` naming its special tokens and chat template) or
`tokenizer.json` holding {"kind": "byte"}; `load_tokenizer(workdir)` reads
any of them.
"""

import io
import json
import os
from typing import Iterable, Protocol

import numpy as np
import sentencepiece as spm
import tokenizers as hf_tokenizers

from lm.data import chat_template as templates
from lm.errors import UsageError
from lm.io import files
from lm.io import json_files
from lm.io import layout
from lm.io import paths

# Shared special ids: 0 pad, 1 unk (SentencePiece only), 2 bos, 3 eos.
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def token_name(self, token_id: int) -> str | None: ...
  def token_bytes(self) -> np.ndarray: ...
  def save(self, directory: str) -> None: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past four special ids (pad, unk, bos, eos)."""

  offset = 4
  vocab_size = 256 + offset
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  def encode(self, text: str) -> list[int]:
    # numpy shifts a long text's bytes in one call.
    return (np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)
            + self.offset).tolist()

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - self.offset for i in ids
                 if self.offset <= i < self.vocab_size)
    return data.decode('utf-8', errors='replace')

  def token_name(self, token_id: int) -> str | None:
    del token_id
    return None  # The special ids have no text form.

  def token_bytes(self) -> np.ndarray:
    counts = np.ones(self.vocab_size, np.int32)
    counts[:self.offset] = 0
    return counts

  def save(self, directory: str) -> None:
    files.write_atomic(os.path.join(directory, layout.JSON_TOKENIZER),
                       json.dumps({'kind': 'byte'}))


class SentencePieceTokenizer:
  """A SentencePiece model trained to round-trip text byte for byte."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = (
        self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id())

  @classmethod
  def load(cls, path: str) -> 'SentencePieceTokenizer':
    with open(path, 'rb') as f:
      return cls(f.read())

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_name(self, token_id: int) -> str | None:
    return self._sp.id_to_piece(token_id)

  def token_bytes(self) -> np.ndarray:
    counts = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if self._sp.is_byte(i):
        counts[i] = 1
      elif not (self._sp.is_control(i) or self._sp.is_unknown(i)):
        piece = self._sp.id_to_piece(i).replace('\u2581', ' ')
        counts[i] = len(piece.encode('utf-8'))
    return counts

  def save(self, directory: str) -> None:
    files.write_atomic(
        os.path.join(directory, layout.SENTENCEPIECE_TOKENIZER),
        self.model_proto)


def train_sentencepiece(texts: Iterable[str], vocab_size: int,
                        model_type: str = 'bpe') -> SentencePieceTokenizer:
  """Trains a lossless SentencePiece model on `texts`.

  Identity normalization, kept whitespace, no dummy prefix and byte fallback
  make decode(encode(x)) == x for every string; newline is its own token.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model,
      vocab_size=vocab_size, model_type=model_type,
      normalization_rule_name='identity', remove_extra_whitespaces=False,
      add_dummy_prefix=False, byte_fallback=True, split_digits=True,
      allow_whitespace_only_pieces=True, character_coverage=1.0,
      user_defined_symbols=['\n'], pad_id=PAD_ID, unk_id=1, bos_id=BOS_ID,
      eos_id=EOS_ID, max_sentence_length=1 << 20, num_threads=os.cpu_count(),
      minloglevel=2)
  return SentencePieceTokenizer(model.getvalue())


class HfTokenizer:
  """A Hugging Face `tokenizers` tokenizer (BPE, WordPiece, ...), imported.

  `encode` adds no special tokens unless asked (BERT's [CLS]/[SEP] come from
  the file's post-processor); special tokens written in the text, such as a
  chat template's, are recognized. `chat_template` is the Jinja template of
  an instruct model, rendered as Hugging Face renders it.
  """

  def __init__(self, tokenizer: hf_tokenizers.Tokenizer, *, pad_id: int,
               bos_id: int, eos_id: int, chat_template: str | None = None):
    # Some files pad or truncate every encoding to a fixed length; lm pads
    # batches itself and never silently cuts a text.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
    self.chat_template = chat_template

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return self.tokenizer.encode(
        text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def token_name(self, token_id: int) -> str | None:
    return self.tokenizer.id_to_token(token_id)

  def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
    """The prompt text for `messages`, ending where the assistant speaks."""
    if not self.chat_template:
      raise UsageError('this tokenizer has no chat template')
    return templates.render(
        self.chat_template, messages=messages, add_generation_prompt=True,
        bos_token=self.token_name(self.bos_id),
        eos_token=self.token_name(self.eos_id))

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes per token: byte-level pieces mapped back, '##' dropped."""
    byte_level = isinstance(self.tokenizer.decoder,
                            hf_tokenizers.decoders.ByteLevel)
    # GPT-2's 256 printable stand-ins, one per byte.
    byte_chars = set(hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in
               self.tokenizer.get_added_tokens_decoder().values() if t.special}
    counts = np.zeros(self.vocab_size, np.int32)
    for piece, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
      if piece in special:
        continue
      if byte_level and all(c in byte_chars for c in piece):
        counts[i] = len(piece)
      else:
        counts[i] = len(piece.removeprefix('##').encode('utf-8'))
    return counts

  def save(self, directory: str) -> None:
    files.write_atomic(os.path.join(directory, layout.JSON_TOKENIZER),
                       self.tokenizer.to_str())
    token = self.token_name
    settings = {'pad_token': token(self.pad_id),
                'bos_token': token(self.bos_id),
                'eos_token': token(self.eos_id),
                'chat_template': self.chat_template}
    files.write_atomic(os.path.join(directory, layout.HF_TOKENIZER_CONFIG),
                       json.dumps(settings, indent=2))

  @classmethod
  def load(cls, directory: str) -> 'HfTokenizer':
    tokenizer = hf_tokenizers.Tokenizer.from_file(
        os.path.join(directory, layout.JSON_TOKENIZER))
    config = json_files.load_object(
        os.path.join(directory, layout.HF_TOKENIZER_CONFIG),
        'tokenizer config')
    ids = {}
    for name in ('pad', 'bos', 'eos'):
      ids[name] = tokenizer.token_to_id(config[f'{name}_token'] or '')
      if ids[name] is None:
        raise UsageError(f'{directory}/{layout.HF_TOKENIZER_CONFIG} names '
                         f'{name}_token={config[f"{name}_token"]!r}, which '
                         f'{layout.JSON_TOKENIZER} does not have')
    template = config.get('chat_template')
    if template is not None and not isinstance(template, str):
      raise UsageError(f'{directory}/{layout.HF_TOKENIZER_CONFIG} has a '
                       f'chat_template that is a JSON '
                       f'{type(template).__name__}, not the text of a '
                       'template')
    return cls(tokenizer, pad_id=ids['pad'], bos_id=ids['bos'],
               eos_id=ids['eos'], chat_template=template)


def chat_template(tokenizer: Tokenizer) -> str | None:
  """The tokenizer's chat template (Jinja), or None: the one answer to
  "can this model chat" that the server, the chat REPL and generate --chat
  each turn into their own error (an HTTP field, a flag)."""
  return getattr(tokenizer, 'chat_template', None) or None


def encode_sequence(tokenizer: Tokenizer, text: str) -> list[int]:
  """A text as one model input: with the tokenizer's own special tokens
  ([CLS] ... [SEP] for BERT's) where it defines them, else followed by EOS."""
  if (isinstance(tokenizer, HfTokenizer)
      and tokenizer.tokenizer.num_special_tokens_to_add(False)):
    return tokenizer.encode(text, add_special_tokens=True)
  return tokenizer.encode(text) + [tokenizer.eos_id]


def check_fits(tokenizer: Tokenizer, vocab_size: int, source: str) -> None:
  """Refuses a tokenizer with more tokens than the model embeds (its
  larger ids would index past the embedding table: empty or wrong text)."""
  if tokenizer.vocab_size > vocab_size:
    raise UsageError(
        f'{source}: the tokenizer has {tokenizer.vocab_size} tokens but the '
        f'model embeds only {vocab_size}; the tokenizer is not the one the '
        'model was trained with')


def is_byte_marker(path: str) -> bool:
  """Whether a tokenizer.json is ByteTokenizer's {"kind": "byte"}."""
  # Hugging Face files are far larger; a FIFO or device is neither (and
  # opening a FIFO would wait for a writer).
  if not os.path.isfile(path) or os.path.getsize(path) > 1024:
    return False
  with open(path, 'rb') as f:
    try:
      return json.loads(f.read()) == {'kind': 'byte'}
    except ValueError:
      return False


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer stored in a workdir (or a dataset's tokenizer folder);
  a damaged one is a UsageError naming the folder."""
  return reading(directory, _load_tokenizer)


# Every file a tokenizer is read from, in any format lm reads.
_FILES = (layout.SENTENCEPIECE_TOKENIZER, layout.JSON_TOKENIZER,
          layout.HF_TOKENIZER_CONFIG, 'special_tokens_map.json', 'vocab.txt',
          'vocab.json', 'merges.txt', 'encoder.json', 'vocab.bpe')


def reading(directory: str, load):
  """`load(directory)`, with what a malformed tokenizer file makes the
  libraries raise turned into one UsageError."""
  for name in _FILES:
    path = os.path.join(directory, name)
    if os.path.lexists(path):
      paths.regular_file(path, 'tokenizer file', json_files.MAX_BYTES)
  try:
    return load(directory)
  except UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # sentencepiece raises RuntimeError and OSError, tokenizers plain
    # Exception, json ValueError; the config's values may be of any type.
    raise UsageError(f'the tokenizer in {directory} is damaged or not one lm '
                     f'reads ({type(e).__name__}: {str(e)[:200]})') from e


def _load_tokenizer(directory: str) -> Tokenizer:
  spm_path = os.path.join(directory, layout.SENTENCEPIECE_TOKENIZER)
  if os.path.exists(spm_path):
    return SentencePieceTokenizer.load(spm_path)
  json_path = os.path.join(directory, layout.JSON_TOKENIZER)
  if os.path.exists(json_path):
    if is_byte_marker(json_path):
      return ByteTokenizer()
    return HfTokenizer.load(directory)
  raise UsageError(f'no tokenizer ({layout.SENTENCEPIECE_TOKENIZER} or '
                   f'{layout.JSON_TOKENIZER}) in '
                   f'{directory}; is it a workdir written by training or '
                   'experiments/convert.py?')

