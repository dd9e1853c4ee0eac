"""Deep Compression (Han et al., 2016): prune, share weights, Huffman-code.

For each dense kernel and embedding table of a (pruned) model:
  1. its nonzero weights are clustered by 1-D k-means (linear initialization
     over [min, max], as the paper found best) into 2**bits shared values;
  2. what is stored is the codebook (float32), the cluster index of each
     nonzero weight and the gap between consecutive nonzero positions, both
     Huffman-coded (canonical codes; their code lengths are stored too).
Other parameters (embeddings, norms, biases) are stored as float32. The
result is one .npz file whose size on disk is the compressed size; `decode`
reads it back into float parameters, so the reported quality is that of
what the file holds. (The paper also retrains the shared values; this
does not.)
"""

import heapq
import io
import json
import re
from typing import Any

import flax.traverse_util
import numpy as np

from lm.errors import UsageError
from lm.io import files

# Dense kernels and embedding tables (not pruned, but shared and coded).
TARGETS = r'.*(kernel|embedding)'


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30
              ) -> tuple[np.ndarray, np.ndarray]:
  """(codebook [k'] sorted, index of each value); k' <= k distinct values."""
  k = min(k, len(np.unique(values)))
  centroids = np.linspace(values.min(), values.max(), k)
  for _ in range(iters):
    boundaries = (centroids[1:] + centroids[:-1]) / 2
    assign = np.searchsorted(boundaries, values)
    sums = np.bincount(assign, values, minlength=k)
    counts = np.bincount(assign, minlength=k)
    moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    if np.allclose(moved, centroids):
      break
    centroids = np.sort(moved)
  boundaries = (centroids[1:] + centroids[:-1]) / 2
  return centroids.astype(np.float32), np.searchsorted(boundaries, values)


def huffman_lengths(symbols: np.ndarray) -> dict[int, int]:
  """Code length of each distinct symbol, from their frequencies."""
  values, counts = np.unique(symbols, return_counts=True)
  if len(values) == 1:
    return {int(values[0]): 1}
  heap = [(int(c), i, [int(v)]) for i, (v, c) in enumerate(zip(values,
                                                              counts))]
  heapq.heapify(heap)
  lengths = {int(v): 0 for v in values}
  tie = len(heap)
  while len(heap) > 1:
    c1, _, s1 = heapq.heappop(heap)
    c2, _, s2 = heapq.heappop(heap)
    for s in s1 + s2:
      lengths[s] += 1
    heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
    tie += 1
  return lengths


def _canonical(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
  """symbol -> (code, length), canonical order: by length, then symbol."""
  codes, code, previous = {}, 0, 0
  for symbol, length in sorted(lengths.items(), key=lambda x: (x[1], x[0])):
    code <<= length - previous
    codes[symbol] = (code, length)
    code, previous = code + 1, length
  return codes


def huffman_encode(symbols: np.ndarray) -> dict[str, np.ndarray]:
  lengths = huffman_lengths(symbols)
  codes = _canonical(lengths)
  bits = []
  for symbol in symbols.tolist():
    code, length = codes[symbol]
    bits.append(format(code, f'0{length}b'))
  stream = ''.join(bits)
  packed = np.packbits(np.frombuffer(stream.encode(), np.uint8) - ord('0'))
  keys = np.array(sorted(lengths), np.int64)
  return {'symbols': keys,
          'lengths': np.array([lengths[k] for k in keys], np.uint8),
          'bits': packed, 'count': np.array(len(symbols), np.int64)}


def huffman_decode(encoded: dict[str, np.ndarray]) -> np.ndarray:
  codes = _canonical(dict(zip(encoded['symbols'].tolist(),
                              encoded['lengths'].tolist())))
  by_code = {(length, code): symbol for symbol, (code, length) in
             codes.items()}
  bits = np.unpackbits(encoded['bits']).tolist()
  out, code, length = [], 0, 0
  count = int(encoded['count'])
  for bit in bits:
    code, length = (code << 1) | bit, length + 1
    symbol = by_code.get((length, code))
    if symbol is not None:
      out.append(symbol)
      code = length = 0
      if len(out) == count:
        break
  return np.array(out, np.int64)


def encode(params: Any, targets: str = TARGETS, bits: int = 5,
           path: str | None = None) -> tuple[bytes, dict]:
  """The compressed file's bytes (written to `path` if given) and stats."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  pattern = re.compile(targets)
  arrays, header, coded, coded_bytes = {}, {}, 0, 0
  for i, (name, value) in enumerate(sorted(flat.items())):
    w = np.asarray(value, np.float32)
    header[name] = {'shape': list(w.shape), 'key': str(i)}
    if not pattern.fullmatch(name):
      arrays[f'{i}.raw'] = w
      continue
    flat_w = w.ravel()
    positions = np.flatnonzero(flat_w)
    if not len(positions):
      raise UsageError(f'{name} is all zeros; nothing to compress')
    codebook, index = kmeans_1d(flat_w[positions], 2 ** bits)
    arrays[f'{i}.codebook'] = codebook
    coded_bytes += codebook.nbytes
    parts = [('index', index)]
    if len(positions) < w.size:  # A dense tensor needs no positions.
      parts.append(('gap', np.diff(positions, prepend=-1)))
    for part, symbols in parts:
      for field, array in huffman_encode(symbols).items():
        arrays[f'{i}.{part}.{field}'] = array
        coded_bytes += array.nbytes
    header[name]['coded'] = True
    coded += w.size
  if not coded:
    raise UsageError(f'deep compression targets {targets!r} match no '
                     'parameter')
  buffer = io.BytesIO()
  np.savez(buffer, header=np.frombuffer(json.dumps(header).encode(),
                                        np.uint8), **arrays)
  data = buffer.getvalue()
  if path:
    files.write_atomic(path, data)
  float_bytes = sum(np.asarray(v).size * 4 for v in flat.values())
  # The whole file against float32 params, and the coded tensors alone
  # (their arrays' bytes, without the file's per-array headers).
  return data, {'compressed_bytes': len(data), 'float32_bytes': float_bytes,
                'ratio': float_bytes / len(data), 'bits': bits,
                'coded_ratio': coded * 4 / coded_bytes}


def decode(data: bytes) -> Any:
  """The float params a compressed file holds."""
  archive = np.load(io.BytesIO(data))
  header = json.loads(archive['header'].tobytes())
  flat = {}
  for name, entry in header.items():
    key, shape = entry['key'], tuple(entry['shape'])
    if not entry.get('coded'):
      flat[name] = archive[f'{key}.raw']
      continue

    def part(kind, key=key):
      return huffman_decode({f: archive[f'{key}.{kind}.{f}'] for f in (
          'symbols', 'lengths', 'bits', 'count')})

    size = int(np.prod(shape))
    positions = (np.cumsum(part('gap')) - 1 if f'{key}.gap.bits' in archive
                 else np.arange(size))
    w = np.zeros(size, np.float32)
    w[positions] = archive[f'{key}.codebook'][part('index')]
    flat[name] = w.reshape(shape)
  return flax.traverse_util.unflatten_dict(flat, sep='/')
