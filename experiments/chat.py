r"""A conversation with an instruct model in the terminal.

  python -m experiments.chat --workdir=workdirs/smollm2 [--temperature=0.7]

Each line you type is a user turn; the reply streams as it is written, and
the conversation so far goes into the next prompt through the model's chat
template. Commands:
  /system TEXT   set the system message (and start over)
  /reset         forget the conversation
  /quit          leave (so does end of input, Ctrl-D)
When the conversation outgrows the context, the oldest turns are dropped,
and the chat says so.
"""

import queue
import sys

from absl import flags

from experiments import cli
from lm import restore
from lm.data import tokenizers
from lm.infer import engine as engines
from lm.infer.sampling import SamplingConfig

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir of an instruct '
                               'model with a chat template (e.g. imported '
                               'SmolLM2).', required=True)
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 256, 'Longest '
                                       'reply.', lower_bound=1)
_TEMPERATURE = flags.DEFINE_float('temperature', 0.7, '0 means greedy.',
                                  lower_bound=0.0)
_TOP_P = flags.DEFINE_float('top_p', 0.95, 'Nucleus sampling mass.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_CONTEXT = flags.DEFINE_integer('context', 2048, 'Tokens the conversation '
                                'may hold (at most the model\'s context).',
                                lower_bound=16)


class Conversation:
  """The turns so far, and the prompt they make within the context."""

  def __init__(self, tokenizer, context: int, reply_tokens: int):
    self.tokenizer, self.context = tokenizer, context
    self.reply_tokens = reply_tokens
    self.system, self.turns = None, []

  def prompt(self, user: str) -> tuple[list[int], int]:
    """The prompt tokens for a new user turn, and how many old turns were
    dropped to fit it and its reply in the context."""
    self.turns.append({'role': 'user', 'content': user})
    dropped = 0
    while True:
      messages = ([{'role': 'system', 'content': self.system}]
                  if self.system else []) + self.turns
      tokens = self.tokenizer.encode(
          self.tokenizer.apply_chat_template(messages))
      if len(tokens) + self.reply_tokens <= self.context or len(
          self.turns) == 1:
        return tokens, dropped
      self.turns = self.turns[2:]  # The oldest user turn and its reply.
      dropped += 1

  def answered(self, reply: str):
    self.turns.append({'role': 'assistant', 'content': reply})


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  cli.setup_jax()
  restored = restore.workdir(_WORKDIR.value)
  tokenizer = restored.tokenizer
  if not tokenizers.chat_template(tokenizer):
    cli.fail(f'{_WORKDIR.value} has no chat template (only imported instruct '
             'models do); use experiments/generate.py to continue text')
  engine = engines.Engine(restored.model_config, restored.params, tokenizer,
                          slots=1, context=_CONTEXT.value)
  engine.check([0], _MAX_NEW_TOKENS.value, SamplingConfig(
      max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
      top_p=_TOP_P.value), _SEED.value)
  conversation = Conversation(tokenizer, engine.context, _MAX_NEW_TOKENS.value)
  print(f'[{_WORKDIR.value} at step {restored.step}; /system TEXT, /reset, '
        '/quit]', flush=True)
  turn = 0
  for raw in sys.stdin.buffer:
    try:
      line = raw.decode('utf-8').strip()
    except UnicodeDecodeError:  # Pasted binary, or a terminal's encoding.
      print('(that line is not UTF-8 text; type it again)', flush=True)
      continue
    if not line:
      continue
    if line in ('/quit', '/exit'):
      break
    if line == '/reset':
      conversation.turns = []
      print('(the conversation is forgotten)', flush=True)
      continue
    if line.startswith('/system'):
      conversation.system = line[len('/system'):].strip() or None
      conversation.turns = []
      print('(new system message; the conversation starts over)', flush=True)
      continue
    prompt, dropped = conversation.prompt(line)
    if dropped:
      print(f'(dropped the {dropped} oldest exchange(s) to fit the context '
            f'of {engine.context} tokens)', flush=True)
    if len(prompt) + _MAX_NEW_TOKENS.value > engine.context:
      conversation.turns.pop()
      print(f'(that message alone fills the context of {engine.context} '
            'tokens; say less)', flush=True)
      continue
    events = queue.Queue()
    turn += 1
    engine.submit(engines.Request(
        prompt=prompt, max_tokens=_MAX_NEW_TOKENS.value,
        emit=lambda *e: events.put(e), temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value, seed=_SEED.value + turn))
    pieces = []
    while True:
      event = events.get()
      if event[0] != 'text':
        break
      text = event[1] if pieces else event[1].lstrip()
      pieces.append(text)
      print(text, end='', flush=True)
    print(flush=True)
    if event[0] == 'error':
      cli.fail(f'decoding failed: {event[1]}')
    conversation.answered(''.join(pieces))
  engine.stop()


if __name__ == '__main__':
  cli.run(main)
