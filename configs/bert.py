"""BERT (Devlin et al., 2019) architectures: base and large.

  python -m experiments.train --config=configs/bert.py:base --workdir=DIR

Post-LN encoder, LayerNorm (eps 1e-12) after the summed word, position and
token-type embeddings, exact-erf GELU, learned positions (512), a tanh
pooler on [CLS] and the masked-LM head tied to the word embeddings.
BERT-base has 109,482,240 parameters without the masked-LM head (the count
of transformers' BertModel) and 110,104,890 with it (BertForPreTraining
less its next-sentence head), as tests/configs_test.py checks against
transformers. Pretraining on
Shakespeare at this size needs an accelerator; configs/bert_shakespeare.py
is the CPU-sized run.
"""

from configs import base

# name: (num_layers, d_model, num_heads)
SIZES = {'base': (12, 768, 12), 'large': (24, 1024, 16)}


def get_config(arg='base'):
  num_layers, d_model, num_heads = SIZES[arg or 'base']
  config = base.get_base_config()
  config.model.update(
      family='encoder', vocab_size=30522, d_model=d_model,
      num_layers=num_layers, num_heads=num_heads, d_ff=4 * d_model,
      activation='gelu_exact', norm='layernorm', norm_position='post',
      norm_eps=1e-12, position='learned', max_len=512, embed_norm=True,
      type_vocab_size=2, pooler=True, mlm_head=True, tie_embeddings=True,
      use_bias=True, dropout_rate=0.1)
  config.data.update(objective='masked', vocab_size=8192, seq_len=512,
                     batch_size=8)
  config.optim.update(learning_rate=1e-4, warmup_steps=200, b2=0.999,
                      weight_decay=0.01)
  return config
