r"""Trains a model from a config; resumes from --workdir if it has checkpoints.

  python -m experiments.train --config=configs/default.py \
      --workdir=workdirs/default [--config.train.num_steps=2000]

Prints one line per log step (and, in a terminal, a live progress line),
evaluates on the validation split and prints samples there, saves orbax
checkpoints and TensorBoard files in --workdir, and ends with the final
validation metrics (val_bits_per_byte=...). SIGTERM or
Ctrl-C saves a checkpoint at the current step and exits with code 0; the
same command resumes. With
--evaluate=SPLIT it then scores the model on that split as
experiments/evaluate.py does (generating text for text-to-text tasks).

Multi-host: start the same command on every host with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or
--distributed alone where a launcher's environment says it: SLURM, Open
MPI, Cloud TPU); jax.distributed joins them into one mesh. Each process
reads its rows of every batch, all write the checkpoint together, and the
first one logs.
"""

import time

from absl import flags
import jax
from ml_collections import config_flags

from configs import base
from experiments import cli
from lm import progress
from lm.evaluate import score as evaluation
from lm.io import preemption
from lm.kernels import allocator
from lm.kernels import platform
from lm.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/default.py[:preset].')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, logs and samples go.', required=True)
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process run (jax.distributed); with '
    'no --coordinator_address, the launcher environment says where.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'HOST:PORT of process 0 in a multi-process '
    'run (implies --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   "This process's index in [0, N).")
_EVALUATE = flags.DEFINE_string(
    'evaluate', '', "After training, evaluate on this split ('validation' or "
    "'test') as experiments/evaluate.py does.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  # (The devices are known once a multi-process run is joined; the Trainer
  # checks the mesh against them.)
  config = cli.get_config(_CONFIG, check_devices=False)
  workdir = _WORKDIR.value
  if not (_DISTRIBUTED.value or _COORDINATOR.value) and (
      _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None):
    cli.fail('--num_processes and --process_id join a multi-process run; '
             'give --coordinator_address=HOST:PORT (or --distributed) too')
  if _DISTRIBUTED.value or _COORDINATOR.value:
    cli.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
    if _EVALUATE.value:
      cli.fail('--evaluate runs on one process; run experiments/evaluate.py '
               'after the multi-process run')
  primary = jax.process_index() == 0
  if primary:
    print(f'lm on JAX {jax.__version__}, {platform.current()} backend '
          f'({jax.device_count()} devices); memory: {allocator.describe()}',
          flush=True)
    print(config, flush=True)
  started = time.perf_counter()
  try:
    final = loop.train_and_evaluate(
        config, workdir, log=lambda line: print(line, flush=True),
        progress=progress.for_output() if primary else None)
  except preemption.Preempted as stopped:
    # Not a failure: schedulers retry a job that exits 0 after preemption
    # the same way, and the retry resumes.
    if primary:
      print(f'Stopped: {stopped}', flush=True)
    return
  if not primary:
    return
  if jax.process_count() > 1 and config.data.objective == 'causal':
    print('(samples: run experiments/generate.py on one process)')
  print(f'took {progress.format_seconds(time.perf_counter() - started)} '
        '(data, compilation, training, evaluation and samples)', flush=True)
  # The last line: what scripts and people read for the result.
  print('final: ' + ' '.join(f'val_{k}={v:.4f}' for k, v in final.items()),
        flush=True)
  if _EVALUATE.value:
    result = evaluation.evaluate_workdir(workdir, _EVALUATE.value, {},
                                         base.get_base_config())
    print(evaluation.markdown_table(result))
    print(f'Wrote {result["path"]}', flush=True)


if __name__ == '__main__':
  cli.run(main)
