"""Hugging Face checkpoint layouts: tensor names and config.json, both ways.

One table per architecture (BERT, GPT-2, Llama, T5) pairs each Hugging Face
tensor with the lm parameter(s) it holds and a transform and its inverse, so
import and export are the same table read in opposite directions, and a round
trip is exact. Hugging Face stores linear layers as [out, in]; lm keeps
[in, out] kernels with attention heads as their own axis.
"""

import dataclasses
from typing import Any, Callable

import numpy as np

from lm import models
from lm.errors import UsageError

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """One HF tensor <-> one or more lm parameters."""

  hf_name: str
  lm_paths: tuple[Path, ...]
  to_lm: Callable[[np.ndarray], list[np.ndarray]]
  to_hf: Callable[[list[np.ndarray]], np.ndarray]


def _path(name: str) -> Path:
  return tuple(name.split('/'))


def _same(hf_name, lm_name):
  return Rule(hf_name, (_path(lm_name),), lambda x: [x], lambda xs: xs[0])


def _linear(hf_name, lm_name):
  """HF [out, in] weight <-> lm [in, out] kernel."""
  return Rule(hf_name, (_path(lm_name),), lambda x: [x.T], lambda xs: xs[0].T)


def _heads_in(hf_name, lm_name, heads, head_dim):
  """A q/k/v projection: HF [heads*head_dim, D] <-> lm [D, heads, head_dim]."""
  def to_lm(x):
    return [x.T.reshape(x.shape[1], heads, head_dim)]
  def to_hf(xs):
    return xs[0].reshape(xs[0].shape[0], heads * head_dim).T
  return Rule(hf_name, (_path(lm_name),), to_lm, to_hf)


def _heads_bias(hf_name, lm_name, heads, head_dim):
  return Rule(hf_name, (_path(lm_name),),
              lambda x: [x.reshape(heads, head_dim)],
              lambda xs: xs[0].reshape(heads * head_dim))


def _heads_out(hf_name, lm_name, heads, head_dim):
  """The output projection: HF [D, heads*head_dim] <-> lm [heads, head_dim, D]."""
  def to_lm(x):
    return [x.T.reshape(heads, head_dim, x.shape[0])]
  def to_hf(xs):
    return xs[0].reshape(heads * head_dim, xs[0].shape[-1]).T
  return Rule(hf_name, (_path(lm_name),), to_lm, to_hf)


def _norm(hf_prefix, lm_name, with_bias=True, weight='weight', bias='bias'):
  rules = [_same(f'{hf_prefix}.{weight}', f'{lm_name}/scale')]
  if with_bias:
    rules.append(_same(f'{hf_prefix}.{bias}', f'{lm_name}/bias'))
  return rules


def _attention_rules(c: models.ModelConfig, hf: dict[str, str], lm: str,
                     with_bias: bool):
  """q/k/v/o of one attention layer; `hf` maps 'q','k','v','o' to prefixes."""
  n, k, h = c.num_heads, c.kv_heads, c.head_width
  rules = [_heads_in(f'{hf["q"]}.weight', f'{lm}/query/kernel', n, h),
           _heads_in(f'{hf["k"]}.weight', f'{lm}/key/kernel', k, h),
           _heads_in(f'{hf["v"]}.weight', f'{lm}/value/kernel', k, h),
           _heads_out(f'{hf["o"]}.weight', f'{lm}/out/kernel', n, h)]
  if with_bias:
    rules += [_heads_bias(f'{hf["q"]}.bias', f'{lm}/query/bias', n, h),
              _heads_bias(f'{hf["k"]}.bias', f'{lm}/key/bias', k, h),
              _heads_bias(f'{hf["v"]}.bias', f'{lm}/value/bias', k, h),
              _same(f'{hf["o"]}.bias', f'{lm}/out/bias')]
  return rules


# ------------------------------------------------------------------ BERT ----


