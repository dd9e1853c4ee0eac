"""Tokenizers: byte-level and SentencePiece, with one interface.

Both round-trip any text exactly (newlines, runs of spaces, CJK), and both
report how many UTF-8 bytes each token stands for, which is what makes
bits-per-byte comparable across tokenizers.

A workdir stores its tokenizer as `tokenizer.model` (SentencePiece) or
`tokenizer.json` (byte-level); `load_tokenizer(workdir)` reads either.
"""

import io
import json
import os
from typing import Iterable, Protocol

import numpy as np
import sentencepiece as spm

from lm.errors import UsageError

_SPM_FILE = 'tokenizer.model'
_BYTE_FILE = 'tokenizer.json'
# Shared special ids: 0 pad, 1 unk (SentencePiece only), 2 bos, 3 eos.
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def token_bytes(self) -> np.ndarray: ...
  def save(self, directory: str) -> None: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past four special ids (pad, unk, bos, eos)."""

  offset = 4
  vocab_size = 256 + offset
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  def encode(self, text: str) -> list[int]:
    return [b + self.offset for b in text.encode('utf-8')]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - self.offset for i in ids
                 if self.offset <= i < self.vocab_size)
    return data.decode('utf-8', errors='replace')

  def token_bytes(self) -> np.ndarray:
    counts = np.ones(self.vocab_size, np.int32)
    counts[:self.offset] = 0
    return counts

  def save(self, directory: str) -> None:
    _atomic_write(os.path.join(directory, _BYTE_FILE),
                  json.dumps({'kind': 'byte'}).encode())


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
    _atomic_write(os.path.join(directory, _SPM_FILE), self.model_proto)


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


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer stored in a workdir (or a dataset's tokenizer folder)."""
  spm_path = os.path.join(directory, _SPM_FILE)
  if os.path.exists(spm_path):
    return SentencePieceTokenizer.load(spm_path)
  if os.path.exists(os.path.join(directory, _BYTE_FILE)):
    return ByteTokenizer()
  raise UsageError(f'no tokenizer ({_SPM_FILE} or {_BYTE_FILE}) in '
                   f'{directory}; is it a workdir written by training?')


def _atomic_write(path: str, data: bytes) -> None:
  """Writes to a temporary name and renames, so readers never see half a file."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)
