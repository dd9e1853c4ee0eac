r"""English -> Spanish Bible verses (KJV -> Reina-Valera 1909) with an
encoder-decoder Transformer trained from scratch; scored by BLEU and chrF.

  apt-get install sword-text-kjv sword-text-sparv   # the two Bibles
  python -m experiments.train --config=configs/translation.py \
      --workdir=workdirs/translation --evaluate=test

A pre-LN Transformer with sinusoidal positions (3 + 3 layers, width 256,
4 heads, ReLU MLP of 1024, scaled and tied embeddings), one SentencePiece
BPE of 8000 tokens trained on both languages, verses cut to 64 tokens;
AdamW, batch 32. Evaluation decodes the test split with beam search (beam
4, length penalty 0.6). On a 2-core CPU, 1,000 steps reach validation loss
4.14 nats/token and test BLEU 2.68 / chrF 13.99: too few to translate
(README.md).
"""

from configs import base


def get_config(arg=None):
  del arg
  config = base.get_base_config()
  config.model.update(
      family='encoder_decoder', vocab_size=8000, d_model=256, num_layers=3,
      num_heads=4, d_ff=1024, activation='relu', norm='layernorm',
      norm_position='pre', position='sinusoidal', scale_embeddings=True,
      tie_embeddings=True, use_bias=True, dropout_rate=0.1, max_len=64)
  config.data.update(name='bible_en_es', objective='seq2seq',
                     tokenizer='sentencepiece', vocab_size=8000, seq_len=64,
                     target_len=64, batch_size=32, eval_batch_size=128)
  config.optim.update(learning_rate=2e-3, warmup_steps=100, b2=0.98,
                      weight_decay=0.01)
  config.train.update(num_steps=1000, log_every=50, eval_every=500,
                      checkpoint_every=500)
  config.evaluate.update(beam_size=4, length_penalty=0.6, batch_size=128)
  return config
