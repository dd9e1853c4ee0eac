"""Presets match the published architectures; overrides reach the config."""

from absl import flags
from ml_collections import config_flags
import pytest

import dataclasses

import torch
import transformers

from configs import bert
from configs import default
from configs import gpt2
from configs import llama
from configs import t5
from configs import transformer
from lm.model import params as model_params
from lm.model import registry
from lm.model.config import ModelConfig

PUBLISHED_PARAMS = [
    (gpt2.get_config, 'small', 124_439_808),  # GPT-2 small (OpenAI release)
    (llama.get_config, 'llama2_7b', 6_738_415_616),  # Llama 2 7B
    (llama.get_config, 'smollm2_135m', 134_515_008),  # SmolLM2-135M
]


@pytest.mark.slow
@pytest.mark.parametrize('get_config, preset, expected', PUBLISHED_PARAMS)
def test_preset_parameter_count_equals_published_model(get_config, preset,
                                                       expected):
  config = ModelConfig.from_config(get_config(preset).model)
  model = registry.build_model(config)
  assert model_params.count_params(model_params.abstract_params(model)) == expected


def _count(config):
  return model_params.count_params(model_params.abstract_params(registry.build_model(
      config)))


def _reference_count(model_class, hf_config, skip=''):
  """Trainable parameters of a transformers model, built without memory."""
  with torch.device('meta'):
    model = model_class(hf_config)
  return sum(p.numel() for name, p in model.named_parameters()
             if p.requires_grad and not (skip and skip in name))


def test_bert_base_counts_equal_transformers():
  config = ModelConfig.from_config(bert.get_config('base').model)
  t = transformers
  assert _count(dataclasses.replace(config, mlm_head=False)) == (
      _reference_count(t.BertModel, t.BertConfig()))
  assert _count(config) == _reference_count(
      t.BertForPreTraining, t.BertConfig(), skip='seq_relationship')


def test_t5_small_count_equals_transformers():
  config = ModelConfig.from_config(t5.get_config('small').model)
  assert _count(config) == _reference_count(
      transformers.T5ForConditionalGeneration, transformers.T5Config())


def test_transformer_base_count_equals_marian_built_alike():
  config = ModelConfig.from_config(transformer.get_config('base').model)
  marian = transformers.MarianConfig(
      vocab_size=37000, d_model=512, encoder_layers=6, decoder_layers=6,
      encoder_attention_heads=8, decoder_attention_heads=8,
      encoder_ffn_dim=2048, decoder_ffn_dim=2048, activation_function='relu',
      scale_embedding=True, share_encoder_decoder_embeddings=True,
      max_position_embeddings=1024, pad_token_id=0, decoder_start_token_id=0)
  # Marian's sinusoidal tables are frozen parameters; only trained ones count.
  assert _count(config) == _reference_count(transformers.MarianMTModel,
                                            marian)


def test_default_config_is_a_valid_small_model():
  config = default.get_config()
  model_config = ModelConfig.from_config(config.model)
  count = model_params.count_params(model_params.abstract_params(
      registry.build_model(model_config)))
  assert count < 10_000_000
  assert config.data.seq_len <= model_config.max_len


def parse(argv):
  flag_values = flags.FlagValues()
  # Overrides are read from the command line given here, not from sys.argv.
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values,
                                  sys_argv=['prog'] + argv)
  flag_values(['prog'] + argv)
  return flag_values.config


def test_overrides_set_nested_values_with_their_types():
  config = parse(['--config=configs/default.py', '--config.train.num_steps=7',
                  '--config.optim.learning_rate=1', '--config.model.norm=rmsnorm'])
  assert config.train.num_steps == 7
  assert config.optim.learning_rate == 1.0
  assert isinstance(config.optim.learning_rate, float)
  assert config.model.norm == 'rmsnorm'


def test_preset_argument_selects_the_architecture():
  config = parse(['--config=configs/llama.py:llama2_7b'])
  assert config.model.d_model == 4096


def test_override_of_wrong_type_is_rejected():
  with pytest.raises(flags.IllegalFlagValueError):
    parse(['--config=configs/default.py', '--config.train.num_steps=many'])


@pytest.mark.parametrize('path', [
    'configs/default.py', 'configs/bert_shakespeare.py',
    'configs/t5_shakespeare.py', 'configs/sentiment.py:small',
    'configs/sentiment.py:minilm', 'configs/sentiment.py:minilm_scratch',
    'configs/transformer.py:big', 'configs/bert.py:large', 'configs/t5.py:base',
    'configs/default.py:long', 'configs/translation.py',
    'configs/translation.py:smollm2', 'configs/summarization.py',
    'configs/summarization.py:smollm2', 'configs/qa.py', 'configs/qa.py:scratch',
    'configs/sentiment.py:minilm_dp',
    'configs/sentiment.py:lstm', 'configs/sentiment.py:lstm_seed',
    'configs/topics.py', 'configs/moe.py',
    'configs/bench/gpt_cpu.py', 'configs/bench/llama_gpu.py'])
@pytest.mark.slow
def test_every_config_builds_a_valid_model(path):
  config = parse([f'--config={path}'])
  model_config = ModelConfig.from_config(config.model)
  assert _count(model_config) > 0
  assert set(config) == {'model', 'data', 'optim', 'train', 'sample',
                         'evaluate', 'privacy', 'init_from', 'mesh', 'prune',
                         'distill', 'bench'}
