"""lm's logits equal the reference implementation's (transformers, fp32).

Small random-init configs of each architecture are built with transformers;
every weight is perturbed (HF starts biases and norms at 0 and 1, which would
hide a mix-up), converted with the layouts the families register, and both models run
on the same tokens, with padding where the architecture takes a mask.
"""

import numpy as np
import pytest
import torch
import transformers

from lm.convert import hf_layouts
from lm.model import registry
from lm.model.config import ModelConfig
from lm.model.hf import rules

TOLERANCE = 1e-4
VOCAB = 99


def _perturbed(model):
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval()


def _hf_models():
  t = transformers
  common = dict(vocab_size=VOCAB)
  return {
      'bert': t.BertForMaskedLM(t.BertConfig(
          **common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
          intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)),
      'bert_with_pooler': t.BertModel(t.BertConfig(
          **common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
          intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)),
      'gpt2': t.GPT2LMHeadModel(t.GPT2Config(
          **common, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
      'llama': t.LlamaForCausalLM(t.LlamaConfig(
          **common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, intermediate_size=37,
          max_position_embeddings=64, tie_word_embeddings=False,
          rope_parameters={'rope_type': 'default', 'rope_theta': 500.0})),
      't5_v1_1': t.T5ForConditionalGeneration(t.T5Config(
          **common, d_model=32, d_kv=8, d_ff=37, num_layers=2,
          num_decoder_layers=3, num_heads=4, feed_forward_proj='gated-gelu',
          tie_word_embeddings=False, relative_attention_num_buckets=8,
          relative_attention_max_distance=20)),
      't5_tied_relu': t.T5ForConditionalGeneration(t.T5Config(
          **common, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
          feed_forward_proj='relu', tie_word_embeddings=True,
          relative_attention_num_buckets=8,
          relative_attention_max_distance=20)),
  }


@pytest.fixture(scope='module')
def hf_models():
  return {name: _perturbed(model) for name, model in _hf_models().items()}


def convert(model):
  tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  hf_config = model.config.to_dict()
  arch = hf_layouts.get_architecture(hf_config['model_type'])
  config = ModelConfig(**arch.config_from_hf(hf_config, set(tensors)))
  config.validate()
  return config, arch, rules.params_from_hf(arch.rules(config), tensors)


def _inputs(seed, batch, length):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, (batch, length))
  mask = np.ones((batch, length), bool)
  mask[1, length - 3:] = False  # the second row is padded
  return tokens, mask


def _lm_and_hf_outputs(name, model):
  config, _, params = convert(model)
  lm_model = registry.build_model(config)
  tokens, mask = _inputs(1, 2, 11)
  t = lambda x: torch.tensor(x)
  with torch.no_grad():
    if name.startswith('bert'):
      types = np.random.default_rng(2).integers(0, 2, tokens.shape)
      out = lm_model.apply({'params': params}, tokens, types, mask,
                           all_outputs=True)
      hf = model(input_ids=t(tokens), token_type_ids=t(types),
                 attention_mask=t(mask).long())
      if name == 'bert':
        return out['logits'], hf.logits.numpy(), mask
      return (np.concatenate([out['hidden'], out['pooled'][:, None]], 1),
              np.concatenate([hf.last_hidden_state.numpy(),
                              hf.pooler_output.numpy()[:, None]], 1),
              np.concatenate([mask, np.ones((2, 1), bool)], 1))
    if name.startswith('t5'):
      targets, _ = _inputs(3, 2, 7)
      out = lm_model.apply({'params': params}, tokens, targets, mask)
      hf = model(input_ids=t(tokens), attention_mask=t(mask).long(),
                 decoder_input_ids=t(targets))
      return out, hf.logits.numpy(), np.ones(targets.shape, bool)
    out = lm_model.apply({'params': params}, tokens)
    return out, model(input_ids=t(tokens)).logits.numpy(), np.ones(
        tokens.shape, bool)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(_hf_models()))
def test_logits_match_transformers(name, hf_models):
  ours, theirs, valid = _lm_and_hf_outputs(name, hf_models[name])
  assert ours.shape == theirs.shape
  error = np.max(np.abs(np.asarray(ours) - theirs)[valid])
  assert error < TOLERANCE, f'{name}: max |difference| {error:.2e}'
  assert np.std(theirs) > 0.1  # the comparison is not between near-zeros


@pytest.mark.parametrize('name', sorted(_hf_models()))
def test_export_inverts_import_exactly(name, hf_models):
  model = hf_models[name]
  config, arch, params = convert(model)
  exported = rules.params_to_hf(arch.rules(config), params)
  original = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  assert exported
  for key, value in exported.items():
    np.testing.assert_array_equal(value, original[key], err_msg=key)
  assert hf_layouts.architecture_of(config) == model.config.model_type
