r"""Prints sentence embeddings from an encoder workdir (e.g. imported MiniLM).

  python -m experiments.embed --workdir=workdirs/minilm \
      --text="A man is eating food." --text="A man is eating pasta."

Each line is one text's embedding (mean pooling over real tokens, L2
normalized) as JSON; with two or more texts, their cosine similarities follow.
"""

import json

from absl import flags

from experiments import cli
from lm import restore
from lm.infer import embeddings

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir holding an encoder '
                               'model.', required=True)
_TEXT = flags.DEFINE_multi_string('text', None, 'A text to embed; repeat the '
                                  'flag for more.', required=True)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  restored = restore.workdir(_WORKDIR.value)
  vectors = embeddings.embed_texts(restored.model_config, restored.params,
                                   restored.tokenizer, _TEXT.value)
  for text, vector in zip(_TEXT.value, vectors):
    print(json.dumps({'text': text, 'embedding': [
        round(float(v), 6) for v in vector]}))
  if len(vectors) > 1:
    similarity = (vectors @ vectors.T).tolist()
    print(json.dumps({'cosine_similarity': [
        [round(v, 4) for v in row] for row in similarity]}))


if __name__ == '__main__':
  cli.run(main)
