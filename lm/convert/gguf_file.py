"""GGUF (llama.cpp) files: dequantized tensors, the Llama config, the tokenizer.

The container is parsed with the `gguf` package; the block formats are
decoded here, following ggml's definitions (blocks of 32 weights sharing an
fp16 scale d, and for Q4_1 an fp16 minimum m):
  Q8_0  34 bytes: d, 32 int8 q            w = d * q
  Q4_0  18 bytes: d, 16 bytes of nibbles  w = d * (q - 8)
  Q4_1  20 bytes: d, m, 16 bytes          w = d * q + m
The low nibbles of a block are its first 16 weights, the high ones the rest.

llama.cpp permutes the rows of the query and key projections so that rotary
pairs are adjacent; lm (like Hugging Face) rotates halves, so import undoes
that permutation. Tensors come out under Hugging Face Llama names, and the
Llama layout in hf_layouts.py takes them from there.
"""

import math
import mmap
import os
import struct

import gguf
import numpy as np
import tokenizers as hf_tokenizers

from lm.data import tokenizers
from lm.errors import UsageError

MAGIC = b'GGUF'
_T = gguf.GGMLQuantizationType
_BLOCK = 32


def _f16(raw: np.ndarray) -> np.ndarray:
  return raw.view(np.float16).astype(np.float32)


def _dequantize_q8_0(blocks):
  d = _f16(blocks[:, :2])
  return d * blocks[:, 2:].view(np.int8).astype(np.float32)


def _nibbles(packed):
  return np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)


def _dequantize_q4_0(blocks):
  return _f16(blocks[:, :2]) * (_nibbles(blocks[:, 2:]) - 8)


def _dequantize_q4_1(blocks):
  return _f16(blocks[:, :2]) * _nibbles(blocks[:, 4:]) + _f16(blocks[:, 2:4])


_BLOCK_DECODERS = {_T.Q8_0: (34, _dequantize_q8_0),
                   _T.Q4_0: (18, _dequantize_q4_0),
                   _T.Q4_1: (20, _dequantize_q4_1)}
SUPPORTED_TYPES = ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1')


def dequantize(raw: np.ndarray, qtype: _T, shape: tuple[int, ...]
               ) -> np.ndarray:
  """float32 weights of `shape` (row-major) from a tensor's stored data."""
  if qtype == _T.F32:
    values = raw.view(np.float32)
  elif qtype == _T.F16:
    values = raw.view(np.float16).astype(np.float32)
  elif qtype == _T.BF16:
    values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
  elif qtype in _BLOCK_DECODERS:
    block_bytes, decode = _BLOCK_DECODERS[qtype]
    values = decode(raw.view(np.uint8).reshape(-1, block_bytes))
  else:
    raise UsageError(f'GGUF tensor type {qtype.name} is not supported; lm '
                     f'reads {", ".join(SUPPORTED_TYPES)} (re-quantize the '
                     'file with llama.cpp to one of them)')
  return values.reshape(shape)


def _field(reader: gguf.GGUFReader, key: str, default=None):
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _required(reader: gguf.GGUFReader, key: str, path: str):
  value = _field(reader, key)
  if value is None:
    raise UsageError(f'{path} lacks the GGUF metadata key {key}; it is not a '
                     'complete llama.cpp model file')
  return value


_V = gguf.GGUFValueType
_INTEGERS = {_V.UINT8, _V.INT8, _V.UINT16, _V.INT16, _V.UINT32, _V.INT32,
             _V.UINT64, _V.INT64}
_NUMBERS = _INTEGERS | {_V.FLOAT32, _V.FLOAT64}


def _typed(reader: gguf.GGUFReader, key: str, path: str, kinds, default):
  """A number-valued key (`default` where absent; required where that is
  None), refused where the file stores it as another type."""
  field = reader.fields.get(key)
  if field is None and default is not None:
    return default
  value = _required(reader, key, path)
  if len(field.types) != 1 or field.types[0] not in kinds:
    raise UsageError(f'{path} stores {key} as '
                     f'{"/".join(_V(t).name for t in field.types)}, not a '
                     'number of the kind it must be; the file is damaged')
  return value


