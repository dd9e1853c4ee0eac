"""BERT (BertModel, BertForMaskedLM) tensors and config.json <-> the encoder
family."""

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
  p = 'bert.' if c.mlm_head else ''  # BertForMaskedLM nests BertModel
  table = [
      same(f'{p}embeddings.word_embeddings.weight', 'embed/embedding'),
      same(f'{p}embeddings.position_embeddings.weight',
           'position_embed/embedding'),
      same(f'{p}embeddings.token_type_embeddings.weight',
           'token_type_embed/embedding'),
      *norm(f'{p}embeddings.LayerNorm', 'embed_norm')
  ]
  for i in range(c.num_layers):
    hf, lm = f'{p}encoder.layer.{i}', model_params.BLOCK.format(i)
    table += attention_rules(
        c, {
            'q': f'{hf}.attention.self.query',
            'k': f'{hf}.attention.self.key',
            'v': f'{hf}.attention.self.value',
            'o': f'{hf}.attention.output.dense'
        }, f'{lm}/attention', True)
    table += [
        *norm(f'{hf}.attention.output.LayerNorm', f'{lm}/attention_norm'),
        linear(f'{hf}.intermediate.dense.weight', f'{lm}/mlp/wi/kernel'),
        same(f'{hf}.intermediate.dense.bias', f'{lm}/mlp/wi/bias'),
        linear(f'{hf}.output.dense.weight', f'{lm}/mlp/wo/kernel'),
        same(f'{hf}.output.dense.bias', f'{lm}/mlp/wo/bias'),
        *norm(f'{hf}.output.LayerNorm', f'{lm}/mlp_norm')
    ]
  if c.pooler:
    table += [
        linear(f'{p}pooler.dense.weight', 'pooler/kernel'),
        same(f'{p}pooler.dense.bias', 'pooler/bias')
    ]
  if c.mlm_head:
    table += [
        linear('cls.predictions.transform.dense.weight', 'mlm_dense/kernel'),
        same('cls.predictions.transform.dense.bias', 'mlm_dense/bias'),
        *norm('cls.predictions.transform.LayerNorm', 'mlm_norm'),
        same('cls.predictions.bias', 'mlm_bias')
    ]
  return table


def _config(hf: dict, names: set[str]) -> dict:
  mlm_head = 'cls.predictions.bias' in names
  prefix = 'bert.' if mlm_head else ''
  return dict(family='encoder', vocab_size=hf['vocab_size'],
              d_model=hf['hidden_size'], num_layers=hf['num_hidden_layers'],
              num_heads=hf['num_attention_heads'], d_ff=hf['intermediate_size'],
              activation=activation_from_hf(hf['hidden_act']), norm='layernorm',
              norm_position='post', norm_eps=hf['layer_norm_eps'],
              position='learned', max_len=hf['max_position_embeddings'],
              embed_norm=True, type_vocab_size=hf['type_vocab_size'],
              pooler=f'{prefix}pooler.dense.weight' in names, mlm_head=mlm_head,
              tie_embeddings=True, use_bias=True)


def _hf_config(c: ModelConfig) -> dict:
  return {
      'architectures': ['BertForMaskedLM' if c.mlm_head else 'BertModel'],
      'model_type': 'bert',
      'vocab_size': c.vocab_size,
      'hidden_size': c.d_model,
      'num_hidden_layers': c.num_layers,
      'num_attention_heads': c.num_heads,
      'intermediate_size': c.d_ff,
      'hidden_act': activation_to_hf(c.activation),
      'max_position_embeddings': c.max_len,
      'type_vocab_size': c.type_vocab_size,
      'layer_norm_eps': c.norm_eps,
      'hidden_dropout_prob': c.dropout_rate,
      'attention_probs_dropout_prob': 0.0,
      'pad_token_id': 0
  }


LAYOUT = Architecture(
    _rules, _config, _hf_config,
    dict(norm='layernorm', norm_position='post', position='learned',
         embed_norm=True, tie_embeddings=True, use_bias=True, gated_mlp=False,
         num_kv_heads=0, head_dim=0, scale_embeddings=False,
         type_vocab_size=(lambda n: n > 0, 'at least 1')))
