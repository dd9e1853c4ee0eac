"""A run's parts assembled from its config: the mesh, the model, the data,
the optimizer, and the train and eval steps compiled for that mesh.

`Trainer(config)` checks the config (lm/train/config.py) and that the model
fits the data it builds; lm/train/loop.py runs it, experiments/evaluate.py
and the benchmark use its compiled steps.
"""

import functools
import itertools

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections

from lm import sharding
from lm.compress import distill as distillation
from lm.errors import UsageError
from lm.model import attention
from lm.model import params as model_params
from lm.model import registry
from lm.perf import flops
from lm.perf import memory
from lm.train import config as run_config
from lm.train import optim
from lm.train import privacy
from lm.train import steps
from lm.train import warm_start


class Trainer:
  """Model, optimizer, compiled steps and the data of one config."""

  def __init__(self, config: ml_collections.ConfigDict,
               with_data: bool = True):
    """`with_data=False` builds the model and compiled steps alone, for
    batches made elsewhere (experiments/benchmark.py's random tokens), or
    for `load_data` later."""
    self.config = config
    self.model_config = run_config.validate(config)
    self.mesh = self._make_mesh(config)
    self.model = registry.build_model(self.model_config)
    self.data = self.token_bytes = None
    if with_data:
      self.load_data()
    self.schedule = optim.make_schedule(config.optim, config.train.num_steps)
    self.optimizer = optim.make_optimizer(config, self.model_config,
                                          self.schedule)
    # Traced once: the shardings and restoring both read it.
    self._boxed_state = self._abstract_boxed_state()
    self.state_shardings = sharding.logical_shardings(self._boxed_state,
                                                      self.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    # A teacher's params are a third argument of the step, laid out on the
    # mesh as its own training would (not constants baked into the program).
    distill, self._teacher_args, teacher_shardings = None, (), ()
    if config.distill.teacher:
      distill, teacher_params = distillation.load_teacher(config.distill,
                                                          self.model_config)
      teacher_shardings = (sharding.logical_shardings(
          model_params.logical_abstract_params(distill.teacher), self.mesh),)
      self._teacher_args = (jax.device_put(teacher_params,
                                           teacher_shardings[0]),)
    self._train_step_jit = jax.jit(
        functools.partial(steps.train_step, model=self.model,
                          optimizer=self.optimizer, schedule=self.schedule,
                          dp_clip=(config.privacy.l2_clip
                                   if config.privacy.dp_sgd else 0.0),
                          dp_microbatch=config.privacy.microbatch,
                          accum_steps=config.train.grad_accum_steps,
                          distill=distill,
                          trainable=optim.trainable_leaves(
                              config, self.model_config,
                              nn.unbox(self._boxed_state.params))),
        in_shardings=(self.state_shardings, self.batch_sharding) +
        teacher_shardings,
        out_shardings=(self.state_shardings,
                       sharding.replicated(self.mesh)),
        donate_argnums=0)
    self._train_step = sharding.with_rules(self._train_step_jit, self.mesh)
    self._eval_step = sharding.with_rules(jax.jit(
        functools.partial(steps.eval_step, model=self.model),
        out_shardings=sharding.replicated(self.mesh)), self.mesh)

  def load_data(self):
    """Sets self.data, after checking that the model fits it."""
    # The first process builds (and caches) datasets and tokenizers before
    # the others read them, so that no two write the same files.
    if jax.process_index() == 0:
      self.data = self._make_data()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('lm: data built')
    if jax.process_index() != 0:
      self.data = self._make_data()
    if self.config.data.objective == 'classify':
      self._check_classes()
    self._check_vocab(_data().extra_ids(self.data))
    # Ids past the tokenizer's ([MASK], sentinels) stand for no text.
    self.token_bytes = jnp.zeros(self.model_config.vocab_size, jnp.int32).at[
        :len(self.data.token_bytes)].set(self.data.token_bytes)

  def _make_data(self):
    """This process's share of the data (see lm/data/build.py)."""
    return _data().make(self.config.data, jax.process_index(),
                        jax.process_count())

  def _make_mesh(self, config):
    """The mesh, after checking that the batches split over it."""
    mesh = sharding.make_mesh(config.mesh.shape)
    processes = jax.process_count()
    accum = config.train.grad_accum_steps
    sharding.check_batch(config.data.batch_size // accum, mesh,
                         'data.batch_size / train.grad_accum_steps'
                         if accum > 1 else 'data.batch_size', processes)
    sharding.check_batch(config.data.eval_batch_size, mesh,
                         'data.eval_batch_size', processes)
    return mesh

  def _abstract_boxed_state(self) -> steps.TrainState:
    """The train state's shapes, its parameters (and their optimizer
    moments) boxed with logical axis names."""

    def state(params):
      return steps.TrainState(step=jnp.int32(0), params=params,
                              opt_state=self.optimizer.init(params),
                              rng=jax.random.PRNGKey(0))

    return jax.eval_shape(state,
                          model_params.logical_abstract_params(self.model))

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
    return self._train_step(state, self.put_batch(batch), *self._teacher_args)

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
    """Which kernel computes self-attention at data.seq_len, and why not the
    one model.attention asked for where it cannot serve (a line)."""
    if not registry.get(self.model_config.family).attention_layers(
        self.model_config):
      return 'none (the model has no attention)'
    kernel, note = attention.kernel_for(self.model_config,
                                        self.config.data.seq_len)
    return kernel + (f' ({note})' if note else '')

  def flops_per_token(self) -> float:
    """Model FLOPs per trained token at data.seq_len (lm/perf/flops.py)."""
    return flops.train_flops_per_token(
        self.model_config, self.config.data.seq_len,
        nn.unbox(self._boxed_state.params))

  def compile_train_step(self, state, batch):
    """The train step compiled ahead of time for global `state` and `batch`
    (arrays or their shapes): call it as `compiled(state, batch, *teacher)`
    with `teacher_args`."""
    with sharding.activation_rules(self.mesh):
      return self._train_step_jit.lower(state, batch,
                                        *self._teacher_args).compile()

  @property
  def teacher_args(self) -> tuple:
    """The train step's arguments after the batch (a distillation teacher's
    params, or none)."""
    return self._teacher_args

  def eval_step(self, params, batch, token_bytes_V):
    return self._eval_step(params, self.put_batch(batch), token_bytes_V)

  def _check_classes(self):
    names = self.data.class_names
    if self.model_config.num_classes != len(names):
      raise UsageError(
          f'dataset {self.config.data.name!r} has {len(names)} classes '
          f'({", ".join(names)}) but model.num_classes='
          f'{self.model_config.num_classes}; set it to {len(names)}')

  def _check_vocab(self, extra_ids: int):
    needed = self.data.tokenizer.vocab_size + extra_ids
    if needed > self.model_config.vocab_size:
      raise UsageError(
          f'the tokenizer has {self.data.tokenizer.vocab_size} tokens'
          + (f' and data.objective={self.config.data.objective!r} adds '
             f'{extra_ids}' if extra_ids else '')
          + f', but model.vocab_size={self.model_config.vocab_size}; raise it '
          f'to at least {needed}')

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
    if not self.config.privacy.dp_sgd:
      return None
    return privacy.spent(self.config.privacy, steps=num_steps,
                         batch_size=self.config.data.batch_size,
                         train_examples=self.data.train_examples)

  def eval_batches(self, split: str = 'validation'):
    return _data().evaluation(self.data, split, self.config.data.name)

  def evaluate(self, params, split: str = 'validation') -> dict[str, float]:
    """Metrics on `split`, or on its first train.eval_steps batches (what
    training reports; experiments/evaluate.py scores whole splits)."""
    batches = self.eval_batches(split)
    if self.config.train.eval_steps:
      batches = itertools.islice(batches, self.config.train.eval_steps)
    return steps.evaluate(self.eval_step, params, batches, self.token_bytes)


def _data():
  """lm/data/build.py, imported when a run first reads data: the data stack
  (grain, tensorflow-datasets) is not installed where the benchmark runs."""
  from lm.data import build  # pylint: disable=g-import-not-at-top
  return build
