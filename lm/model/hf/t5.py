"""T5 (T5ForConditionalGeneration) tensors and config.json <-> the
encoder_decoder family."""

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
  table = [same('shared.weight', 'embed/embedding')]
  ffn = ['wi_0', 'wi_1'] if c.gated_mlp else ['wi']
  for side, layers in (('encoder', c.num_layers), ('decoder',
                                                   c.decoder_layers)):
    table += [
        same(
            f'{side}.block.0.layer.0.SelfAttention.relative_attention_bias'
            '.weight', f'{side}/relative_bias/embedding'),
        *norm(f'{side}.final_layer_norm', f'{side}/final_norm', False)
    ]
    for i in range(layers):
      hf = f'{side}.block.{i}.layer'
      lm = f'{side}/{model_params.BLOCK.format(i)}'
      table += attention_rules(
          c, {part: f'{hf}.0.SelfAttention.{part}' for part in 'qkvo'},
          f'{lm}/attention', False)
      table += norm(f'{hf}.0.layer_norm', f'{lm}/attention_norm', False)
      ff = 1
      if side == 'decoder':
        table += attention_rules(
            c, {part: f'{hf}.1.EncDecAttention.{part}' for part in 'qkvo'},
            f'{lm}/cross_attention', False)
        table += norm(f'{hf}.1.layer_norm', f'{lm}/cross_attention_norm', False)
        ff = 2
      table += [
          linear(f'{hf}.{ff}.DenseReluDense.{w}.weight', f'{lm}/mlp/{w}/kernel')
          for w in ffn + ['wo']
      ]
      table += norm(f'{hf}.{ff}.layer_norm', f'{lm}/mlp_norm', False)
  if not c.tie_embeddings:
    table.append(linear('lm_head.weight', 'head/kernel'))
  return table


def _config(hf: dict, names: set[str]) -> dict:
  del names
  proj = hf.get('feed_forward_proj', 'relu')
  gated = proj.startswith('gated-')
  # transformers reads 'gated-gelu' as the tanh approximation.
  act = 'gelu_new' if proj == 'gated-gelu' else proj.removeprefix('gated-')
  # T5 v1.0 ties and rescales; v1.1 files say tie_word_embeddings=false.
  # transformers 5 ties both and keeps the flag as `scale_decoder_outputs`.
  tied = hf.get('tie_word_embeddings', True)
  return dict(
      family='encoder_decoder', vocab_size=hf['vocab_size'],
      # T5 was trained on 512 tokens; its relative positions set no limit.
      max_len=hf.get('n_positions', 512), d_model=hf['d_model'],
      num_layers=hf['num_layers'],
      num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
      num_heads=hf['num_heads'], head_dim=hf['d_kv'], d_ff=hf['d_ff'],
      activation=activation_from_hf(act), gated_mlp=gated, norm='rmsnorm',
      norm_position='pre', norm_eps=hf.get('layer_norm_epsilon',
                                           1e-6), position='relative',
      relative_buckets=hf.get('relative_attention_num_buckets', 32),
      relative_max_distance=hf.get('relative_attention_max_distance',
                                   128), scale_queries=False,
      tie_embeddings=tied, rescale_tied_head=hf.get('scale_decoder_outputs',
                                                    tied), use_bias=False)


def _hf_config(c: ModelConfig) -> dict:
  if c.rescale_tied_head and not c.tie_embeddings:
    raise UsageError('T5 rescales the output only when the embeddings are '
                     'tied; this model has tie_embeddings=False and '
                     'rescale_tied_head=True')
  act = activation_to_hf(c.activation)
  if c.gated_mlp and act in ('gelu', 'gelu_new'):
    if act == 'gelu':
      raise UsageError('T5 gated-gelu is the tanh approximation; this model '
                       "uses activation='gelu_exact'")
    act = 'gelu'  # 'gated-gelu' means gelu_new to transformers
  return {
      'architectures': ['T5ForConditionalGeneration'],
      'model_type': 't5',
      'vocab_size': c.vocab_size,
      'n_positions': c.max_len,
      'd_model': c.d_model,
      'd_kv': c.head_width,
      'd_ff': c.d_ff,
      'num_layers': c.num_layers,
      'num_decoder_layers': c.decoder_layers,
      'num_heads': c.num_heads,
      'feed_forward_proj': f'gated-{act}' if c.gated_mlp else act,
      'layer_norm_epsilon': c.norm_eps,
      'relative_attention_num_buckets': c.relative_buckets,
      'relative_attention_max_distance': c.relative_max_distance,
      # What T5 reads as "rescale the output" (see _config).
      'tie_word_embeddings': c.rescale_tied_head,
      'dropout_rate': c.dropout_rate,
      'is_encoder_decoder': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'decoder_start_token_id': 0
  }


LAYOUT = Architecture(
    _rules, _config, _hf_config,
    dict(norm='rmsnorm', norm_position='pre', position='relative',
         use_bias=False, scale_queries=False, embed_norm=False, num_kv_heads=0,
         scale_embeddings=False))
