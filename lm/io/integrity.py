"""Checksums of a finished checkpoint step, so that damage is found.

orbax makes a step appear only once it is complete (a rename), so a crash
never leaves a half-written step. It does not notice bytes that change
afterwards: a truncated copy, a bad disk, a flipped bit. `seal` writes the
SHA-256 of every file of a finished step into MANIFEST inside it, and adds
the step to SEALED beside the steps; `problem` recomputes them. A sealed
step whose MANIFEST is gone is damaged like one with a changed byte:
deleting the file does not switch the check off. A step never sealed (one
written by an older lm, or whose writer died between orbax's rename and
the sealing) cannot be checked and is taken as orbax left it.
"""

import hashlib
import json
import os

from lm.errors import UsageError
from lm.io import files
from lm.io import json_files
from lm.io import layout
from lm.io import paths

MANIFEST = layout.CHECKSUMS
SEALED = layout.SEALED_STEPS
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
  _write_json(path, manifest)  # Never a half-written manifest.
  _record(step_dir, sealed=True)


def forget(step_dir: str) -> None:
  """Takes a step out of SEALED (it was moved aside; its step may be saved
  and sealed again)."""
  _record(step_dir, sealed=False)


def _write_json(path: str, value) -> None:
  files.write_atomic(path, json.dumps(value, indent=0, sort_keys=True))


def _sealed_steps(step_dir: str) -> list[str] | None:
  """The step names SEALED lists beside `step_dir`: [] where it is missing,
  None where it is damaged (then no step can be known not to have been
  sealed)."""
  path = os.path.join(os.path.dirname(os.path.normpath(step_dir)), SEALED)
  if not os.path.lexists(path):
    return []
  try:  # (A FIFO or device there is damage, not a read that blocks.)
    steps = json_files.load(path, 'list of sealed steps', 1 << 20)
  except UsageError:
    return None
  if not (isinstance(steps, list) and all(isinstance(s, (str, int))
                                          for s in steps)):
    return None
  return [str(s) for s in steps]


def _record(step_dir: str, sealed: bool) -> None:
  """Adds the step to SEALED (or takes it out), with the steps that are
  gone (deleted by orbax) left out."""
  step_dir = os.path.normpath(step_dir)
  root, name = os.path.dirname(step_dir), os.path.basename(step_dir)
  listed = _sealed_steps(step_dir)
  if listed is None:  # Damaged: the steps with manifests were sealed.
    listed = [n for n in os.listdir(root)
              if os.path.isfile(os.path.join(root, n, MANIFEST))]
  steps = {step for step in listed
           if os.path.isdir(os.path.join(root, step))} - {name}
  if sealed:
    steps.add(name)
  _write_json(os.path.join(root, SEALED), sorted(steps))


def problem(step_dir: str) -> str | None:
  """What is wrong with a sealed step (a phrase), or None if every file is
  as sealed (or the step was never sealed)."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    sealed = _sealed_steps(step_dir)
    if sealed is None:
      return (f'its {MANIFEST} is missing, and {SEALED}, which says whether '
              'it was sealed, is damaged')
    if os.path.basename(os.path.normpath(step_dir)) in sealed:
      return f'it was sealed, and its {MANIFEST} is missing'
    return None
  try:
    manifest = json_files.load(path, 'checksum file')
  except UsageError as e:
    return f'its {MANIFEST} is unreadable ({e})'
  if not isinstance(manifest, dict):
    return f'its {MANIFEST} is not a file list'
  if not manifest and _files(step_dir):  # An emptied one checks nothing.
    return f'its {MANIFEST} lists no files'
  for name, expected in sorted(manifest.items()):
    if not (isinstance(expected, list) and len(expected) == 2
            and isinstance(expected[0], int) and isinstance(expected[1], str)):
      return f'its {MANIFEST} has a malformed entry for {name[:100]}'
    file = os.path.join(step_dir, name)
    # Only the step's own files are hashed: not one outside it (through
    # '..', an absolute path or a link), which could be any size.
    if not paths.within(file, step_dir) or os.path.islink(file):
      return f'its {MANIFEST} names {name[:100]!r}, not a file of the step'
    if not os.path.isfile(file):
      return f'{name} is missing'
    size, sha = expected
    if os.path.getsize(file) != size:
      return f'{name} has {os.path.getsize(file)} bytes, not {size}'
    if _digest(file) != sha:
      return f'{name} does not match its checksum'
  return None
