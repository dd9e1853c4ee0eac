"""Masked-LM pretraining of a small BERT on Shakespeare, sized for a CPU.

  python -m experiments.train --config=configs/bert_shakespeare.py \
      --workdir=workdirs/bert_shakespeare

BERT's architecture (configs/bert.py) at width 192, 4 layers, 4 heads;
15% of each 128-token window is predicted (80% [MASK], 10% random, 10%
kept). The vocabulary is the 2048-token SentencePiece BPE plus [MASK],
rounded up to 2112. Validation loss is over the masked positions.
Result on a 2-core CPU: validation loss 5.7223 -> 5.6156 -> 5.5814 nats
per masked token at steps 200, 400, 600 (13.5 min).
"""

from configs import bert


def get_config(arg=None):
  del arg
  config = bert.get_config('base')
  config.model.update(vocab_size=2112, d_model=192, num_layers=4, num_heads=4,
                      d_ff=768, max_len=128, pooler=False,
                      dropout_rate=0.0)
  config.data.update(vocab_size=2048, seq_len=128, batch_size=32)
  config.optim.update(learning_rate=1e-3, warmup_steps=50, weight_decay=0.01)
  config.train.update(num_steps=600, log_every=50, eval_every=200,
                      checkpoint_every=200)
  return config