def _integer(reader, key, path, default=None) -> int:
  return int(_typed(reader, key, path, _INTEGERS, default))


def _decimal(value) -> float:
  """A float32 field as the decimal it was written from (1e-05, not
  9.999999747378752e-06), so configs compare equal to the published ones."""
  return float(str(np.float32(value)))


def _unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """Inverse of llama.cpp's row permutation of a q/k projection [out, in]."""
  rows, cols = w.shape
  return (w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2)
          .reshape(rows, cols))


_LAYER_NAMES = {
    'attn_q': 'self_attn.q_proj', 'attn_k': 'self_attn.k_proj',
    'attn_v': 'self_attn.v_proj', 'attn_output': 'self_attn.o_proj',
    'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj',
    'ffn_down': 'mlp.down_proj', 'attn_norm': 'input_layernorm',
    'ffn_norm': 'post_attention_layernorm'}
_GLOBAL_NAMES = {'token_embd.weight': 'model.embed_tokens.weight',
                 'output_norm.weight': 'model.norm.weight',
                 'output.weight': 'lm_head.weight'}


def _hf_name(name: str) -> str | None:
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split('.')  # blk.{i}.{kind}.weight
  if parts[0] == 'blk' and parts[2] in _LAYER_NAMES:
    return f'model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}'
  return None


# What malformed content makes the gguf package (or numpy under it) raise.
_MALFORMED = (ValueError, IndexError, KeyError, TypeError, OverflowError,
              UnicodeDecodeError, struct.error, MemoryError)
# The fewest bytes a tensor's description and a key/value take in a header.
_MIN_TENSOR_INFO, _MIN_KEY_VALUE = 24, 12


def read_llama(path: str):
  """(HF-style Llama config dict, {HF name: float32 array}, tokenizer).
  Any malformed content is a UsageError naming the file."""
  _check_header(path)
  try:
    return _read_llama(path)
  except UsageError:
    raise
  except OSError as e:
    raise UsageError(f'{path} could not be read: {e}') from e
  except _MALFORMED as e:
    raise UsageError(f'{path} is not a well-formed GGUF file '
                     f'({type(e).__name__}: {str(e)[:200]})') from e


def _check_header(path: str) -> None:
  """Walks the header's key/values and tensor descriptions, refusing any
  length or count that runs past the file, before the gguf reader (which
  would allocate whatever a count says) sees it."""
  try:
    with open(path, 'rb') as f:
      size = os.fstat(f.fileno()).st_size
      if size < 24 or f.read(4) != MAGIC:
        raise UsageError(f'{path} is not a GGUF file (too short, or no GGUF '
                         'magic)')
      with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        problem = _header_problem(data, size)
  except OSError as e:
    raise UsageError(f'{path} could not be read: {e}') from e
  if problem:
    raise UsageError(f'{path} is not a well-formed GGUF file: {problem}')


# Bytes of each GGUF scalar value type; 8 is a string, 9 an array.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8,
                 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
# ggml's most dimensions per tensor.
_MAX_DIMS = 4


