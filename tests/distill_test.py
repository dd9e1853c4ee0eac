"""Distillation: the soft loss, and a student trained from a teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import restore
from lm.compress import distill
from lm.errors import UsageError
from lm.train import loop
from tests.conftest import tiny_config


def test_soft_loss_is_zero_for_the_teacher_itself_and_positive_otherwise():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7))
  weights = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
  assert float(distill.soft_loss_sum(logits, logits, weights, 2.0)) == (
      pytest.approx(0.0, abs=1e-6))
  other = jax.random.normal(jax.random.key(1), (2, 3, 7))
  loss = float(distill.soft_loss_sum(other, logits, weights, 2.0))
  t_p = jax.nn.softmax(logits / 2.0)
  kl = jnp.sum(t_p * (jnp.log(t_p) - jax.nn.log_softmax(other / 2.0)), -1)
  assert loss == pytest.approx(4.0 * float(jnp.sum(kl * weights)), rel=1e-5)
  # Only the student gets gradients.
  grad = jax.grad(lambda t: distill.soft_loss_sum(other, t, weights, 2.0))(
      logits)
  assert not np.any(np.asarray(grad))


@pytest.mark.slow
def test_a_student_learns_from_its_teacher(float_workdir, data_dir, tmp_path):
  """With alpha=1 the student only sees the teacher: its soft loss falls."""
  config = tiny_config(data_dir)
  config.model.update(d_model=32, d_ff=64, num_layers=1)
  config.distill.update(teacher=float_workdir, alpha=1.0, temperature=1.0)
  config.train.update(num_steps=20, log_every=5)
  lines = []
  final = loop.train_and_evaluate(config, str(tmp_path), log=lines.append)
  soft = [float(line.split('soft_loss ')[1].split()[0]) for line in lines
          if 'soft_loss' in line]
  assert len(soft) == 4 and soft[-1] < 0.8 * soft[0], soft
  assert np.isfinite(final['loss'])
  # The student's workdir evaluates without its teacher.
  assert restore.workdir(str(tmp_path)).model_config.num_layers == 1


def test_a_teacher_with_another_vocabulary_is_refused(float_workdir,
                                                      data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.model.vocab_size = 300
  config.distill.teacher = float_workdir
  with pytest.raises(UsageError, match='same vocabulary'):
    loop.train_and_evaluate(config, str(tmp_path))