def _bert_rules(c: models.ModelConfig) -> list[Rule]:
  p = 'bert.' if c.mlm_head else ''  # BertForMaskedLM nests BertModel
  rules = [_same(f'{p}embeddings.word_embeddings.weight', 'embed/embedding'),
           _same(f'{p}embeddings.position_embeddings.weight',
                 'position_embed/embedding'),
           _same(f'{p}embeddings.token_type_embeddings.weight',
                 'token_type_embed/embedding'),
           *_norm(f'{p}embeddings.LayerNorm', 'embed_norm')]
  for i in range(c.num_layers):
    hf, lm = f'{p}encoder.layer.{i}', f'block_{i}'
    rules += _attention_rules(
        c, {'q': f'{hf}.attention.self.query',
            'k': f'{hf}.attention.self.key',
            'v': f'{hf}.attention.self.value',
            'o': f'{hf}.attention.output.dense'}, f'{lm}/attention', True)
    rules += [*_norm(f'{hf}.attention.output.LayerNorm', f'{lm}/attention_norm'),
              _linear(f'{hf}.intermediate.dense.weight', f'{lm}/mlp/wi/kernel'),
              _same(f'{hf}.intermediate.dense.bias', f'{lm}/mlp/wi/bias'),
              _linear(f'{hf}.output.dense.weight', f'{lm}/mlp/wo/kernel'),
              _same(f'{hf}.output.dense.bias', f'{lm}/mlp/wo/bias'),
              *_norm(f'{hf}.output.LayerNorm', f'{lm}/mlp_norm')]
  if c.pooler:
    rules += [_linear(f'{p}pooler.dense.weight', 'pooler/kernel'),
              _same(f'{p}pooler.dense.bias', 'pooler/bias')]
  if c.mlm_head:
    rules += [_linear('cls.predictions.transform.dense.weight',
                      'mlm_dense/kernel'),
              _same('cls.predictions.transform.dense.bias', 'mlm_dense/bias'),
              *_norm('cls.predictions.transform.LayerNorm', 'mlm_norm'),
              _same('cls.predictions.bias', 'mlm_bias')]
  return rules


def _bert_config(hf: dict, names: set[str]) -> dict:
  mlm_head = 'cls.predictions.bias' in names
  prefix = 'bert.' if mlm_head else ''
  return dict(
      family='encoder', vocab_size=hf['vocab_size'], d_model=hf['hidden_size'],
      num_layers=hf['num_hidden_layers'], num_heads=hf['num_attention_heads'],
      d_ff=hf['intermediate_size'],
      activation=_activation_from_hf(hf['hidden_act']), norm='layernorm',
      norm_position='post', norm_eps=hf['layer_norm_eps'], position='learned',
      max_len=hf['max_position_embeddings'], embed_norm=True,
      type_vocab_size=hf['type_vocab_size'],
      pooler=f'{prefix}pooler.dense.weight' in names, mlm_head=mlm_head,
      tie_embeddings=True, use_bias=True)


def _bert_hf_config(c: models.ModelConfig) -> dict:
  return {
      'architectures': ['BertForMaskedLM' if c.mlm_head else 'BertModel'],
      'model_type': 'bert', 'vocab_size': c.vocab_size,
      'hidden_size': c.d_model, 'num_hidden_layers': c.num_layers,
      'num_attention_heads': c.num_heads, 'intermediate_size': c.d_ff,
      'hidden_act': _activation_to_hf(c.activation),
      'max_position_embeddings': c.max_len,
      'type_vocab_size': c.type_vocab_size, 'layer_norm_eps': c.norm_eps,
      'hidden_dropout_prob': c.dropout_rate,
      'attention_probs_dropout_prob': 0.0, 'pad_token_id': 0}


# ----------------------------------------------------------------- GPT-2 ----


def _gpt2_rules(c: models.ModelConfig) -> list[Rule]:
  n, h = c.num_heads, c.head_width
  rules = [_same('transformer.wte.weight', 'embed/embedding'),
           _same('transformer.wpe.weight', 'position_embed/embedding'),
           *_norm('transformer.ln_f', 'final_norm')]
  for i in range(c.num_layers):
    hf, lm = f'transformer.h.{i}', f'block_{i}'
    attention = f'{lm}/attention'
    # GPT-2's Conv1D stores [in, out], and fuses q, k and v along `out`.
    rules += [
        Rule(f'{hf}.attn.c_attn.weight',
             tuple(_path(f'{attention}/{part}/kernel')
                   for part in ('query', 'key', 'value')),
             lambda x: [w.reshape(-1, n, h) for w in np.split(x, 3, axis=1)],
             lambda xs: np.concatenate([w.reshape(w.shape[0], -1) for w in xs],
                                       axis=1)),
        Rule(f'{hf}.attn.c_attn.bias',
             tuple(_path(f'{attention}/{part}/bias')
                   for part in ('query', 'key', 'value')),
             lambda x: [b.reshape(n, h) for b in np.split(x, 3)],
             lambda xs: np.concatenate([b.reshape(-1) for b in xs])),
        Rule(f'{hf}.attn.c_proj.weight', (_path(f'{attention}/out/kernel'),),
             lambda x: [x.reshape(n, h, -1)],
             lambda xs: xs[0].reshape(n * h, -1)),
        _same(f'{hf}.attn.c_proj.bias', f'{attention}/out/bias'),
        *_norm(f'{hf}.ln_1', f'{lm}/attention_norm'),
        *_norm(f'{hf}.ln_2', f'{lm}/mlp_norm'),
        _same(f'{hf}.mlp.c_fc.weight', f'{lm}/mlp/wi/kernel'),
        _same(f'{hf}.mlp.c_fc.bias', f'{lm}/mlp/wi/bias'),
        _same(f'{hf}.mlp.c_proj.weight', f'{lm}/mlp/wo/kernel'),
        _same(f'{hf}.mlp.c_proj.bias', f'{lm}/mlp/wo/bias')]
  if not c.tie_embeddings:
    rules.append(_linear('lm_head.weight', 'head/kernel'))
  return rules


