"""Config sections: each key's type and default stated once, by its owner
(lm/sections.py); a value of the wrong type, or an unknown key, is one
UsageError naming it, whether it comes from a config file or from the
config.json of a workdir someone edited."""

import json
import re

import pytest

from configs import base
from lm import restore
from lm.errors import UsageError
from lm.io import config_file
from lm.train import config as run_config
from lm.train import optim
from tests.conftest import tiny_config


def test_the_base_config_is_each_owners_defaults():
  config = base.get_base_config()
  for name, section in base.SECTIONS.items():
    assert section.from_config(config[name]) == section(), name
  run_config.validate(config)


@pytest.mark.parametrize('section, key, value, message', [
    ('model', 'd_model', '128', "model.d_model='128' is a str, not an int"),
    ('model', 'num_layers', 4.0, 'model.num_layers=4.0 is a float, not an int'),
    ('model', 'gated_mlp', 1, 'model.gated_mlp=1 is an int, not a bool'),
    ('data', 'batch_size', True, 'data.batch_size=True is a bool, not an int'),
    ('optim', 'freeze', 'embed', "optim.freeze='embed' is a str, not a tuple[str, ...]"),
    ('optim', 'lr_scale', [['embed', 'x']], "optim.lr_scale='x' is a str"),
    ('train', 'num_steps', None, 'train.num_steps=None is None, not an int'),
    ('mesh', 'shape', [-1, '2'], "mesh.shape='2' is a str, not an int"),
    ('privacy', 'l2_clip', float('nan'), 'privacy.l2_clip is NaN'),
    ('sample', 'prompts', 'ROMEO', "sample.prompts='ROMEO' is a str"),
    ('data', 'no_such_key', 1, "unknown data config key(s) ['no_such_key']"),
])
def test_a_value_of_the_wrong_type_is_one_error_naming_it(
    data_dir, section, key, value, message):
  config = tiny_config(data_dir).to_dict()
  config[section][key] = value
  with pytest.raises(UsageError, match='^' + re.escape(message)):
    base.SECTIONS[section].from_config(config[section])


def test_json_values_are_read_as_their_python_types():
  # JSON has lists for tuples and may give an integer for a float.
  settings = optim.OptimConfig.from_config(
      {'learning_rate': 1, 'freeze': ['embed.*'],
       'lr_scale': [['block_0/.*', 0.5]]})
  assert settings.learning_rate == 1.0
  assert isinstance(settings.learning_rate, float)
  assert settings.freeze == ('embed.*',)
  assert settings.lr_scale == (('block_0/.*', 0.5),)


def test_a_workdir_config_of_the_wrong_type_is_one_error(tmp_path):
  config = tiny_config('').to_dict()
  config['model']['d_model'] = '32'
  config_file.save_config(base.ml_collections.ConfigDict(config),
                          str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['model']['d_model'] == '32'
  with pytest.raises(UsageError, match="model.d_model='32' is a str"):
    restore.workdir(str(tmp_path))
