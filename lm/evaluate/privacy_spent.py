"""The (epsilon, delta) a DP-SGD run (lm/train/privacy.py) has spent.

Computed by the RDP accountant of Google's `dp-accounting` for `steps`
compositions of the Poisson-subsampled Gaussian mechanism with sampling rate
batch / train examples. (The pipeline draws fixed-size shuffled batches
rather than Poisson samples; reporting the Poisson figure for it is the
usual practice, and an approximation.) `delta` 0 means 1 / train examples.
"""

import ml_collections


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


def of_run(config: ml_collections.ConfigDict, steps: int,
           train_examples: int | None) -> dict | None:
  """What the run `config` has spent after `steps`; None where it is not
  private. `train_examples` None (a workdir that predates their record,
  lm/io/train_data_file.py) leaves epsilon unknown, and says why."""
  if not config.privacy.dp_sgd:
    return None
  if train_examples is None:
    return {'unknown': 'the workdir predates the record of its train '
                       'examples (train_data.json), which the sampling '
                       'rate needs'}
  return spent(config.privacy, steps=steps,
               batch_size=config.data.batch_size,
               train_examples=train_examples)
