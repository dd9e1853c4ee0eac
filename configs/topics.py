r"""WordNet topic classification: a gloss -> its lexicographer file (45
classes such as noun.animal or verb.motion), with a small encoder.

  apt-get install wordnet-base   # WordNet 3.0's data files
  python -m experiments.train --config=configs/topics.py \
      --workdir=workdirs/topics --evaluate=test

The `small` encoder of configs/sentiment.py (4 layers, width 192, mean
pooling) with a SentencePiece BPE of 4096 tokens trained on the glosses;
300 steps of 64 glosses. Result on a 2-core CPU (test split, 45 classes):
accuracy 0.5719, macro-F1 0.2470 (the frequent noun topics are learned,
most verb topics not yet); 8 min 52 s wall for training and the test
evaluation, shared with another job.
"""

from configs import sentiment

# WordNet's lexicographer files (lm/data/wordnet.py LEXNAMES).
NUM_TOPICS = 45


def get_config(arg=None):
  del arg
  config = sentiment.get_config('small')
  config.model.num_classes = NUM_TOPICS
  config.data.update(name='wordnet_topics', seq_len=48, batch_size=64)
  config.train.update(num_steps=300, eval_every=150, checkpoint_every=150)
  return config