def _gpt2_config(hf: dict, names: set[str]) -> dict:
  del names
  return dict(
      family='decoder', vocab_size=hf['vocab_size'], d_model=hf['n_embd'],
      num_layers=hf['n_layer'], num_heads=hf['n_head'],
      d_ff=hf.get('n_inner') or 4 * hf['n_embd'],
      activation=_activation_from_hf(hf.get('activation_function',
                                            'gelu_new')),
      norm='layernorm', norm_position='pre',
      norm_eps=hf.get('layer_norm_epsilon', 1e-5), position='learned',
      max_len=hf['n_positions'],
      tie_embeddings=hf.get('tie_word_embeddings', True), use_bias=True)


def _gpt2_hf_config(c: models.ModelConfig) -> dict:
  return {
      'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
      'vocab_size': c.vocab_size, 'n_embd': c.d_model,
      'n_layer': c.num_layers, 'n_head': c.num_heads, 'n_inner': c.d_ff,
      'activation_function': _activation_to_hf(c.activation),
      'layer_norm_epsilon': c.norm_eps, 'n_positions': c.max_len,
      'tie_word_embeddings': c.tie_embeddings, 'resid_pdrop': c.dropout_rate,
      'embd_pdrop': c.dropout_rate, 'attn_pdrop': 0.0}


# ----------------------------------------------------------------- Llama ----


def _llama_rules(c: models.ModelConfig) -> list[Rule]:
  rules = [_same('model.embed_tokens.weight', 'embed/embedding'),
           *_norm('model.norm', 'final_norm', with_bias=False)]
  for i in range(c.num_layers):
    hf, lm = f'model.layers.{i}', f'block_{i}'
    rules += _attention_rules(
        c, {part: f'{hf}.self_attn.{part}_proj' for part in 'qkvo'},
        f'{lm}/attention', False)
    rules += [*_norm(f'{hf}.input_layernorm', f'{lm}/attention_norm', False),
              *_norm(f'{hf}.post_attention_layernorm', f'{lm}/mlp_norm', False),
              _linear(f'{hf}.mlp.gate_proj.weight', f'{lm}/mlp/wi_0/kernel'),
              _linear(f'{hf}.mlp.up_proj.weight', f'{lm}/mlp/wi_1/kernel'),
              _linear(f'{hf}.mlp.down_proj.weight', f'{lm}/mlp/wo/kernel')]
  if not c.tie_embeddings:
    rules.append(_linear('lm_head.weight', 'head/kernel'))
  return rules


def _llama_config(hf: dict, names: set[str]) -> dict:
  del names
  rope = hf.get('rope_parameters') or {}
  if rope.get('rope_type', 'default') != 'default' or hf.get('rope_scaling'):
    raise UsageError('this Llama checkpoint scales rotary positions '
                     f'({rope or hf.get("rope_scaling")}); lm implements plain '
                     'rotary positions only')
  heads = hf['num_attention_heads']
  return dict(
      family='decoder', vocab_size=hf['vocab_size'],
      d_model=hf['hidden_size'], num_layers=hf['num_hidden_layers'],
      num_heads=heads, num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or 0, d_ff=hf['intermediate_size'],
      activation=_activation_from_hf(hf.get('hidden_act', 'silu')),
      gated_mlp=True, norm='rmsnorm', norm_position='pre',
      norm_eps=hf.get('rms_norm_eps', 1e-6), position='rotary',
      max_len=hf.get('max_position_embeddings', 2048),
      rotary_theta=rope.get('rope_theta', hf.get('rope_theta', 10_000.0)),
      tie_embeddings=hf.get('tie_word_embeddings', False), use_bias=False)