def _header_problem(data, size: int) -> str | None:
  """What makes the header unreadable (a phrase), or None."""
  version, tensors, keys = struct.unpack_from('<IQQ', data, 4)
  if version not in (2, 3):
    return f'version {version} (lm reads versions 2 and 3)'
  if tensors * _MIN_TENSOR_INFO + keys * _MIN_KEY_VALUE > size:
    return (f'it declares {tensors} tensors and {keys} metadata keys, more '
            f'than its {size} bytes can hold')
  pos = 24

  def take(count: int) -> int:
    nonlocal pos
    if count > size - pos:
      raise _Truncated(pos)
    pos += count
    return pos - count

  def u32() -> int:
    return struct.unpack_from('<I', data, take(4))[0]

  def u64() -> int:
    return struct.unpack_from('<Q', data, take(8))[0]

  def string():
    take(u64())

  try:
    for _ in range(keys):
      string()
      kind = u32()
      if kind == _ARRAY:
        kind, count = u32(), u64()
        if kind == _STRING:
          for _ in range(count):
            string()
        elif kind in _SCALAR_BYTES:
          take(count * _SCALAR_BYTES[kind])
        else:
          return f'a metadata array of unknown type {kind}'
      elif kind == _STRING:
        string()
      elif kind in _SCALAR_BYTES:
        take(_SCALAR_BYTES[kind])
      else:
        return f'a metadata value of unknown type {kind} at byte {pos - 4}'
    known = {int(t) for t in _T}
    for _ in range(tensors):
      string()
      dims = u32()
      if not 1 <= dims <= _MAX_DIMS:
        return f'a tensor of {dims} dimensions (at most {_MAX_DIMS})'
      shape = [u64() for _ in range(dims)]
      if 0 in shape or math.prod(shape) > 8 * size:
        return f'a tensor of shape {shape}, beyond what the file can hold'
      kind = u32()
      if kind not in known:
        return f'a tensor of unknown type {kind}'
      u64()
  except _Truncated as e:
    return f'a length or count at byte {e.args[0]} runs past its end'
  return None


class _Truncated(Exception):
  pass


def _check_tensor_extents(reader: gguf.GGUFReader, path: str) -> None:
  """Each tensor's data lies inside the file, at an aligned offset (the
  reader wraps offsets past 2**64 around instead of refusing them), and no
  two tensors share bytes (one would be read as the other)."""
  size = os.path.getsize(path)
  extents = []
  for t in reader.tensors:
    offset = int(t.field.parts[-1][0])
    if (offset % reader.alignment or offset > size
        or reader.data_offset + offset + int(t.n_bytes) > size):
      raise UsageError(f'{path}: the data of the tensor {t.name} (offset '
                       f'{offset}, {int(t.n_bytes)} bytes) does not lie '
                       f'inside the file\'s {size} bytes; the file is '
                       'damaged or cut short')
    extents.append((offset, offset + int(t.n_bytes), t.name))
  extents.sort()
  for (_, end, name), (start, _, other) in zip(extents, extents[1:]):
    if start < end:
      raise UsageError(f'{path}: the tensors {name} and {other} overlap in '
                       'the file; it is damaged or not a real GGUF file')


