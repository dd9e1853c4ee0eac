"""orbax checkpoints of a workdir: params, optimizer/RNG state, data iterator.

Three items per step, so that inference restores params alone:
  params  the model parameters (what generate, evaluate and convert read)
  state   step, optimizer state and RNG key
  data    the grain iterator's state (JSON), so a resumed run sees the same
          batches an uninterrupted one would
Saves are asynchronous; orbax writes each step to a temporary folder and
renames it when complete, so a crash never leaves a half-written step that
looks finished. Each finished step is then sealed with checksums
(lm/io/integrity.py): a step damaged later is found on restore, reported
and moved to `<workdir>/damaged_checkpoints/`, and the one before it is
used. A save that fails (a full disk) leaves the earlier steps as
they were and raises `CheckpointSaveError`.
"""

import dataclasses
import os
import re
import shutil
import threading
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from lm.errors import UsageError
from lm.io import integrity
from lm.io import layout

_ITEMS = ('params', 'state', 'data')


class CheckpointSaveError(UsageError):
  """A checkpoint could not be written (e.g. the disk is full)."""


class Checkpointer:
  """A CheckpointManager over `<workdir>/checkpoints` that seals each step
  it writes with checksums and turns a failed write into one clear error."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self._workdir = os.path.abspath(workdir)
    self._directory = layout.checkpoint_dir(workdir)
    self._unsealed: list[int] = []  # Steps saved here, not yet sealed.
    self._lock = threading.Lock()  # orbax's thread seals them.
    self._closed = False
    async_options = ocp.AsyncOptions(
        post_finalization_callback=self._seal_when_renamed
    ) if async_save else None
    # orbax deletes steps past the latest `max_to_keep` in its own thread,
    # while a step of ours may still be sealing: the manifest written into
    # a folder being deleted made its rmtree fail ("Directory not empty").
    # A step is kept until it is sealed.
    keep = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(max_to_keep), _KeepUnsealed(self)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=keep, enable_async_checkpointing=async_save,
        create=not read_only, read_only=read_only,
        async_options=async_options,
        # What a killed or failed save left is removed when training starts.
        cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(
        self._directory, item_names=_ITEMS, options=options)

  def latest_step(self) -> int | None:
    step = self._manager.latest_step()
    if step is not None and step > layout.MAX_STEP:  # Not lm's folder.
      raise UsageError(f'{self.step_dir(step)} is not a checkpoint lm wrote '
                       f'(steps are at most {layout.MAX_STEP:,}); move it '
                       f'out of {self._directory}')
    return step

  def step_dir(self, step: int) -> str:
    return os.path.join(self._directory, str(step))

  def save(self, step: int, params: Any, state: Any | None,
           data_state: dict | None) -> None:
    """`state` None saves params alone (an imported checkpoint)."""
    items = {'params': ocp.args.StandardSave(params)}
    if state is not None:
      items['state'] = ocp.args.StandardSave(state)
    if data_state is not None:
      items['data'] = ocp.args.JsonSave(data_state)
    with self._lock:
      self._unsealed.append(step)
    # An asynchronous save's failure surfaces here, at the next save.
    with _ReportSaveFailure(self):
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def _seal_finished(self) -> None:
    """Seals the steps saved here that orbax has finished (first process
    only: it writes the step's metadata after every process is done)."""
    with self._lock:
      for step in list(self._unsealed):
        if not os.path.isdir(self.step_dir(step)):
          continue  # Not renamed yet: still being written.
        self._unsealed.remove(step)
        if jax.process_index() == 0:
          try:
            integrity.seal(self.step_dir(step))
          except OSError:
            pass  # The step is complete; it stays unchecked (see problem).

  def _seal_when_renamed(self) -> None:
    """orbax's callback: it runs when a save's files are written, before
    orbax adds its metadata and renames the folder. A thread waits for the
    rename and seals then, so that a finished step goes unchecked for
    moments, not until the next save."""

    def wait_and_seal():
      for _ in range(600):  # At most a minute; wait() seals the rest.
        with self._lock:
          pending = [step for step in self._unsealed
                     if not os.path.isdir(self.step_dir(step))]
        if not pending:
          break
        time.sleep(0.1)
      self._seal_finished()

    threading.Thread(target=wait_and_seal, daemon=True).start()

  def _discard_unfinished(self) -> tuple[int | None, int | None]:
    """After a failed save: stops orbax's writers and removes what they
    left. (The first step that did not finish, the latest complete one.)"""
    with self._lock:
      unfinished = [step for step in self._unsealed
                    if not os.path.isdir(self.step_dir(step))]
      self._unsealed.clear()
    try:
      self._manager.close()  # Its other writers may still be running.
    except Exception:  # pylint: disable=broad-except
      pass  # The same failure, reported once by the caller.
    self._closed = True
    complete = []
    for name in os.listdir(self._directory):
      if name.isdigit():
        complete.append(int(name))
      elif '.orbax-checkpoint-tmp' in name:
        # (Writers orbax could not stop may still add files; the next run
        # removes what is left.)
        shutil.rmtree(os.path.join(self._directory, name), ignore_errors=True)
    return min(unfinished, default=None), max(complete, default=None)

  def good_latest_step(self, log: Callable[[str], None]) -> int | None:
    """The latest step whose files match their checksums. Damaged later
    steps are reported with `log` and moved to `<workdir>/damaged_checkpoints`,
    so that training can write those steps again. (One process of a run
    calls it, and the others `reload`.)"""
    for step in sorted(self._manager.all_steps(), reverse=True):
      problem = integrity.problem(self.step_dir(step))
      if problem is None:
        return step
      where = os.path.join(layout.damaged_dir(self._workdir), str(step))
      while os.path.exists(where):  # Damaged again after a rerun.
        where += '+'
      os.makedirs(os.path.dirname(where), exist_ok=True)
      os.rename(self.step_dir(step), where)
      integrity.forget(self.step_dir(step))
      log(f'Warning: the checkpoint at step {step} is damaged ({problem}); '
          f'moved it to {where} and using the one before it.')
      self._manager.reload()
    return None

  def reload(self) -> None:
    """Rereads the steps on disk (after another process moved some)."""
    self._manager.reload()

  def items(self, step: int) -> set[str]:
    """The items saved at `step` ('params', 'state', 'data'); a step folder
    lm did not write, or cannot read, raises UsageError."""
    try:
      items = set(self._manager.item_metadata(step))
    except (OSError, ValueError) as e:
      raise UsageError(f'the checkpoint at {self.step_dir(step)} cannot be '
                       f'read ({_short_reason(e)})') from e
    if 'params' not in items:
      raise UsageError(
          f'{self.step_dir(step)} is not a checkpoint lm wrote (it holds no '
          'params); move it out of the checkpoints folder')
    return items

  def has_train_state(self, step: int) -> bool:
    """False for params-only checkpoints, such as imported ones."""
    return 'state' in self.items(step)

  def restore(self, step: int, abstract_params: Any, abstract_state: Any
              ) -> tuple[Any, Any, dict | None]:
    """Params, state and data-iterator state (None if none was saved)."""
    items = {'params': ocp.args.StandardRestore(abstract_params),
             'state': ocp.args.StandardRestore(abstract_state)}
    has_data = 'data' in self._manager.item_metadata(step)
    if has_data:
      items['data'] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return (restored['params'], restored['state'],
            restored['data'] if has_data else None)

  def check_shapes(self, step: int, abstract_params: Any) -> None:
    """Raises UsageError naming the first parameter whose saved shape
    differs from `abstract_params`' (orbax would read it anyway, padded or
    cut), or that only one of them has."""
    path = os.path.join(self.step_dir(step), 'params')
    try:
      saved = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    except (OSError, ValueError, AttributeError) as e:
      raise UsageError(f'the params at {path} cannot be read '
                       f'({_short_reason(e)})') from e
    saved = {_name(k): tuple(v.shape) for k, v in
             jax.tree_util.tree_flatten_with_path(saved)[0]}
    wanted = {_name(k): tuple(v.shape) for k, v in
              jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    for name in sorted(saved.keys() | wanted.keys()):
      if saved.get(name) != wanted.get(name):
        raise UsageError(
            f'the checkpoint at step {step} does not fit the model its '
            f'config.json describes: {name} is {saved.get(name, "absent")} '
            f'in the checkpoint and {wanted.get(name, "absent")} in the '
            'model (was config.json edited?)')

  def restore_params(self, abstract_params: Any, step: int | None = None):
    step = self.latest_step() if step is None else step
    self.check_shapes(step, abstract_params)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return restored['params']

  def wait(self) -> None:
    with _ReportSaveFailure(self):
      self._manager.wait_until_finished()
    self._seal_finished()  # Synchronous saves have no callback.

  def close(self) -> None:
    """Waits for a save in flight (raising CheckpointSaveError if it
    failed) and stops orbax's threads."""
    if self._closed:
      return
    try:
      self.wait()
    finally:
      if not self._closed:
        self._manager.close()
        self._closed = True


@dataclasses.dataclass
class _KeepUnsealed:
  """orbax's preservation policy that keeps the steps a Checkpointer has
  saved and not sealed yet (it waits for a seal in progress)."""

  checkpointer: Checkpointer

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    with self.checkpointer._lock:  # pylint: disable=protected-access
      unsealed = set(self.checkpointer._unsealed)  # pylint: disable=protected-access
    return [info.step in unsealed for info in checkpoints]


class _ReportSaveFailure:
  """Turns an error of orbax's writers into CheckpointSaveError, after
  removing what the failed save left, and names the step that remains."""

  def __init__(self, checkpointer: Checkpointer):
    self._checkpointer = checkpointer

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if kind is None or not issubclass(kind, Exception) or isinstance(
        error, UsageError):
      return False
    failed, kept = self._checkpointer._discard_unfinished()  # pylint: disable=protected-access
    raise CheckpointSaveError(
        f'saving the checkpoint of step {failed} failed: '
        f'{_short_reason(error)}. '
        + (f'The checkpoint of step {kept} is kept' if kept is not None
           else 'No earlier checkpoint exists')
        + '; free disk space (or fix the cause) and run again to resume'
        ) from error


def _name(path) -> str:
  """'embed/embedding' of a tree path."""
  return '/'.join(str(getattr(key, 'key', getattr(key, 'idx', key)))
                  for key in path)


def _short_reason(error: Exception) -> str:
  """'[Errno 28] No space left on device' from an OSError or from
  tensorstore's long message; else the message's first line."""
  if isinstance(error, OSError) and error.errno:
    return f'[Errno {error.errno}] {os.strerror(error.errno)}'
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if code:
    return f'[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}'
  return (str(error).splitlines() or [type(error).__name__])[0][:300]


def load_params(workdir: str, abstract_params: Any) -> tuple[Any, int]:
  """The latest params of a workdir, for inference; (params, step)."""
  if not os.path.isdir(layout.checkpoint_dir(workdir)):
    raise UsageError(f'{workdir} has no checkpoints; train into it first '
                     '(python -m experiments.train --workdir=...)')
  checkpointer = Checkpointer(workdir, read_only=True)
  # Closed on every path: a refused workdir leaves no manager threads
  # behind in a long-lived process (a server, a test runner).
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise UsageError(f'{workdir} has no complete checkpoint; train into '
                       'it first (python -m experiments.train --workdir=...)')
    # Inference reads the latest step or nothing: quietly scoring an older
    # one would mislabel results.
    problem = integrity.problem(checkpointer.step_dir(step))
    if problem is not None:
      raise UsageError(
          f'the checkpoint at step {step} of {workdir} is damaged '
          f'({problem}); training on the workdir again moves it to '
          f'{layout.DAMAGED}/ and resumes from the step before it')
    checkpointer.items(step)  # Refuses a folder lm did not write.
    params = checkpointer.restore_params(abstract_params, step)
  finally:
    checkpointer.close()
  return params, step
