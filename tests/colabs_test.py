"""Every notebook in colabs/ runs top to bottom in a Jupyter kernel, on
small settings: the test puts a cell after the one tagged 'parameters'
(as papermill does) that shrinks the run. A cell that raises fails it."""

import os
import re

import nbclient
import nbformat
import pytest

from tests.cli_helpers import flat_overrides
from tests.conftest import ROOT
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

COLABS = os.path.join(ROOT, 'colabs')


def execute(name: str, parameters: str):
  """The notebook after running, its outputs filled in."""
  notebook = nbformat.read(os.path.join(COLABS, name), as_version=4)
  tagged = [i for i, cell in enumerate(notebook.cells)
            if 'parameters' in cell.metadata.get('tags', ())]
  assert len(tagged) == 1, f'{name} needs one cell tagged "parameters"'
  notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
      parameters, metadata={'tags': ['injected-parameters']}))
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': COLABS}}).execute()
  return notebook


def outputs(notebook, kind: str) -> list:
  """Every output of one type ('image/png', 'text/plain', 'stream')."""
  found = []
  for cell in notebook.cells:
    for output in cell.get('outputs', ()):
      if output.output_type == 'stream' and kind == 'stream':
        found.append(output.text)
      elif kind in output.get('data', {}):
        found.append(output.data[kind])
  return found


def test_the_notebooks_are_all_tested():
  notebooks = [n for n in os.listdir(COLABS) if n.endswith('.ipynb')]
  assert sorted(notebooks) == sorted(NOTEBOOK_TESTS)


def test_a_cell_that_raises_fails_the_run(tmp_path):
  notebook = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell('x = 1', metadata={'tags': ['parameters']}),
      nbformat.v4.new_code_cell('raise ValueError("broken cell")')])
  nbformat.write(notebook, tmp_path / 'broken.ipynb')
  with pytest.raises(nbclient.exceptions.CellExecutionError,
                     match='broken cell'):
    nbclient.NotebookClient(
        nbformat.read(tmp_path / 'broken.ipynb', as_version=4),
        kernel_name='python3').execute()


def test_quickstart(data_dir, tmp_path):
  config = tiny_config(data_dir)
  notebook = execute('quickstart.ipynb', (
      f'workdir = {str(tmp_path / "quickstart")!r}\n'
      f'num_steps = 20\n'
      f'overrides = {flat_overrides(config)!r}\n'
      f'max_new_tokens = 8\n'))
  assert len(outputs(notebook, 'image/png')) == 2  # curves, attention map
  printed = ''.join(outputs(notebook, 'stream'))
  assert 'eval at step 20' in printed and 'ROMEO:\n' in printed
  # The live line, updated in place to the last step.
  assert any(text.startswith('step 20/20 | loss')
             for text in outputs(notebook, 'text/plain'))


def test_sharding(data_dir):
  overrides = dict(flat_overrides(tiny_config(data_dir)))
  overrides.update({'model.num_heads': 8, 'model.num_kv_heads': 8})
  notebook = execute('sharding.ipynb', f'overrides = {overrides!r}\n')
  assert len(outputs(notebook, 'image/png')) == 1  # memory per device
  printed = ''.join(outputs(notebook, 'stream'))
  # The memory table: FSDP holds an eighth of the state data parallelism
  # copies to every device.
  rows = {line.split('  ')[0]: line for line in printed.splitlines()
          if 'argument_bytes' in line}
  assert set(rows) == {'data parallel', 'FSDP', 'tensor parallel'}
  argument_mib = {name: float(row.split('argument_bytes ')[1].split(' ')[0])
                  for name, row in rows.items()}
  assert argument_mib['FSDP'] < argument_mib['data parallel'] / 4


def test_finetune_real_model(data_dir, tmp_path):
  overrides = {'data.data_dir': data_dir, 'data.batch_size': 4,
               'data.seq_len': 32, 'data.eval_batch_size': 16,
               'train.eval_steps': 1, 'optim.warmup_steps': 1}
  notebook = execute('finetune_real_model.ipynb', (
      f'imported = {str(tmp_path / "minilm")!r}\n'
      f'workdir = {str(tmp_path / "lora")!r}\n'
      'num_steps = 2\n'
      'eval_batches = 2\n'
      f'overrides = {overrides!r}\n'))
  assert len(outputs(notebook, 'image/png')) == 1  # before vs after
  printed = ''.join(outputs(notebook, 'stream'))
  # The real MiniLM, with the adapters and the head the only trained part.
  counts = re.search(r'([\d,]+) parameters, ([\d,]+) of them trained',
                     printed)
  total, trained = (int(n.replace(',', '')) for n in counts.groups())
  assert 22_700_000 < total < 22_800_000 and 0 < trained < total / 50
  assert 'step 2/2' in printed


def test_compression(data_dir, tmp_path):
  notebook = execute('compression.ipynb', (
      f'root = {str(tmp_path)!r}\n'
      'teacher_steps = 20\n'
      'student_steps = 2\n'
      'student_layers = 1\n'
      'new_tokens = 4\n'
      f'overrides = {flat_overrides(tiny_config(data_dir))!r}\n'))
  assert len(outputs(notebook, 'image/png')) == 1  # quality, size, speed
  (table,) = outputs(notebook, 'text/markdown')
  rows = {line.split(' | ')[0].strip('| '): line.split(' | ')
          for line in table.splitlines()[2:]}
  assert list(rows) == ['float32', 'int8', 'int4', 'pruned 50%',
                        'distilled, 1 layers']
  on_disk = {name: float(row[1].split()[0]) for name, row in rows.items()}
  # (At this tiny size int4's group scales can outweigh its savings over
  # int8; the notebook's own settings show the full ordering.)
  for name in ('int8', 'int4', 'distilled, 1 layers'):
    assert on_disk[name] < on_disk['float32'], name
  assert 'pruned kernels: 50% zeros' in ''.join(outputs(notebook, 'stream'))
  nonzero_percent = {name: int(row[3].split('(')[1].rstrip('%)'))
                     for name, row in rows.items()}
  assert nonzero_percent['float32'] == 100
  assert nonzero_percent['pruned 50%'] < 80  # (Embeddings are kept.)


NOTEBOOK_TESTS = {'quickstart.ipynb': test_quickstart,
                  'sharding.ipynb': test_sharding,
                  'finetune_real_model.ipynb': test_finetune_real_model,
                  'compression.ipynb': test_compression}
