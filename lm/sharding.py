"""The device mesh and where every array lives on it.

This is the only file that names mesh axes. The model names the axes of its
parameters and large activations logically ('embed', 'mlp', 'heads', ...);
`RULES` maps those names to the four mesh axes:

  data    batch rows (data parallelism)
  fsdp    batch rows too, and the 'embed' axis of every parameter and its
          optimizer state (ZeRO-3 / fully sharded data parallelism)
  tensor  Megatron-style tensor parallelism: attention heads and the MLP's
          hidden units are split, so the first matmul of each pair is
          column-parallel and the second row-parallel; the vocabulary too
  expert  mixture-of-experts experts (lm/model/moe.py); other layers use it as
          one more batch axis

Any combination works: `mesh.shape=(2, 2, 2, 1)` is data x fsdp x tensor x
expert, and one -1 takes the devices the others leave. A parameter axis that
a mesh axis does not divide (4 KV heads on 8 tensor devices, say) stays
whole rather than failing: small models run on big meshes.
"""

import contextlib
import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lm import sections
from lm.errors import UsageError

AXES = ('data', 'fsdp', 'tensor', 'expert')
# Mesh axes that split the batch, in the order rows are laid out.
BATCH_AXES = ('data', 'fsdp', 'expert')

# Logical axis -> mesh axes. Rules are applied in this order, each to the
# array dimension of that name if its mesh axes are still free: a name
# listed twice takes its second entry when the first's mesh axes are
# already taken (the batch inside an expert's buffer, for one), and
# 'embed' stays whole in activations, whose batch took 'fsdp'.
RULES = (
    ('expert', 'expert'),
    ('batch', BATCH_AXES),
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('vocab', 'tensor'),
    ('length', None),
    ('head_dim', None),
    ('position', None),
    ('token_types', None),
    ('buckets', None),
    ('classes', None),
    ('layers', None),
    ('capacity', None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig(sections.Section):
  """Devices as a data x fsdp x tensor x expert mesh; -1 takes the devices
  the other axes leave, so the default is data parallelism over every
  device."""

  NAME = 'mesh'
  shape: tuple[int, ...] = (-1, 1, 1, 1)

  def validate(self) -> None:
    check_mesh_shape(self.shape)


def check_mesh_shape(shape: Sequence[int]) -> tuple[int, ...]:
  """`shape` padded to four sizes, after checking its form (whatever the
  devices: see mesh_shape)."""
  shape = tuple(int(s) for s in shape)
  if not 1 <= len(shape) <= len(AXES):
    raise UsageError(f'mesh.shape={shape} needs 1 to {len(AXES)} sizes for '
                     f'the axes {AXES}')
  shape += (1,) * (len(AXES) - len(shape))
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise UsageError(f'mesh.shape={shape}: sizes must be positive, with at '
                     'most one -1 (the devices the others leave)')
  return shape


def mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, ...]:
  """`shape` (up to four sizes, one may be -1) resolved for the devices.

  A mesh may use fewer devices than there are (a single-device run on a
  multi-device host), if its size divides their number.
  """
  shape = check_mesh_shape(shape)
  known = math.prod(s for s in shape if s != -1)
  if device_count % known:
    raise UsageError(
        f'mesh.shape={shape} uses {known} devices, which does not divide '
        f'the {device_count} devices there are; make the product of its '
        f'sizes divide {device_count}')
  return tuple(device_count // known if s == -1 else s for s in shape)


def make_mesh(shape: Sequence[int], devices: Sequence[Any] | None = None
              ) -> jax.sharding.Mesh:
  """A mesh over the first `devices` (default: jax.devices(), across
  processes; all of them unless the shape asks for fewer); Auto axes,
  which Linen's logical partitioning needs. Devices of a topology compiled
  for ahead of time (lm/kernels/tpu_compiler.py) serve as well."""
  devices = list(jax.devices() if devices is None else devices)
  resolved = mesh_shape(shape, len(devices))
  size = math.prod(resolved)
  if size < len(devices) and jax.process_count() > 1:
    raise UsageError(
        f'mesh.shape={resolved} uses {size} of the {len(devices)} devices of '
        f'{jax.process_count()} processes; a multi-process mesh must use '
        'them all (put -1 on one axis)')
  return jax.make_mesh(resolved, AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                       devices=devices[:size])


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
  """How many ways the batch is split: the product of the batch axes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch_size: int, mesh: jax.sharding.Mesh, what: str,
                process_count: int = 1) -> None:
  divisor = math.lcm(batch_divisor(mesh), process_count)
  if batch_size % divisor:
    sizes = ' x '.join(f'{a}={mesh.shape[a]}' for a in BATCH_AXES)
    raise UsageError(
        f'{what}={batch_size} is not divisible by {divisor}, the number of '
        f'ways the batch is split ({sizes}'
        + (f', {process_count} processes' if process_count > 1 else '')
        + f'); use a multiple of {divisor}')


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Rows over the batch axes, everything else whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(boxed_tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """A NamedSharding for every leaf of a tree of (abstract) arrays whose
  leaves may be `nn.Partitioned` boxes; unboxed leaves are replicated."""

  def leaf(x):
    if isinstance(x, nn.Partitioned):
      if not jax.tree.leaves(x.value):  # optax's MaskedNode: no array
        return x.value
      return NamedSharding(mesh, spec_for(x.names, x.value.shape, mesh))
    return replicated(mesh)

  return jax.tree.map(leaf, boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def spec_for(names: Sequence[str | None], shape: Sequence[int],
             mesh: jax.sharding.Mesh) -> P:
  """The PartitionSpec of an array with these logical axis names; an axis
  the mesh axes do not divide is left whole."""
  axes = nn.logical_to_mesh_axes(tuple(names), RULES)
  spec = []
  for size, mesh_axes in zip(shape, axes):
    if mesh_axes is not None:
      group = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
      if size % math.prod(mesh.shape[a] for a in group):
        mesh_axes = None
    spec.append(mesh_axes)
  return P(*spec)


@contextlib.contextmanager
def activation_rules(mesh: jax.sharding.Mesh):
  """While tracing: the mesh and rules that turn the model's
  `nn.with_logical_constraint` calls into sharding constraints.

  Only for applying a model to plain parameters: under a mesh, Linen's
  `init` constrains each boxed parameter as it is made, which fails for
  some layouts (flax issue 3676); init through jit's out_shardings.
  """
  # An abstract mesh (devices unnamed) traces a program to lower for
  # another platform.
  use_mesh = (jax.sharding.use_abstract_mesh
              if isinstance(mesh, jax.sharding.AbstractMesh) else jax.set_mesh)
  with use_mesh(mesh), nn.logical_axis_rules(RULES):
    yield


def with_rules(jitted_fn, mesh: jax.sharding.Mesh):
  """A jitted function called (and so traced) under `activation_rules`.

  The mesh is set around the call, not inside the traced function:
  `jax.set_mesh` is not allowed under `jax.jit`.
  """

  def wrapped(*args, **kwargs):
    with activation_rules(mesh):
      return jitted_fn(*args, **kwargs)

  return wrapped


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding
              ) -> dict[str, jax.Array]:
  """One global array per key from this process's rows of the batch.

  Each process holds a contiguous block of rows (lm/data/pipeline.py),
  in process order, which is how the batch axes lay rows over devices.
  """
  count = jax.process_count()
  return {k: jax.make_array_from_process_local_data(
      sharding, v, (v.shape[0] * count,) + v.shape[1:])
          for k, v in batch.items()}


def describe(mesh: jax.sharding.Mesh) -> str:
  return ' x '.join(f'{a}={mesh.shape[a]}' for a in AXES) + (
      f' ({mesh.devices.size} of {jax.device_count()} '
      f'{jax.devices()[0].platform} devices, {jax.process_count()} '
      f'process{"es" if jax.process_count() > 1 else ""})')
