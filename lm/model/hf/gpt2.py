"""GPT-2 (GPT2LMHeadModel) tensors and config.json <-> the decoder family."""

import numpy as np

from lm.model import params as model_params
from lm.model.config import ModelConfig
from lm.model.hf.rules import Architecture
from lm.model.hf.rules import Rule
from lm.model.hf.rules import activation_from_hf
from lm.model.hf.rules import activation_to_hf
from lm.model.hf.rules import linear
from lm.model.hf.rules import norm
from lm.model.hf.rules import param_path
from lm.model.hf.rules import same


def _rules(c: ModelConfig) -> list[Rule]:
  n, h = c.num_heads, c.head_width
  table = [
      same('transformer.wte.weight', 'embed/embedding'),
      same('transformer.wpe.weight', 'position_embed/embedding'),
      *norm('transformer.ln_f', 'final_norm')
  ]
  for i in range(c.num_layers):
    hf, lm = f'transformer.h.{i}', model_params.BLOCK.format(i)
    attention = f'{lm}/attention'
    # GPT-2's Conv1D stores [in, out], and fuses q, k and v along `out`.
    table += [
        Rule(
            f'{hf}.attn.c_attn.weight',
            tuple(
                param_path(f'{attention}/{part}/kernel')
                for part in ('query', 'key', 'value')),
            lambda x: [w.reshape(-1, n, h) for w in np.split(x, 3, axis=1)],
            lambda xs: np.concatenate([w.reshape(w.shape[0], -1)
                                       for w in xs], axis=1)),
        Rule(
            f'{hf}.attn.c_attn.bias',
            tuple(
                param_path(f'{attention}/{part}/bias')
                for part in ('query', 'key', 'value')),
            lambda x: [b.reshape(n, h) for b in np.split(x, 3)],
            lambda xs: np.concatenate([b.reshape(-1) for b in xs])),
        Rule(f'{hf}.attn.c_proj.weight',
             (param_path(f'{attention}/out/kernel'),),
             lambda x: [x.reshape(n, h, -1)],
             lambda xs: xs[0].reshape(n * h, -1)),
        same(f'{hf}.attn.c_proj.bias', f'{attention}/out/bias'),
        *norm(f'{hf}.ln_1', f'{lm}/attention_norm'),
        *norm(f'{hf}.ln_2', f'{lm}/mlp_norm'),
        same(f'{hf}.mlp.c_fc.weight', f'{lm}/mlp/wi/kernel'),
        same(f'{hf}.mlp.c_fc.bias', f'{lm}/mlp/wi/bias'),
        same(f'{hf}.mlp.c_proj.weight', f'{lm}/mlp/wo/kernel'),
        same(f'{hf}.mlp.c_proj.bias', f'{lm}/mlp/wo/bias')
    ]
  if not c.tie_embeddings:
    table.append(linear('lm_head.weight', 'head/kernel'))
  return table


def _config(hf: dict, names: set[str]) -> dict:
  del names
  return dict(
      family='decoder', vocab_size=hf['vocab_size'], d_model=hf['n_embd'],
      num_layers=hf['n_layer'], num_heads=hf['n_head'],
      d_ff=hf.get('n_inner') or 4 * hf['n_embd'],
      activation=activation_from_hf(hf.get('activation_function',
                                           'gelu_new')), norm='layernorm',
      norm_position='pre', norm_eps=hf.get('layer_norm_epsilon',
                                           1e-5), position='learned',
      max_len=hf['n_positions'], tie_embeddings=hf.get('tie_word_embeddings',
                                                       True), use_bias=True)


def _hf_config(c: ModelConfig) -> dict:
  return {
      'architectures': ['GPT2LMHeadModel'],
      'model_type': 'gpt2',
      'vocab_size': c.vocab_size,
      'n_embd': c.d_model,
      'n_layer': c.num_layers,
      'n_head': c.num_heads,
      'n_inner': c.d_ff,
      'activation_function': activation_to_hf(c.activation),
      'layer_norm_epsilon': c.norm_eps,
      'n_positions': c.max_len,
      'tie_word_embeddings': c.tie_embeddings,
      'resid_pdrop': c.dropout_rate,
      'embd_pdrop': c.dropout_rate,
      'attn_pdrop': 0.0
  }


LAYOUT = Architecture(
    _rules, _config, _hf_config,
    dict(norm='layernorm', norm_position='pre', position='learned',
         use_bias=True, gated_mlp=False, num_kv_heads=0, head_dim=0,
         embed_norm=False, scale_embeddings=False))
