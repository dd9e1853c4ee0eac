"""Differentially private training: DP-SGD (Abadi et al., 2016) and the
(epsilon, delta) it spends.

With `privacy.dp_sgd`, each step takes one gradient per example (a vmap of
the loss over the batch), clips each to L2 norm `l2_clip`, sums them, adds
Gaussian noise of standard deviation `noise_multiplier * l2_clip` and divides
by the batch size -- optax's `differentially_private_aggregate`, put first
in the optimizer chain. What a run has spent is computed by the RDP
accountant of Google's `dp-accounting` for `steps` compositions of the
Poisson-subsampled Gaussian mechanism with sampling rate batch / train
examples. (The pipeline draws fixed-size shuffled batches rather than
Poisson samples; reporting the Poisson figure for it is the usual practice,
and an approximation.) `delta` 0 means 1 / train examples.
"""

import jax
import optax

from lm.errors import UsageError


def validate(privacy_config) -> None:
  settings = privacy_config
  if not settings.dp_sgd:
    return
  if settings.l2_clip <= 0 or settings.noise_multiplier < 0:
    raise UsageError('privacy.l2_clip must be > 0 and privacy.noise_multiplier '
                     f'>= 0, got {settings.l2_clip} and '
                     f'{settings.noise_multiplier}')
  if not 0 <= settings.delta < 1:
    raise UsageError(f'privacy.delta must be in [0, 1), got {settings.delta}')


def aggregator(privacy_config, seed: int) -> optax.GradientTransformation:
  """Clips per-example gradients (leading batch axis), sums, adds noise.

  optax keeps a typed PRNG key in its state; the optimizer state is
  checkpointed, so this keeps the key's raw uint32 data there instead.
  """
  inner = optax.contrib.differentially_private_aggregate(
      privacy_config.l2_clip, privacy_config.noise_multiplier, key=seed)

  def init(params):
    state = inner.init(params)
    return state._replace(rng_key=jax.random.key_data(state.rng_key))

  def update(updates, state, params=None):
    updates, state = inner.update(
        updates, state._replace(rng_key=jax.random.wrap_key_data(
            state.rng_key)), params)
    return updates, state._replace(rng_key=jax.random.key_data(state.rng_key))

  return optax.GradientTransformation(init, update)


def spent(privacy_config, *, steps: int, batch_size: int,
          train_examples: int) -> dict:
  """The (epsilon, delta) of `steps` DP-SGD steps, with their settings."""
  # Imported here: only private runs need dp-accounting (and its scipy).
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=g-import-not-at-top
  settings = privacy_config
  delta = settings.delta or 1.0 / train_examples
  rate = min(1.0, batch_size / train_examples)
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_event.PoissonSampledDpEvent(
      rate, dp_event.GaussianDpEvent(settings.noise_multiplier)), steps)
  return {'epsilon': float(accountant.get_epsilon(delta)), 'delta': delta,
          'noise_multiplier': settings.noise_multiplier,
          'l2_clip': settings.l2_clip,
          'sampling_rate': rate, 'steps': steps,
          'accountant': 'dp-accounting RDP, Poisson-subsampled Gaussian'}
