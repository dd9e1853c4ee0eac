"""Knowledge distillation (Hinton et al., 2015) from a teacher workdir.

`config.distill.teacher` names any workdir (trained here or imported) whose
model has the student's vocabulary. Each train step runs the teacher on the
batch and the student learns from
  (1 - alpha) * cross-entropy(hard labels)
  + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
per target token (T^2 keeps the soft term's gradients on the scale of the
hard one's as T grows).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import restore
from lm import sections
from lm.errors import UsageError
from lm.model import registry
from lm.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Distill:
  """What train_step needs (static): the teacher model and the weights."""

  teacher: nn.Module
  temperature: float
  alpha: float


@dataclasses.dataclass(frozen=True)
class DistillConfig(sections.Section):
  """Distillation: a teacher workdir with the student's vocabulary ('':
  none); loss (1 - alpha) * hard + alpha * T^2 * KL at temperature T."""

  NAME = 'distill'
  teacher: str = ''
  temperature: float = 2.0
  alpha: float = 0.5

  def validate(self) -> None:
    """Raises UsageError naming the key and the fix."""
    if self.temperature <= 0 or not 0 <= self.alpha <= 1:
      raise UsageError(f'distill.temperature must be > 0 and distill.alpha '
                       f'in [0, 1]; got {self.temperature} and {self.alpha}')


def load_teacher(distill_config, student: ModelConfig
                 ) -> tuple[Distill, Any]:
  """(Distill, teacher params) from config.distill; checks the vocabulary."""
  c = distill_config
  restored = restore.workdir(c.teacher)
  teacher = restored.model_config
  if teacher.vocab_size != student.vocab_size or (
      teacher.num_classes != student.num_classes):
    raise UsageError(
        f'the teacher in {c.teacher} predicts '
        f'{teacher.num_classes or teacher.vocab_size} outputs, the student '
        f'{student.num_classes or student.vocab_size}; '
        'distillation needs the same vocabulary (or classes)')
  if teacher.family != student.family:
    raise UsageError(f'the teacher in {c.teacher} is a {teacher.family} '
                     f'model, the student a {student.family} one')
  return (Distill(registry.build_model(teacher), float(c.temperature),
                  float(c.alpha)), restored.params)


def soft_loss_sum(student_logits, teacher_logits, weights, temperature):
  """sum over weighted targets of T^2 * KL(teacher_T || student_T)."""
  t = temperature
  teacher_logp = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t)
  student_logp = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), -1)
  return t * t * jnp.sum(kl * weights)