def _read_llama(path: str):
  reader = gguf.GGUFReader(path)
  arch = _field(reader, 'general.architecture')
  if arch != 'llama':
    raise UsageError(f'{path} holds a {arch!r} model; lm imports GGUF files '
                     "of the 'llama' architecture")
  heads = _integer(reader, 'llama.attention.head_count', path)
  kv_heads = _integer(reader, 'llama.attention.head_count_kv', path, heads)
  if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
    raise UsageError(f'{path} declares {heads} attention heads and '
                     f'{kv_heads} key/value heads; they must be positive and '
                     'the first a multiple of the second')
  _check_tensor_extents(reader, path)
  tensors = {}
  unsupported = sorted({t.tensor_type.name for t in reader.tensors
                        if t.tensor_type.name not in SUPPORTED_TYPES})
  if unsupported:
    raise UsageError(f'{path} has tensors of type {", ".join(unsupported)}, '
                     f'which lm does not dequantize; it reads '
                     f'{", ".join(SUPPORTED_TYPES)} (re-quantize the file '
                     'with llama.cpp to one of them)')
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      continue  # e.g. rope_freqs, which plain rotary recomputes
    w = dequantize(np.asarray(t.data), t.tensor_type,
                   tuple(int(n) for n in reversed(t.shape)))
    if t.name.endswith('attn_q.weight'):
      w = _unpermute_rotary(w, heads)
    elif t.name.endswith('attn_k.weight'):
      w = _unpermute_rotary(w, kv_heads)
    tensors[name] = w
  if 'model.embed_tokens.weight' not in tensors:
    raise UsageError(f'{path} has no token_embd.weight tensor')
  embed_rows = tensors['model.embed_tokens.weight'].shape[0]
  config = {
      'model_type': 'llama',
      'vocab_size': _integer(reader, 'llama.vocab_size', path, embed_rows),
      'hidden_size': _integer(reader, 'llama.embedding_length', path),
      'num_hidden_layers': _integer(reader, 'llama.block_count', path),
      'num_attention_heads': heads, 'num_key_value_heads': kv_heads,
      'intermediate_size': _integer(reader, 'llama.feed_forward_length',
                                    path),
      'rms_norm_eps': _decimal(_typed(
          reader, 'llama.attention.layer_norm_rms_epsilon', path, _NUMBERS,
          None)),
      'rope_theta': _decimal(_typed(reader, 'llama.rope.freq_base', path,
                                    _NUMBERS, 10_000.0)),
      'max_position_embeddings': _integer(reader, 'llama.context_length',
                                          path, 2048),
      'tie_word_embeddings': 'lm_head.weight' not in tensors,
      'hidden_act': 'silu'}
  if _field(reader, 'llama.rope.scaling.type', 'none') not in ('none',):
    config['rope_scaling'] = _field(reader, 'llama.rope.scaling.type')
  return config, tensors, _tokenizer(reader, path)


# llama.cpp's pre-tokenizer names for byte-level BPE files: which splits
# come before the GPT-2 byte-level regex.
_PRE_TOKENIZERS = {
    'gpt2': [], 'default': [],
    'smollm': [hf_tokenizers.pre_tokenizers.Digits(individual_digits=True)],
}


def _tokenizer(reader: gguf.GGUFReader, path: str) -> tokenizers.HfTokenizer:
  kind = _field(reader, 'tokenizer.ggml.model')
  pre = _field(reader, 'tokenizer.ggml.pre', 'default')
  if kind != 'gpt2' or pre not in _PRE_TOKENIZERS:
    raise UsageError(f'{path} has a {kind!r} tokenizer with pre-tokenizer '
                     f'{pre!r}; lm reads byte-level BPE (gpt2) with '
                     f'pre-tokenizer {sorted(_PRE_TOKENIZERS)}')
  tokens = _required(reader, 'tokenizer.ggml.tokens', path)
  merges = [tuple(m.split(' ', 1)) for m in
            _field(reader, 'tokenizer.ggml.merges', [])]
  types = _required(reader, 'tokenizer.ggml.token_type', path)
  try:
    bpe = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE(
        {t: i for i, t in enumerate(tokens)}, merges))
  except Exception as e:  # pylint: disable=broad-except
    # The tokenizers library raises plain Exception for a bad vocabulary.
    raise UsageError(f'{path} holds a tokenizer that does not build: '
                     f'{str(e)[:200]}') from e
  byte_level = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                      use_regex=True)
  bpe.pre_tokenizer = hf_tokenizers.pre_tokenizers.Sequence(
      _PRE_TOKENIZERS[pre] + [byte_level])
  bpe.decoder = hf_tokenizers.decoders.ByteLevel()
  control = int(gguf.TokenType.CONTROL)
  bpe.add_special_tokens([hf_tokenizers.AddedToken(t, special=True)
                          for t, kind in zip(tokens, types) if kind == control])
  eos = _integer(reader, 'tokenizer.ggml.eos_token_id', path)
  return tokenizers.HfTokenizer(
      bpe, pad_id=_integer(reader, 'tokenizer.ggml.padding_token_id', path,
                           eos),
      bos_id=_integer(reader, 'tokenizer.ggml.bos_token_id', path, eos),
      eos_id=eos, chat_template=_field(reader, 'tokenizer.chat_template'))
