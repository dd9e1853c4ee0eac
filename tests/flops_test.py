"""Model FLOPs: the formula counts what XLA compiles; the peak is measured."""

import math
import os
import re

import jax
import jax.numpy as jnp
import pytest

from configs import default
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig
from lm.perf import flops
from lm.train import loop


def test_matmul_params_of_the_default_model():
  c = ModelConfig.from_config(default.get_config().model)
  mlp_kernels = 3 if c.gated_mlp else 2
  per_layer = 4 * c.d_model ** 2 + mlp_kernels * c.d_model * c.d_ff
  # The tied table is the output layer; the position table multiplies
  # nothing.
  assert flops.matmul_params(c) == (c.num_layers * per_layer +
                                    c.vocab_size * c.d_model)


def test_an_untied_head_and_experts_count_what_a_token_uses():
  base = dict(vocab_size=100, d_model=16, num_layers=2, num_heads=2, d_ff=32)
  tied = flops.matmul_params(ModelConfig(**base))
  untied = flops.matmul_params(ModelConfig(tie_embeddings=False,
                                                  **base))
  assert untied == tied  # The head kernel stands in for the table.
  moe = flops.matmul_params(ModelConfig(
      num_experts=4, experts_per_token=2, **base))
  router, mlp = 2 * 16 * 4, 2 * 16 * 32
  # Each token goes through two experts: one MLP more per layer.
  assert moe == tied + router + 2 * mlp


@pytest.mark.slow
@pytest.mark.parametrize('family', ['decoder', 'encoder'])
def test_the_formula_matches_xla_cost_analysis(family):
  c = ModelConfig(family=family, vocab_size=512, d_model=128,
                         num_layers=2, num_heads=4, d_ff=512, max_len=256)
  model = registry.build_model(c)
  params = model_params.abstract_params(model)
  seq_len = 256
  tokens = jax.ShapeDtypeStruct((2, seq_len), jnp.int32)
  # Positions passed explicitly keep causal attention whole: the formula
  # counts the scores whole (as PaLM does), which the query blocks of
  # lm/kernels/causal_attention.py partly skip.
  positions = (jnp.broadcast_to(jnp.arange(seq_len), tokens.shape),)
  if family == 'encoder':
    positions = ()  # Not causal: whole already.
  step = jax.jit(jax.grad(
      lambda p, t: model.apply({'params': p}, t, *positions).sum()))
  compiled = step.lower(params, tokens).compile().cost_analysis()
  xla_per_token = compiled['flops'] / (2 * seq_len)
  # XLA also counts norms, softmax and the like; the formula leaves them
  # out.
  assert xla_per_token == pytest.approx(
      flops.train_flops_per_token(c, seq_len), rel=0.1)


def test_the_matmul_peak_is_measured():
  peak = flops.measure_matmul_peak(size=128, repeats=4)
  assert math.isfinite(peak) and peak > 1e8


@pytest.mark.parametrize('kind, peak, bandwidth', [
    ('NVIDIA H200', 989e12, 4.8e12), ('NVIDIA H200 NVL', 835e12, 4.8e12),
    ('NVIDIA H100 80GB HBM3', 989e12, 3.35e12),
    ('NVIDIA H100 PCIe', 756e12, 2.0e12), ('NVIDIA H100 NVL', 835e12, 3.9e12),
    ('NVIDIA A100-SXM4-80GB', 312e12, 2.039e12),
    ('NVIDIA A100-SXM4-40GB', 312e12, 1.555e12),
    ('TPU v5 lite', 197e12, 0.819e12)])
def test_datasheet_peaks_tell_the_cards_apart(kind, peak, bandwidth):
  class FakeDevice:
    device_kind = kind

  assert flops.datasheet_peak(FakeDevice()) == peak
  assert flops.datasheet_peak(FakeDevice(),
                              flops.DATASHEET_BANDWIDTH) == bandwidth


def test_a_cpu_has_no_datasheet_peak():
  assert flops.datasheet_peak(jax.devices('cpu')[0]) is None


def test_a_process_tree_measures_the_peak_once(monkeypatch):
  """The first measurement goes to the environment, which processes
  started later inherit and read instead of timing matmuls again."""
  monkeypatch.setenv('LM_MATMUL_PEAK_FLOAT16', '1234.5')
  flops.peak_flops.cache_clear()
  try:
    assert flops.peak_flops('float16')['measured'] == 1234.5 * (
        jax.process_count())
    monkeypatch.delenv('LM_MATMUL_PEAK_FLOAT16')
    timed = []
    monkeypatch.setattr(flops, 'measure_matmul_peak',
                        lambda dtype, size: timed.append(size) or 2e9)
    flops.peak_flops.cache_clear()
    flops.peak_flops('float16')
    assert timed == [512, 1024]
    assert float(os.environ['LM_MATMUL_PEAK_FLOAT16']) == 2e9
  finally:
    flops.peak_flops.cache_clear()


def test_a_measured_peak_rises_to_a_faster_step():
  peak = flops.Peak(100e9, measured=True)
  assert peak.mfu(50e9) == 0.5 and peak.take_news() is None
  assert peak.mfu(150e9) == 1.0
  assert '100.0 to 150.0 GFLOP/s' in peak.take_news()
  assert peak.take_news() is None  # Said once.
  assert peak.mfu(75e9) == 0.5
  datasheet = flops.Peak(100e9, measured=False)
  assert datasheet.mfu(150e9) == 1.5  # A datasheet is not moved.


@pytest.mark.slow
def test_training_never_logs_mfu_above_one(tiny, tmp_path, monkeypatch):
  # A peak measured while something else had the machine.
  monkeypatch.setattr(flops, 'peak_flops',
                      lambda dtype: {'measured': 1e3, 'datasheet': None})
  lines = []
  loop.train_and_evaluate(tiny, str(tmp_path), log=lines.append)
  mfus = [float(m) for line in lines
          for m in re.findall(r'MFU ([\d.]+)%', line)]
  assert mfus and max(mfus) <= 100.0, mfus
  assert any(line.startswith('MFU peak raised from 0.0 to') for line in lines)
