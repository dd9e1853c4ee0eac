"""Malformed files derived from real ones, for tests/file_fuzz_test.py.

Each mutation knows the structure it breaks: the GGUF container (header,
key/values, tensor descriptions, data), a safetensors header, tokenizer
and model JSON, and a workdir's config, checkpoint and integrity files.
Every function returns {case name: bytes or a callable that makes the
case in a directory}, each case a file (or folder) no script may accept.
"""

import json
import math
import os
import struct

import gguf
import numpy as np

# GGUF value types: struct format of the scalars, 8 = string, 9 = array.
_SCALARS = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?',
            10: 'Q', 11: 'q', 12: 'd'}
_STRING, _ARRAY = 8, 9
HUGE = (2**40, 2**63 - 1, 2**64 - 1)


class GgufLayout:
  """Where each field of a GGUF file (version 3) lies, by byte offset."""

  def __init__(self, data: bytes):
    self.data = data
    self.n_tensors, self.n_kv = struct.unpack_from('<QQ', data, 8)
    self.pos = 24
    self.keys = {}  # key -> dict of offsets: key_len, type, value, end
    for _ in range(self.n_kv):
      start = self.pos
      key = self._string()
      kind_at = self.pos
      kind = self._u32()
      value_at = self.pos
      count_at = element = None
      if kind == _ARRAY:
        element = self._u32()
        count_at = self.pos
        count = self._u64()
        for _ in range(count):
          self._value(element)
      else:
        self._value(kind)
      self.keys[key] = dict(start=start, type=kind_at, value=value_at,
                            kind=kind, count=count_at, element=element,
                            end=self.pos)
    self.tensors = {}  # name -> offsets: start, n_dims, dims, type, offset
    for _ in range(self.n_tensors):
      start = self.pos
      name = self._string()
      n_dims_at = self.pos
      n_dims = self._u32()
      dims_at = self.pos
      self.pos += 8 * n_dims
      type_at = self.pos
      kind = self._u32()
      offset_at = self.pos
      self._u64()
      self.tensors[name] = dict(start=start, n_dims=n_dims_at, dims=dims_at,
                                type=type_at, kind=kind, offset=offset_at)
    self.infos_end = self.pos
    self.data_start = -(-self.pos // 32) * 32

  def _u32(self):
    self.pos += 4
    return struct.unpack_from('<I', self.data, self.pos - 4)[0]

  def _u64(self):
    self.pos += 8
    return struct.unpack_from('<Q', self.data, self.pos - 8)[0]

  def _string(self):
    length = self._u64()
    self.pos += length
    return self.data[self.pos - length:self.pos].decode()

  def _value(self, kind):
    if kind == _STRING:
      self._string()
    else:
      self.pos += struct.calcsize(_SCALARS[kind])

  def tensor_data_at(self, name: str) -> int:
    offset = struct.unpack_from('<Q', self.data, self.tensors[name]['offset'])
    return self.data_start + offset[0]


def _put(data: bytes, at: int, fmt: str, value) -> bytes:
  out = bytearray(data)
  struct.pack_into('<' + fmt, out, at, value)
  return bytes(out)


def write_mini_gguf(real_path: str, path: str, vocab: int = 512) -> None:
  """A small GGUF with the real file's metadata (keys, tokenizer kind,
  special tokens, chat template, the first `vocab` tokens and the merges
  among them) and a 2-layer model of the real file's tensor types."""
  reader = gguf.GGUFReader(real_path)
  sizes = {'llama.block_count': 2, 'llama.context_length': 256,
           'llama.embedding_length': 64, 'llama.feed_forward_length': 128,
           'llama.attention.head_count': 4,
           'llama.attention.head_count_kv': 2,
           'llama.rope.dimension_count': 16, 'llama.vocab_size': vocab}
  writer = gguf.GGUFWriter(path, 'llama')
  tokens = [str(t) for t in reader.fields['tokenizer.ggml.tokens'].contents()
            [:vocab]]
  kept = set(tokens)
  for key, field in reader.fields.items():
    if key.startswith('GGUF.') or key == 'general.architecture':
      continue
    kind = gguf.GGUFValueType(field.types[0])
    value = field.contents()
    if key in sizes:
      value = sizes[key]
    elif key == 'tokenizer.ggml.tokens':
      value = tokens
    elif key == 'tokenizer.ggml.token_type':
      value = value[:vocab]
    elif key == 'tokenizer.ggml.merges':
      value = [m for m in value
               if all(p in kept for p in m.split(' ', 1))
               and m.replace(' ', '', 1) in kept]
    if kind == gguf.GGUFValueType.ARRAY:
      writer.add_array(key, value)
    else:
      writer.add_key_value(key, value, kind)
  rng = np.random.default_rng(0)
  q4, q8 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0

  def add(name, rows, cols, qtype=None):
    w = rng.normal(0, 0.05, (rows, cols)).astype(np.float32)
    if qtype is None:
      writer.add_tensor(name, np.ones(cols, np.float32))
    else:
      writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)

  add('token_embd.weight', vocab, 64, q8)
  for layer in range(2):
    for kind, rows, cols in (('attn_q', 64, 64), ('attn_k', 32, 64),
                             ('attn_v', 32, 64), ('attn_output', 64, 64),
                             ('ffn_gate', 128, 64), ('ffn_up', 128, 64),
                             ('ffn_down', 64, 128)):
      add(f'blk.{layer}.{kind}.weight', rows, cols, q4)
    add(f'blk.{layer}.attn_norm.weight', 1, 64)
    add(f'blk.{layer}.ffn_norm.weight', 1, 64)
  add('output_norm.weight', 1, 64)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def gguf_cases(data: bytes) -> dict[str, bytes]:
  """Mutations of a valid GGUF file's bytes, each one that must be refused:
  a damaged header, truncations, impossible counts and lengths, wrong
  value types, impossible model sizes, broken tensor descriptions, and
  NaN/infinite weights."""
  layout = GgufLayout(data)
  cases = {'magic': b'GGUX' + data[4:], 'empty': b''}
  for version in (0, 1, 4, 2**32 - 1):
    cases[f'version={version}'] = _put(data, 4, 'I', version)
  for count in (0, layout.n_tensors + 1, *HUGE):
    cases[f'tensor_count={count}'] = _put(data, 8, 'Q', count)
  for count in (0, layout.n_kv + 1, *HUGE):
    cases[f'kv_count={count}'] = _put(data, 16, 'Q', count)
  cuts = {1, 4, 8, 16, 23, 24, layout.infos_end - 1, layout.data_start,
          layout.data_start + 7, len(data) // 2, len(data) - 1}
  cuts |= {entry['value'] + 1 for entry in layout.keys.values()}
  cuts |= {entry['type'] + 2 for entry in layout.tensors.values()}
  for cut in sorted(cuts):
    cases[f'truncated at {cut}'] = data[:cut]
  # What the model's size keys may not be: zero, impossible, or absurd.
  sizes = {'llama.block_count': (0, 2**31), 'llama.embedding_length': (
      0, 63, 2**31), 'llama.feed_forward_length': (0, 2**31),
           'llama.attention.head_count': (0, 3, 2**31),
           'llama.attention.head_count_kv': (0, 3, 2**31),
           'llama.context_length': (0,), 'llama.vocab_size': (0, 2**31),
           'tokenizer.ggml.eos_token_id': (2**31,),
           'tokenizer.ggml.bos_token_id': (2**31,),
           'tokenizer.ggml.padding_token_id': (2**31,)}
  for key, values in sizes.items():
    for value in values:
      cases[f'{key}={value}'] = _put(data, layout.keys[key]['value'], 'I',
                                     value)
  for key in ('llama.attention.layer_norm_rms_epsilon',
              'llama.rope.freq_base'):
    for value in (math.nan, math.inf, -1.0, 0.0):
      cases[f'{key}={value}'] = _put(data, layout.keys[key]['value'], 'f',
                                     value)
  for key, entry in layout.keys.items():
    for length in HUGE[:2]:
      cases[f'{key}: key length {length}'] = _put(data, entry['start'], 'Q',
                                                  length)
    cases[f'{key}: value type 99'] = _put(data, entry['type'], 'I', 99)
    if entry['kind'] == _STRING:
      for length in HUGE[:2]:
        cases[f'{key}: string length {length}'] = _put(
            data, entry['value'], 'Q', length)
    if entry['kind'] == _ARRAY:
      cases[f'{key}: element type 99'] = _put(data, entry['value'], 'I', 99)
      for count in HUGE[:2]:
        cases[f'{key}: array of {count}'] = _put(data, entry['count'], 'Q',
                                                 count)
  # Wrong types for the keys the import reads: a string as a number, a
  # number as a string or an array.
  for key in ('general.architecture', 'llama.block_count',
              'llama.attention.head_count', 'tokenizer.ggml.eos_token_id',
              'tokenizer.ggml.model', 'tokenizer.ggml.tokens',
              'tokenizer.chat_template'):
    kind = layout.keys[key]['kind']
    for other in {_STRING, 4, 6, _ARRAY} - {kind}:
      cases[f'{key} read as type {other}'] = _put(
          data, layout.keys[key]['type'], 'I', other)
  names = sorted(layout.tensors)
  for name in names[::3] + ['token_embd.weight']:
    entry = layout.tensors[name]
    cases[f'{name}: name length {HUGE[0]}'] = _put(data, entry['start'], 'Q',
                                                   HUGE[0])
    for n_dims in (0, 5, 1000):
      cases[f'{name}: {n_dims} dims'] = _put(data, entry['n_dims'], 'I',
                                             n_dims)
    for size in (0, 2**40, 2**62):
      cases[f'{name}: dim {size}'] = _put(data, entry['dims'], 'Q', size)
    for kind in (99, int(gguf.GGMLQuantizationType.Q6_K)):
      cases[f'{name}: tensor type {kind}'] = _put(data, entry['type'], 'I',
                                                  kind)
    for offset in (len(data), *HUGE[1:]):
      cases[f'{name}: data offset {offset}'] = _put(data, entry['offset'],
                                                    'Q', offset)
  # Two tensors of the same type and size reading the same bytes.
  first, second = 'blk.0.attn_q.weight', 'blk.1.attn_q.weight'
  shared = struct.unpack_from('<Q', data, layout.tensors[first]['offset'])[0]
  cases[f'{second}: the data of {first}'] = _put(
      data, layout.tensors[second]['offset'], 'Q', shared)
  # Weights that are not numbers: a float32 norm, a Q8_0 and a Q4_1
  # block's float16 scale (0x7e00 is NaN, 0x7c00 infinity).
  norm = layout.tensor_data_at('output_norm.weight')
  embed = layout.tensor_data_at('token_embd.weight')
  q4_1 = layout.tensor_data_at('blk.1.ffn_up.weight')
  cases['NaN in output_norm.weight'] = _put(data, norm + 8, 'f', math.nan)
  cases['inf in output_norm.weight'] = _put(data, norm, 'f', -math.inf)
  cases['NaN scale in token_embd.weight'] = _put(data, embed + 34 * 5, 'H',
                                                 0x7e00)
  cases['inf scale in blk.1.ffn_up.weight'] = _put(data, q4_1, 'H', 0x7c00)
  cases['NaN minimum in blk.1.ffn_up.weight'] = _put(data, q4_1 + 22, 'H',
                                                     0x7e00)
  return cases


def safetensors_cases(data: bytes) -> dict[str, bytes]:
  """Mutations of a .safetensors file: its header's length, its JSON, each
  tensor's dtype, shape and offsets, truncations and NaN payloads."""
  (length,) = struct.unpack_from('<Q', data, 0)
  header = json.loads(data[8:8 + length])
  body = data[8 + length:]

  def build(new_header, new_body=body):
    raw = json.dumps(new_header).encode()
    return struct.pack('<Q', len(raw)) + raw + new_body

  cases = {f'header length {n}': _put(data, 0, 'Q', n)
           for n in (0, 1, length + 1, len(data), *HUGE)}
  cases.update({'empty': b'', 'header only': data[:8 + length],
                'truncated header': data[:8 + length // 2],
                'truncated data': data[:-4],
                'header not JSON': struct.pack('<Q', 5) + b'{"a":' + body,
                'header a list': build([1, 2]),
                'header null': build(None),
                'header not UTF-8': struct.pack('<Q', 4) + b'\xff\xfe{}' +
                                    body})
  names = [n for n in header if n != '__metadata__']
  for name in names[:4] + names[-2:]:
    entry = header[name]
    mutations = {'dtype X': dict(dtype='X'), 'dtype 7': dict(dtype=7),
                 'shape negative': dict(shape=[-1] + entry['shape'][1:]),
                 'shape huge': dict(shape=[2**40] * len(entry['shape'])),
                 'shape a string': dict(shape='big'),
                 'offsets reversed': dict(
                     data_offsets=entry['data_offsets'][::-1]),
                 'offsets past the end': dict(
                     data_offsets=[0, len(body) + 64]),
                 'offsets huge': dict(data_offsets=[2**62, 2**62 + 8]),
                 'offsets missing': dict(data_offsets=None),
                 'entry a number': None}
    for what, change in mutations.items():
      new = dict(header)
      new[name] = 7 if change is None else {**entry, **change}
      cases[f'{name}: {what}'] = build(new)
    without = {k: v for k, v in header.items() if k != name}
    cases[f'{name}: missing'] = build(without)
    if entry['dtype'] != 'F32':
      continue
    start = entry['data_offsets'][0]
    payload = bytearray(body)
    struct.pack_into('<f', payload, start, math.nan)
    cases[f'{name}: NaN payload'] = build(header, bytes(payload))
  return cases


def json_cases(text: str, required: list[str]) -> dict[str, bytes]:
  """Mutations of a JSON object file: not JSON, the wrong top-level type,
  truncation, and each `required` key removed, nulled or of a wrong type."""
  value = json.loads(text)
  cases = {'not JSON': b'{"a": ', 'a list': b'[1, 2]', 'null': b'null',
           'a number': b'1e400', 'empty object': b'{}', 'empty': b'',
           'binary': bytes(range(256)),
           'truncated': text[:len(text) // 2].encode(),
           'nested a million deep': b'[' * 1_000_000}
  for key in required:
    without = {k: v for k, v in value.items() if k != key}
    cases[f'no {key}'] = json.dumps(without).encode()
    for wrong in (None, 'x', [1], {'a': 1}, -1):
      cases[f'{key}={json.dumps(wrong)}'] = json.dumps(
          {**value, key: wrong}).encode()
  return cases


def write(path: str, content) -> None:
  """Writes bytes to `path`, or lets a callable make it."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if callable(content):
    content(path)
  else:
    with open(path, 'wb') as f:
      f.write(content)


def write_mini_safetensors_dir(real_dir: str, directory: str) -> None:
  """A one-layer, 32-wide model in the real directory's layout: its
  config.json (sizes shrunk), tokenizer.json and tensor names."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  os.makedirs(directory)
  with open(os.path.join(real_dir, 'config.json')) as f:
    config = json.load(f)
  width, inner = config['hidden_size'], config['intermediate_size']
  config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config, f)
  with open(os.path.join(real_dir, 'tokenizer.json'), 'rb') as f:
    tokenizer = f.read()
  with open(os.path.join(directory, 'tokenizer.json'), 'wb') as f:
    f.write(tokenizer)
  with open(os.path.join(real_dir, 'model.safetensors'), 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(length))
  rng = np.random.default_rng(0)
  tensors = {}
  for name, entry in header.items():
    if name == '__metadata__' or '.layer.' in name and '.layer.0.' not in name:
      continue
    shape = [{width: 32, inner: 64}.get(n, n) for n in entry['shape']]
    if entry['dtype'] == 'I64':
      tensors[name] = np.arange(np.prod(shape)).reshape(shape)
    else:
      tensors[name] = rng.normal(0, 0.05, shape).astype(np.float32)
  safetensors_numpy.save_file(tensors, os.path.join(directory,
                                                    'model.safetensors'))
