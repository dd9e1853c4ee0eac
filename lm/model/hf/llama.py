"""Llama (LlamaForCausalLM) tensors and config.json <-> the decoder family."""

from lm.errors import UsageError
from lm.model import params as model_params
from lm.model.config import ModelConfig
from lm.model.hf.rules import Architecture
from lm.model.hf.rules import Rule
from lm.model.hf.rules import activation_from_hf
from lm.model.hf.rules import activation_to_hf
from lm.model.hf.rules import attention_rules
from lm.model.hf.rules import linear
from lm.model.hf.rules import norm
from lm.model.hf.rules import same


def _rules(c: ModelConfig) -> list[Rule]:
  table = [
      same('model.embed_tokens.weight', 'embed/embedding'),
      *norm('model.norm', 'final_norm', with_bias=False)
  ]
  for i in range(c.num_layers):
    hf, lm = f'model.layers.{i}', model_params.BLOCK.format(i)
    table += attention_rules(
        c, {part: f'{hf}.self_attn.{part}_proj' for part in 'qkvo'},
        f'{lm}/attention', False)
    table += [
        *norm(f'{hf}.input_layernorm', f'{lm}/attention_norm', False),
        *norm(f'{hf}.post_attention_layernorm', f'{lm}/mlp_norm', False),
        linear(f'{hf}.mlp.gate_proj.weight', f'{lm}/mlp/wi_0/kernel'),
        linear(f'{hf}.mlp.up_proj.weight', f'{lm}/mlp/wi_1/kernel'),
        linear(f'{hf}.mlp.down_proj.weight', f'{lm}/mlp/wo/kernel')
    ]
  if not c.tie_embeddings:
    table.append(linear('lm_head.weight', 'head/kernel'))
  return table


def _config(hf: dict, names: set[str]) -> dict:
  del names
  rope = hf.get('rope_parameters') or {}
  if rope.get('rope_type', 'default') != 'default' or hf.get('rope_scaling'):
    raise UsageError('this Llama checkpoint scales rotary positions '
                     f'({rope or hf.get("rope_scaling")}); lm implements plain '
                     'rotary positions only')
  heads = hf['num_attention_heads']
  return dict(
      family='decoder', vocab_size=hf['vocab_size'], d_model=hf['hidden_size'],
      num_layers=hf['num_hidden_layers'], num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or 0, d_ff=hf['intermediate_size'],
      activation=activation_from_hf(hf.get('hidden_act', 'silu')),
      gated_mlp=True, norm='rmsnorm', norm_position='pre',
      norm_eps=hf.get('rms_norm_eps', 1e-6), position='rotary', max_len=hf.get(
          'max_position_embeddings',
          2048), rotary_theta=rope.get('rope_theta',
                                       hf.get('rope_theta', 10_000.0)),
      tie_embeddings=hf.get('tie_word_embeddings', False), use_bias=False)


def _hf_config(c: ModelConfig) -> dict:
  return {
      'architectures': ['LlamaForCausalLM'],
      'model_type': 'llama',
      'vocab_size': c.vocab_size,
      'hidden_size': c.d_model,
      'num_hidden_layers': c.num_layers,
      'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.kv_heads,
      'head_dim': c.head_width,
      'intermediate_size': c.d_ff,
      'hidden_act': activation_to_hf(c.activation),
      'rms_norm_eps': c.norm_eps,
      'max_position_embeddings': c.max_len,
      'rope_parameters': {
          'rope_type': 'default',
          'rope_theta': c.rotary_theta
      },
      'tie_word_embeddings': c.tie_embeddings,
      'attention_bias': False,
      'mlp_bias': False
  }


LAYOUT = Architecture(
    _rules, _config, _hf_config,
    dict(norm='rmsnorm', norm_position='pre', position='rotary', use_bias=False,
         gated_mlp=True, embed_norm=False, scale_embeddings=False))
