"""A run's parts assembled from its config: the mesh, the model, the data,
the optimizer, and the train step compiled for that mesh, with an
lm/evaluate/evaluator.py Evaluator for validation.

`Trainer(config)` checks the config (lm/train/config.py) and that the model
fits the data it builds; lm/train/loop.py runs it, and the benchmarks time
its compiled step. Scoring a trained workdir needs no Trainer.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lm import sharding
from lm.compress import distill as distillation
from lm.evaluate import evaluator as evaluator_lib
from lm.evaluate import privacy_spent
from lm.kernels import attention as attention_kernels
from lm.model import params as model_params
from lm.model import registry
from lm.perf import flops
from lm.perf import memory
from lm.train import config as run_config
from lm.train import optim
from lm.train import steps
from lm.train import warm_start


class Trainer:
  """Model, optimizer, compiled steps and the data of one config."""

  def __init__(self, config: ml_collections.ConfigDict,
               with_data: bool = True, devices=None):
    """`with_data=False` builds the model and compiled steps alone, for
    batches made elsewhere (benchmarks/benchmark.py's random tokens), or
    for `load_data` later. `devices`: the mesh's (default jax.devices()),
    e.g. a TPU topology's to compile for on a CPU
    (experiments/compile.py)."""
    self.config = config
    self.model_config = run_config.validate(config)
    self.mesh = self._make_mesh(config, devices)
    self.model = registry.build_model(self.model_config)
    self.evaluator = None
    if with_data:
      self.load_data()
    # Traced once: the optimizer reads what the model says of its
    # parameters; the shardings and restoring read the state's boxes.
    boxed_params = model_params.logical_abstract_params(self.model)
    optimizer_for = functools.partial(
        optim.make_optimizer, config, self.model_config,
        described=model_params.describe(boxed_params))
    schedule_values = optim.schedule_values(config.optim,
                                            config.train.num_steps)
    self.optimizer = optimizer_for(optim.warmup_cosine(schedule_values))
    self._boxed_state = self._abstract_boxed_state(boxed_params)
    self.state_shardings = sharding.logical_shardings(self._boxed_state,
                                                      self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    # The schedule's numbers are the step's third argument (so a run's
    # length and rate are not compiled in); a teacher's params the fourth,
    # laid out on the mesh as its own training would.
    replicated = sharding.replicated(self.mesh)
    self._step_args = (schedule_values,)
    distill, teacher_shardings = None, ()
    if config.distill.teacher:
      distill, teacher_params = distillation.load_teacher(config.distill,
                                                          self.model_config)
      teacher_shardings = (sharding.logical_shardings(
          model_params.logical_abstract_params(distill.teacher), self.mesh),)
      self._step_args += (jax.device_put(teacher_params,
                                         teacher_shardings[0]),)
    self._train_step_jit = jax.jit(
        functools.partial(steps.train_step, model=self.model,
                          optimizer_for=optimizer_for,
                          dp_clip=(config.privacy.l2_clip
                                   if config.privacy.dp_sgd else 0.0),
                          dp_microbatch=config.privacy.microbatch,
                          accum_steps=config.train.grad_accum_steps,
                          distill=distill,
                          trainable=optim.trainable_leaves(
                              config, self.model_config,
                              nn.unbox(self._boxed_state.params))),
        in_shardings=(self.state_shardings, self.batch_sharding,
                      replicated) + teacher_shardings,
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=0)
    self._train_step = sharding.with_rules(self._train_step_jit, self.mesh)

  def load_data(self):
    """Builds the data (checking that the model fits it) and the
    evaluator of its validation batches."""
    # Imported here: the data stack is not installed where the benchmark
    # runs (with_data=False).
    from lm.data import build  # pylint: disable=g-import-not-at-top
    data = evaluator_lib.load_data(
        self.config, self.model_config,
        functools.partial(build.tokenizer, self.config.data))
    self.evaluator = evaluator_lib.Evaluator(
        self.config, self.model_config, self.model, self.mesh, data)

  @property
  def data(self):
    return self.evaluator.data

  def _make_mesh(self, config, devices):
    """The mesh, after checking that the batches split over it."""
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    processes = jax.process_count()
    accum = config.train.grad_accum_steps
    sharding.check_batch(config.data.batch_size // accum, mesh,
                         'data.batch_size / train.grad_accum_steps'
                         if accum > 1 else 'data.batch_size', processes)
    sharding.check_batch(config.data.eval_batch_size, mesh,
                         'data.eval_batch_size', processes)
    return mesh

  def _abstract_boxed_state(self, boxed_params) -> steps.TrainState:
    """The train state's shapes, its parameters (and their optimizer
    moments) boxed with logical axis names."""

    def state(params):
      return steps.TrainState(step=jnp.int32(0), params=params,
                              opt_state=self.optimizer.init(params),
                              rng=jax.random.PRNGKey(0))

    return jax.eval_shape(state, boxed_params)

  def abstract_state(self) -> steps.TrainState:
    """Shapes, dtypes and shardings of the train state (for restoring)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(self._boxed_state), self.state_shardings)

  def put_batch(self, batch):
    """This process's rows of a batch -> global arrays on the mesh."""
    return sharding.put_batch(batch, self.batch_sharding)

  def train_step(self, state: steps.TrainState, batch):
    """One update on a batch of this process's rows (host arrays)."""
    return self._train_step(state, self.put_batch(batch), *self._step_args)

  def step_memory(self) -> dict[str, int]:
    """Bytes of the compiled train step (see memory_sizes) for the data's
    batches."""
    local = next(iter(self.data.train.to_iter_dataset()))
    batch = {k: jax.ShapeDtypeStruct(
        (v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype,
        sharding=self.batch_sharding) for k, v in local.items()}
    state = self.abstract_state()  # (Outside the mesh context: see it.)
    return memory.memory_sizes(self.compile_train_step(state, batch))

  def attention_kernel(self) -> str:
    """Which kernels compute attention at data.seq_len, as the model's own
    layers choose them in a trace (shapes only), and why not the one
    model.attention asked for where it cannot serve (a line)."""
    with attention_kernels.recording() as calls:
      model_params.logical_abstract_params(self.model,
                                           self.config.data.seq_len)
    if not calls:
      return 'none (the model has no attention)'
    return ', '.join(dict.fromkeys(
        kernel + (f' ({note})' if note else '') for kernel, note in calls))

  def flops_per_token(self) -> float:
    """Model FLOPs per trained token at data.seq_len (lm/perf/flops.py)."""
    return flops.train_flops_per_token(
        self.model_config, self.config.data.seq_len,
        nn.unbox(self._boxed_state.params))

  def compile_train_step(self, state, batch):
    """The train step compiled ahead of time for global `state` and `batch`
    (arrays or their shapes): call it as
    `compiled(state, batch, *trainer.step_args)`."""
    with sharding.activation_rules(self.mesh):
      return self._train_step_jit.lower(state, batch,
                                        *self._step_args).compile()

  @property
  def step_args(self) -> tuple:
    """The train step's arguments after the batch: the schedule's numbers,
    then a distillation teacher's params if any."""
    return self._step_args

  def init_state(self, params=None) -> steps.TrainState:
    """Step 0: fresh parameters, or `params` (e.g. from init_from)."""
    init_rng, rng = self._init_rngs()

    @functools.partial(jax.jit, out_shardings=self.state_shardings)
    def init(init_rng, rng, params):
      if params is None:
        params = model_params.init_params(self.model, init_rng)
      return steps.TrainState(step=jnp.int32(0), params=params,
                              opt_state=self.optimizer.init(params), rng=rng)

    return init(init_rng, rng, params)

  def _init_rngs(self):
    """(parameter-init key, training key), both from train.seed."""
    return jax.random.split(jax.random.PRNGKey(self.config.train.seed))

  def init_from(self, workdir: str) -> tuple[steps.TrainState, str]:
    """Step 0 with the params of another workdir (trained or imported);
    and a line saying which parameters start fresh (lm/train/warm_start.py).
    """
    fresh = jax.jit(model_params.init_params, static_argnums=0)(
        self.model, self._init_rngs()[0])
    params, message = warm_start.params_from(
        workdir, self.model_config, fresh, self.config.data.objective)
    return self.init_state(params), message

  def privacy_spent(self, num_steps: int) -> dict | None:
    """DP-SGD's (epsilon, delta) after `num_steps`; None for non-private
    runs."""
    return privacy_spent.of_run(self.config, num_steps,
                                self.data.train_examples)

  def evaluate(self, params) -> dict[str, float]:
    """Metrics on the first train.eval_steps validation batches (all for
    0): what training reports; experiments/evaluate.py scores whole
    splits."""
    return self.evaluator.evaluate(params,
                                   max_batches=self.config.train.eval_steps)
