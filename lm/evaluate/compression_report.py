"""Size, quality and speed of workdirs, side by side (experiments/compress.py
--report).

For each workdir: bytes its latest params take on disk (orbax's files,
metadata included) and in memory, parameter count and
how many are nonzero, validation bits per byte of its own task, and greedy
decode tokens/s (median of five timed calls after a compiling one).
"""

import math
import os
import statistics
import time

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from lm import errors
from lm import restore
from lm.evaluate import score
from lm.infer import generate
from lm.infer import sampling
from lm.io import checkpoint
from lm.io import layout
from lm.model import quantized
from lm.model import registry

_DECODE_BATCH = 4
_REPEATS = 5
_PROMPT = 'ROMEO:\n'


def params_bytes(workdir: str) -> int:
  """Bytes of the latest checkpoint's params item, as written on disk, or of
  the Deep Compression file that holds them."""
  encoded = os.path.join(workdir, layout.DEEP_COMPRESSION)
  if os.path.exists(encoded):
    return os.path.getsize(encoded)
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  step = checkpointer.latest_step()
  checkpointer.close()
  directory = os.path.join(layout.checkpoint_dir(workdir), str(step),
                           'params')
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(directory) for name in names)


def count_weights(params) -> tuple[int, int]:
  """(weights, nonzero weights); an int4 byte holds two weights, and
  quantization scales are not counted."""
  total = nonzero = 0
  for name, leaf in flax.traverse_util.flatten_dict(params, sep='/').items():
    if name.endswith(quantized.SCALE_SUFFIX):
      continue
    leaf = np.asarray(leaf)
    if leaf.dtype == np.uint8:  # packed int4
      nibbles = np.stack([leaf & 0xF, leaf >> 4])
      total += nibbles.size
      nonzero += int(np.count_nonzero(nibbles))
    else:
      total += leaf.size
      nonzero += int(np.count_nonzero(leaf))
  return total, nonzero


def decode_tokens_per_s(restored: restore.Restored,
                        new_tokens: int) -> float:
  model = registry.build_model(restored.model_config)
  prompt = restored.tokenizer.encode(_PROMPT)
  # A short context takes fewer new tokens.
  new_tokens = min(new_tokens,
                   restored.model_config.context_limit - len(prompt))
  kwargs = dict(sampling=sampling.SamplingConfig(max_new_tokens=new_tokens,
                                                 temperature=0.0),
                rng=jax.random.key(0), eos_id=None,
                max_len=restored.model_config.context_limit)
  prompts = [prompt] * _DECODE_BATCH
  generate.generate(model, restored.params, prompts, **kwargs)  # compiles
  seconds = []
  for _ in range(_REPEATS):
    start = time.perf_counter()
    generate.generate(model, restored.params, prompts, **kwargs)
    seconds.append(time.perf_counter() - start)
  return _DECODE_BATCH * new_tokens / statistics.median(seconds)


def measure(workdir: str, defaults: ml_collections.ConfigDict,
            new_tokens: int = 96) -> dict:
  restored = restore.workdir(workdir)
  model_config = restored.model_config
  weights, nonzero = count_weights(restored.params)
  result = score.evaluate_workdir(workdir, 'validation', {}, defaults)
  row = {'workdir': workdir, 'quant': model_config.quant,
         'layers': model_config.num_layers,
         'params_bytes': params_bytes(workdir),
         'array_bytes': sum(x.nbytes for x in jax.tree.leaves(
             restored.params)), 'weights': weights,
         'nonzero': nonzero,
         'bits_per_byte': result['metrics'].get('bits_per_byte', math.nan)}
  if (registry.get(model_config.family).generates
      and not model_config.num_classes):
    row['decode_tokens_per_s'] = decode_tokens_per_s(restored, new_tokens)
  return row


def markdown(rows: list[dict], names: list[str]) -> str:
  base_bpb = rows[0]['bits_per_byte']
  lines = ['| model | params on disk | in memory | weights (nonzero) | '
           'val bits/byte | vs first | decode tokens/s |', '|' + ' --- |' * 7]
  for name, row in zip(names, rows):
    lines.append(
        f"| {name} | {row['params_bytes'] / 2**20:.2f} MiB | "
        f"{row['array_bytes'] / 2**20:.2f} MiB | "
        f"{row['weights']:,} ({row['nonzero'] / row['weights']:.0%}) | "
        f"{row['bits_per_byte']:.4f} | "
        f"{100 * (row['bits_per_byte'] / base_bpb - 1):+.2f}% | "
        f"{row.get('decode_tokens_per_s', math.nan):,.0f} |")
  return '\n'.join(lines)


def plot(rows: list[dict], names: list[str], path: str, title: str) -> None:
  """Quality vs size (left) and decode speed (right), one PNG."""
  # A Figure of its own, not pyplot's: no global backend is set, so a
  # notebook calling this still shows its own plots inline.
  errors.require('plots', 'matplotlib')
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(11, 4.2))
  left, right = fig.subplots(1, 2)
  # Each point is labelled in place (a legend would hide some of them).
  left.scatter([row['params_bytes'] / 2**20 for row in rows],
               [row['bits_per_byte'] for row in rows], s=40,
               color='tab:blue', label='one workdir')
  for name, row in zip(names, rows):
    left.annotate(name, (row['params_bytes'] / 2**20, row['bits_per_byte']),
                  textcoords='offset points', xytext=(4, 4), fontsize=8)
  left.set_xlabel('params on disk (MiB)')
  left.set_ylabel('validation bits per byte (lower is better)')
  left.set_title('Quality vs size')
  left.legend(fontsize=8, loc='lower right')
  speeds = [row.get('decode_tokens_per_s', 0.0) for row in rows]
  right.bar(range(len(rows)), speeds, color='tab:green',
            label=f'greedy, batch {_DECODE_BATCH}')
  right.set_xticks(range(len(rows)), names, rotation=30, ha='right',
                   fontsize=8)
  right.set_ylabel('decode tokens/s')
  right.set_title('Decoding speed')
  right.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
