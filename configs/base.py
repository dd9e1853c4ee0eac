"""Defaults shared by every config: data, optimizer, training loop, sampling.

Not a job by itself: presets start from `get_base_config()` and set the model.
Every key a run can take appears here, so overrides of unknown keys fail.
"""

import dataclasses

import ml_collections

from lm.model import config as model_config


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Architecture: lm/model/config.py ModelConfig holds every key, its
  # default and what it means; presets override some.
  config.model = ml_collections.ConfigDict(
      dataclasses.asdict(model_config.ModelConfig()))

  config.data = ml_collections.ConfigDict(dict(
      name='shakespeare',
      data_dir='',  # '' means the tfds default (~/tensorflow_datasets)
      # 'sentencepiece', 'byte', or a directory holding a tokenizer
      tokenizer='sentencepiece',
      vocab_size=2048,  # SentencePiece vocabulary trained on the train split
      seq_len=256, batch_size=32, eval_batch_size=32, shuffle_seed=0,
      # lm/data/objectives.py: 'causal' (decoder), 'masked' (encoder) or
      # 'span' (encoder_decoder), with their corruption rates; or 'classify'
      # (lm/data/classification.py) for a labelled dataset; or 'seq2seq'
      # (encoder_decoder) / 'instruct' (decoder) for a dataset of text pairs
      # (lm/data/text_pairs.py), whose targets have up to target_len tokens
      # (0: seq_len) and whose decoder prompt is `prompt`.
      objective='causal', mask_rate=0.15, noise_density=0.15,
      mean_span_length=3.0, target_len=0, prompt='{source}\n',
      # Training-time augmentation of classification text, rates in [0, 1)
      # (lm/data/augment.py); 0 turns an operation off.
      augment=ml_collections.ConfigDict(dict(
          synonym=0.0, delete=0.0, swap=0.0, token_mask=0.0))))

  config.optim = ml_collections.ConfigDict(dict(
      # adamw, adam, sgd, adafactor, lion or muon (lm/train/optim.py).
      name='adamw',
      # Linear warmup to the peak rate, cosine decay to min_lr_ratio of it;
      # the moments' decay rates (adam, adamw, lion), weight decay (matrices
      # only) and global gradient-norm clipping.
      learning_rate=3e-3, warmup_steps=100, min_lr_ratio=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
      # sgd only: heavy-ball momentum (0: plain SGD), Nesterov's form.
      momentum=0.9, nesterov=False,
      # By parameter name (lm/train/optim.py): regexes of frozen parameters,
      # (regex, factor) learning-rate scales, layer-wise decay (1: off).
      freeze=(), lr_scale=(), layer_decay=1.0))

  # Magnitude pruning during training (lm/compress/prune.py): 'unstructured'
  # or 'N:M' (e.g. '2:4'), reaching `sparsity` (unstructured) on a cubic
  # schedule from start_step to end_step, masks updated every `every` steps.
  config.prune = ml_collections.ConfigDict(dict(
      pattern='none', sparsity=0.5, start_step=0, end_step=0, every=10,
      targets=r'.*kernel'))

  # Distillation (lm/compress/distill.py): a teacher workdir with the same
  # vocabulary; loss (1 - alpha) * hard + alpha * T^2 * KL at temperature T.
  config.distill = ml_collections.ConfigDict(dict(
      teacher='', temperature=2.0, alpha=0.5))

  config.train = ml_collections.ConfigDict(dict(
      num_steps=1000, seed=0, log_every=50, eval_every=500,
      checkpoint_every=500, keep_checkpoints=3, grad_accum_steps=1,
      # Batches per evaluation during training (0: the whole split).
      eval_steps=0,
      # Steps traced by jax.profiler into <workdir>/profile, from the third
      # step of the run on (0: none).
      profile_steps=0,
      # A step with a non-finite loss or gradient leaves the parameters as
      # they were; this many in a row stop the run (its latest checkpoint
      # holds the last good state).
      max_nonfinite_steps=10,
      # Weight histograms in TensorBoard at each evaluation (params/*).
      histograms=False))

  # Devices as a data x fsdp x tensor x expert mesh (lm/sharding.py); -1
  # takes the devices the other axes leave, so the default is data
  # parallelism over every device.
  config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1, 1)))

  # A workdir (trained or imported) whose params start this run; parameters
  # the model has and it lacks (a classification head) start fresh.
  config.init_from = ''

  # DP-SGD (lm/train/privacy.py): per-example clipping to l2_clip, Gaussian
  # noise of noise_multiplier * l2_clip; delta 0 means 1 / train examples.
  # Per-example gradients are formed `microbatch` examples at a time (0:
  # the whole batch), which bounds their memory.
  config.privacy = ml_collections.ConfigDict(dict(
      dp_sgd=False, l2_clip=1.0, noise_multiplier=1.0, delta=0.0,
      microbatch=8))

  # How experiments/evaluate.py writes text for text-pair tasks: beam search
  # for encoder-decoder models (beam_size 1 is greedy), greedy for decoders;
  # max_examples > 0 scores only the split's first examples by generation,
  # max_batches > 0 only its first batches by loss (every task).
  config.evaluate = ml_collections.ConfigDict(dict(
      beam_size=4, length_penalty=0.6, batch_size=64, max_examples=0,
      max_batches=0))

  # benchmarks/benchmark.py: timed train steps after warm-up ones, and
  # generation of new_tokens after prompts of prompt_len, decode_batch rows
  # (the median of decode_repeats timed calls).
  config.bench = ml_collections.ConfigDict(dict(
      steps=10, warmup_steps=2, decode_batch=8, prompt_len=64,
      new_tokens=128, decode_repeats=5))

  # Samples of a causal language model at each evaluation (with at_eval):
  # printed, and written to TensorBoard as text (samples/<i>).
  config.sample = ml_collections.ConfigDict(dict(
      prompts=('ROMEO:\n', 'JULIET:\n'), max_new_tokens=96, temperature=0.8,
      top_k=40, top_p=1.0, seed=0, at_eval=True))
  return config