def _llama_hf_config(c: models.ModelConfig) -> dict:
  return {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
      'vocab_size': c.vocab_size, 'hidden_size': c.d_model,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.kv_heads, 'head_dim': c.head_width,
      'intermediate_size': c.d_ff,
      'hidden_act': _activation_to_hf(c.activation),
      'rms_norm_eps': c.norm_eps, 'max_position_embeddings': c.max_len,
      'rope_parameters': {'rope_type': 'default',
                          'rope_theta': c.rotary_theta},
      'tie_word_embeddings': c.tie_embeddings, 'attention_bias': False,
      'mlp_bias': False}


# -------------------------------------------------------------------- T5 ----


def _t5_rules(c: models.ModelConfig) -> list[Rule]:
  rules = [_same('shared.weight', 'embed/embedding')]
  ffn = ['wi_0', 'wi_1'] if c.gated_mlp else ['wi']
  for side, layers in (('encoder', c.num_layers),
                       ('decoder', c.decoder_layers)):
    rules += [
        _same(f'{side}.block.0.layer.0.SelfAttention.relative_attention_bias'
              '.weight', f'{side}/relative_bias/embedding'),
        *_norm(f'{side}.final_layer_norm', f'{side}/final_norm', False)]
    for i in range(layers):
      hf, lm = f'{side}.block.{i}.layer', f'{side}/block_{i}'
      rules += _attention_rules(
          c, {part: f'{hf}.0.SelfAttention.{part}' for part in 'qkvo'},
          f'{lm}/attention', False)
      rules += _norm(f'{hf}.0.layer_norm', f'{lm}/attention_norm', False)
      ff = 1
      if side == 'decoder':
        rules += _attention_rules(
            c, {part: f'{hf}.1.EncDecAttention.{part}' for part in 'qkvo'},
            f'{lm}/cross_attention', False)
        rules += _norm(f'{hf}.1.layer_norm', f'{lm}/cross_attention_norm',
                       False)
        ff = 2
      rules += [_linear(f'{hf}.{ff}.DenseReluDense.{w}.weight',
                        f'{lm}/mlp/{w}/kernel') for w in ffn + ['wo']]
      rules += _norm(f'{hf}.{ff}.layer_norm', f'{lm}/mlp_norm', False)
  if not c.tie_embeddings:
    rules.append(_linear('lm_head.weight', 'head/kernel'))
  return rules


def _t5_config(hf: dict, names: set[str]) -> dict:
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
      d_model=hf['d_model'], num_layers=hf['num_layers'],
      num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
      num_heads=hf['num_heads'], head_dim=hf['d_kv'], d_ff=hf['d_ff'],
      activation=_activation_from_hf(act), gated_mlp=gated, norm='rmsnorm', norm_position='pre',
      norm_eps=hf.get('layer_norm_epsilon', 1e-6), position='relative',
      relative_buckets=hf.get('relative_attention_num_buckets', 32),
      relative_max_distance=hf.get('relative_attention_max_distance', 128),
      scale_queries=False, tie_embeddings=tied,
      rescale_tied_head=hf.get('scale_decoder_outputs', tied), use_bias=False)


def _t5_hf_config(c: models.ModelConfig) -> dict:
  if c.rescale_tied_head and not c.tie_embeddings:
    raise UsageError('T5 rescales the output only when the embeddings are '
                     'tied; this model has tie_embeddings=False and '
                     'rescale_tied_head=True')
  act = _activation_to_hf(c.activation)
  if c.gated_mlp and act in ('gelu', 'gelu_new'):
    if act == 'gelu':
      raise UsageError('T5 gated-gelu is the tanh approximation; this model '
                       "uses activation='gelu_exact'")
    act = 'gelu'  # 'gated-gelu' means gelu_new to transformers
  return {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
      'vocab_size': c.vocab_size, 'd_model': c.d_model, 'd_kv': c.head_width,
      'd_ff': c.d_ff, 'num_layers': c.num_layers,
      'num_decoder_layers': c.decoder_layers, 'num_heads': c.num_heads,
      'feed_forward_proj': f'gated-{act}' if c.gated_mlp else act,
      'layer_norm_epsilon': c.norm_eps,
      'relative_attention_num_buckets': c.relative_buckets,
      'relative_attention_max_distance': c.relative_max_distance,
      # What T5 reads as "rescale the output" (see _t5_config).
      'tie_word_embeddings': c.rescale_tied_head,
      'dropout_rate': c.dropout_rate, 'is_encoder_decoder': True,
      'pad_token_id': 0, 'eos_token_id': 1, 'decoder_start_token_id': 0}


