r"""Compiles a config's programs for a TPU slice, on this machine.

  python -m experiments.compile --config=configs/bench/llama_gpu.py \
      --topology=v5e:4x4

The TPU compiler (the `tpu-compile` extra: .venv/bin/pip install -c
constraints.txt -e '.[tpu-compile]') compiles the config's train step with
its mesh laid over the slice's chips (mesh.shape as for a real run: -1
takes the chips the other axes leave), and the model's decoding (prefill
and the decode loop, on one chip, bench.decode_batch rows of
bench.prompt_len + bench.new_tokens tokens). Nothing runs. One JSON line
per program: each chip's bytes (XLA's memory analysis: arguments, outputs,
temporaries, their peak) against its HBM, whether it fits and by how much,
XLA's FLOPs, the attention kernel in the compiled program, and the compile
time; a program too large for a chip gets `"fits": false` and the
compiler's statement of what it needed. Causal decoders only (causal-LM
batches of data.batch_size x data.seq_len tokens).
"""

import json
import time

from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
from ml_collections import config_flags

from experiments import cli
from lm.infer import generate
from lm.infer import sampling
from lm.kernels import platform
from lm.kernels import tpu_compiler
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.perf import memory
from lm.train.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/bench/llama_gpu.py[:preset].')
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, "The TPU slice, e.g. 'v5e:2x2', 'v5e:4x4', "
    "'v5p:2x2x2', 'v6e:2x4'.")
_PROGRAMS = flags.DEFINE_list('programs', ['train', 'decode'],
                              'Which programs: train, decode.')


def _line(program: str, topology: tpu_compiler.Topology, compiled,
          seconds: float, chips: int) -> dict:
  sizes = memory.memory_sizes(compiled)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  line = {'program': program, 'topology': topology.name,
          'device_kind': topology.device_kind, 'chips': chips, **sizes,
          'peak_gib': round(sizes['peak_bytes'] / 2**30, 3),
          'flops': cost.get('flops'),
          'attention': tpu_compiler.attention_kernels(compiled.as_text()),
          'compile_s': round(seconds, 1)}
  if topology.hbm_bytes:
    line.update(hbm_gib=topology.hbm_bytes / 2**30,
                fits=sizes['peak_bytes'] <= topology.hbm_bytes,
                headroom_gib=round(
                    (topology.hbm_bytes - sizes['peak_bytes']) / 2**30, 3))
  return line


def compile_train(config, topology: tpu_compiler.Topology):
  """(compiled train step, seconds, chips of its mesh)."""
  if config.data.objective != 'causal':
    cli.fail('experiments.compile builds causal-LM batches; this config has '
             f'data.objective={config.data.objective!r}')
  trainer = Trainer(config, with_data=False, devices=topology.devices)
  shape = (config.data.batch_size, config.data.seq_len)
  batch = {key: jax.ShapeDtypeStruct(shape, dtype,
                                     sharding=trainer.batch_sharding)
           for key, dtype in (('inputs', jnp.int32), ('targets', jnp.int32),
                              ('weights', jnp.float32))}
  start = time.perf_counter()
  with platform.lowering_for('tpu'):
    compiled = trainer.compile_train_step(trainer.abstract_state(), batch)
  return compiled, time.perf_counter() - start, trainer.mesh.size


def compile_decode(config, topology: tpu_compiler.Topology):
  """(compiled prefill + decode loop on one chip, seconds, 1)."""
  bench = config.bench
  model = registry.build_model(ModelConfig.from_config(config.model))
  chip = SingleDeviceSharding(topology.devices[0])
  params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=chip),
      model_params.abstract_params(model))
  settings = sampling.SamplingConfig(max_new_tokens=bench.new_tokens,
                                     temperature=0.0)
  rows = bench.decode_batch
  key = jax.eval_shape(lambda: jax.random.key(0))
  start = time.perf_counter()
  with platform.lowering_for('tpu'):
    compiled = generate.generate_program.trace(
        model, settings, -1, None, params,
        jax.ShapeDtypeStruct((rows, bench.prompt_len), jnp.int32,
                             sharding=chip),
        jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=chip),
        jax.ShapeDtypeStruct((), key.dtype, sharding=chip),
    ).lower().compile()
  return compiled, time.perf_counter() - start, 1


_COMPILERS = {'train': compile_train, 'decode': compile_decode}


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  if not _TOPOLOGY.value:
    cli.fail("--topology is required, e.g. --topology=v5e:2x2")
  unknown = sorted(set(_PROGRAMS.value) - set(_COMPILERS))
  if unknown or not _PROGRAMS.value:
    cli.fail(f'--programs: {unknown or "none given"}; give some of '
             f'{sorted(_COMPILERS)}')
  topology = tpu_compiler.topology(_TOPOLOGY.value)
  cli.setup_jax()
  # A TPU executable cannot be read back without a TPU: no cache entries.
  jax.config.update('jax_enable_compilation_cache', False)
  config = cli.get_config(_CONFIG, check_devices=False)
  for program in _PROGRAMS.value:
    try:
      compiled, seconds, chips = _COMPILERS[program](config, topology)
    except jax.errors.JaxRuntimeError as e:
      # The compiler refuses a program larger than a chip's memory, saying
      # by how much: that is this program's line.
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      print(json.dumps({'program': program, 'topology': topology.name,
                        'device_kind': topology.device_kind, 'fits': False,
                        'compiler': str(e).splitlines()[0][:500]}),
            flush=True)
      continue
    print(json.dumps(_line(program, topology, compiled, seconds, chips)),
          flush=True)


if __name__ == '__main__':
  cli.run(main)
