"""Checksums of a finished checkpoint step, so that damage is found.

orbax makes a step appear only once it is complete (a rename), so a crash
never leaves a half-written step. It does not notice bytes that change
afterwards: a truncated copy, a bad disk, a flipped bit. `seal` writes the
SHA-256 of every file of a finished step into MANIFEST inside it; `problem`
recomputes them. A step without MANIFEST (one written by an older lm, or
one whose writer died between orbax's rename and the sealing) cannot be
checked and is taken as orbax left it.
"""

import hashlib
import json
import os

from lm.io import layout

MANIFEST = layout.CHECKSUMS
_CHUNK = 1 << 20


def _files(step_dir: str) -> list[str]:
  """Every file under `step_dir` but the manifest, relative, sorted."""
  found = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.relpath(os.path.join(root, name), step_dir)
      if path != MANIFEST:
        found.append(path)
  return sorted(found)


def _digest(path: str) -> str:
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      sha.update(chunk)
  return sha.hexdigest()


def seal(step_dir: str) -> None:
  """Writes MANIFEST: {relative path: [size, sha256]} of every file."""
  manifest = {name: [os.path.getsize(os.path.join(step_dir, name)),
                     _digest(os.path.join(step_dir, name))]
              for name in _files(step_dir)}
  path = os.path.join(step_dir, MANIFEST)
  with open(path + '.tmp', 'w') as f:
    json.dump(manifest, f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)  # Never a half-written manifest.


def problem(step_dir: str) -> str | None:
  """What is wrong with a sealed step (a phrase), or None if every file is
  as sealed (or the step was never sealed)."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return f'its {MANIFEST} is unreadable ({e})'
  if not isinstance(manifest, dict):
    return f'its {MANIFEST} is not a file list'
  for name, expected in sorted(manifest.items()):
    file = os.path.join(step_dir, name)
    if not os.path.isfile(file):
      return f'{name} is missing'
    size, sha = expected
    if os.path.getsize(file) != size:
      return f'{name} has {os.path.getsize(file)} bytes, not {size}'
    if _digest(file) != sha:
      return f'{name} does not match its checksum'
  return None