# ------------------------------------------------------ the architectures ---

_ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu',
                'gelu_pytorch_tanh': 'gelu', 'relu': 'relu', 'silu': 'silu'}


def _activation_from_hf(name: str) -> str:
  if name not in _ACTIVATIONS:
    raise UsageError(f'activation {name!r} is not supported; lm has '
                     f'{sorted(_ACTIVATIONS)}')
  return _ACTIVATIONS[name]


def _activation_to_hf(name: str) -> str:
  return {'gelu_exact': 'gelu', 'gelu': 'gelu_new'}.get(name, name)


@dataclasses.dataclass(frozen=True)
class Architecture:
  rules: Callable[[models.ModelConfig], list[Rule]]
  config_from_hf: Callable[[dict, set[str]], dict]
  config_to_hf: Callable[[models.ModelConfig], dict]
  # What an lm config must have to be saved in this layout: a value, or a
  # (predicate, description) pair.
  requires: dict[str, Any]


ARCHITECTURES = {
    'bert': Architecture(
        _bert_rules, _bert_config, _bert_hf_config,
        dict(family='encoder', norm='layernorm', norm_position='post',
             position='learned', embed_norm=True, tie_embeddings=True,
             use_bias=True, gated_mlp=False, num_kv_heads=0, head_dim=0,
             scale_embeddings=False,
             type_vocab_size=(lambda n: n > 0, 'at least 1'))),
    'gpt2': Architecture(
        _gpt2_rules, _gpt2_config, _gpt2_hf_config,
        dict(family='decoder', norm='layernorm', norm_position='pre',
             position='learned', use_bias=True, gated_mlp=False,
             num_kv_heads=0, head_dim=0, embed_norm=False,
             scale_embeddings=False)),
    'llama': Architecture(
        _llama_rules, _llama_config, _llama_hf_config,
        dict(family='decoder', norm='rmsnorm', norm_position='pre',
             position='rotary', use_bias=False, gated_mlp=True,
             embed_norm=False, scale_embeddings=False)),
    't5': Architecture(
        _t5_rules, _t5_config, _t5_hf_config,
        dict(family='encoder_decoder', norm='rmsnorm', norm_position='pre',
             position='relative', use_bias=False, scale_queries=False,
             embed_norm=False, num_kv_heads=0, scale_embeddings=False)),
}


def architecture_of(c: models.ModelConfig) -> str:
  """The HF layout an lm config can be saved in, or one error saying why not."""
  reasons = []
  for name, arch in ARCHITECTURES.items():
    wrong = []
    for key, value in arch.requires.items():
      test, wanted = (value if isinstance(value, tuple)
                      else (lambda v, value=value: v == value, repr(value)))
      if not test(getattr(c, key)):
        wrong.append(f'{key}={getattr(c, key)!r} (needs {wanted})')
    if not wrong:
      return name
    if arch.requires['family'] == c.family:
      reasons.append(f'{name}: ' + ', '.join(wrong))
  raise UsageError('no Hugging Face layout matches this model; '
                   + ('; '.join(reasons) or f'family {c.family!r} has none'))


def get_architecture(model_type: str) -> Architecture:
  if model_type not in ARCHITECTURES:
    raise UsageError(f'model_type {model_type!r} is not supported; lm '
                     f'imports {sorted(ARCHITECTURES)}')
  return ARCHITECTURES[model_type]


def _get(tree: dict, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_hf(rules: list[Rule], tensors: dict[str, np.ndarray]) -> dict:
  """lm params from HF tensors; tensors no rule reads are ignored."""
  params = {}
  missing = [r.hf_name for r in rules if r.hf_name not in tensors]
  if missing:
    raise UsageError(f'the checkpoint lacks {len(missing)} tensor(s) its '
                     f'config implies, e.g. {missing[:3]}')
  for rule in rules:
    for path, value in zip(rule.lm_paths, rule.to_lm(tensors[rule.hf_name])):
      _set(params, path, np.ascontiguousarray(value))
  return params


def params_to_hf(rules: list[Rule], params: dict) -> dict[str, np.ndarray]:
  return {r.hf_name: np.ascontiguousarray(
      r.to_hf([np.asarray(_get(params, p)) for p in r.lm_paths]))
          for r in rules}
