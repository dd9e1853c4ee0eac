"""Attention: which kernel computes it on which platform, and the KV-cache
read of decoding.

`attend` is softmax(q k^T * scale + bias, masked) v for a whole sequence.
`model.attention` names the kernel:
  auto          the fastest one that serves the call on this platform:
                cuDNN's fused kernel on a GPU (else the Pallas one), the
                Pallas flash kernel on a TPU, query blocks on a CPU
  xla           jax.nn.dot_product_attention through XLA (the [L, S] scores
                in memory)
  cudnn         cuDNN's fused kernel (GPU)
  pallas        flash attention in Pallas: the Triton kernel on a GPU, the
                Mosaic kernel on a TPU
  blockwise     blocks of queries and keys with an online softmax, memory
                linear in the length, any platform (blockwise_attention.py)
  query_blocks  causal self-attention in query blocks that read only the
                keys up to their own end, with a backward pass laid out for
                XLA:CPU (causal_attention.py)
A kernel that cannot serve a call (its platform, dtype, shapes, bias or
masks) falls back to the next choice, and `choose` says why in one line.
Masks are of keys: causal (when `positions` are None, i.e. 0, 1, 2, ... in
every row, a kernel may rely on it) and `key_mask_BS` (padding), which the
fused kernels take as segment ids.

`cached` is a decoding step's queries against a whole KV cache, in the
cache's [B, K, H, S] layout (XLA on every platform: one query reads the
cache once). `probabilities` gives the weights the model applies, for
attention maps. N query heads share K key/value heads (GQA).
"""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lm import sharding
from lm.kernels import blockwise_attention
from lm.kernels import causal_attention
from lm.kernels import platform
from lm.kernels import scores

KINDS = ('auto', 'xla', 'cudnn', 'pallas', 'blockwise', 'query_blocks')
# The Pallas kernels' default tile: longer sequences must be multiples of it.
_PALLAS_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class Call:
  """What decides whether a kernel can serve one attention call."""

  dtype: str  # of q, e.g. 'bfloat16'
  head_dim: int
  query_len: int
  key_len: int
  causal: bool
  ordered: bool  # positions 0, 1, 2, ... in every row (self-attention)
  bias: bool  # an additive score bias (T5's relative positions)
  key_mask: bool  # padding of keys


def choose(kind: str, call: Call, on: str | None = None
           ) -> tuple[str, str | None]:
  """(kernel, note): the kernel `kind` names where it serves `call` on
  platform `on` (default: the current one), else the platform's best that
  does, and then a line saying why; note is None when `kind` runs."""
  on = on or platform.current()
  if kind not in KINDS:
    raise ValueError(f'attention kernel {kind!r} is not one of {KINDS}')
  if kind != 'auto':
    problem = _cannot_serve(kind, call, on)
    if problem is None:
      return kind, None
    chosen, _ = choose('auto', call, on)
    return chosen, (f"attention kernel '{kind}' cannot serve this model on "
                    f'{on} ({problem}); running {chosen!r}')
  for candidate in _PREFERENCE[on]:
    if _cannot_serve(candidate, call, on) is None:
      return candidate, None
  return 'xla', None


# What `recording` collects: (kernel, note) of each call of `attend` traced
# while it is open.
_recorders: list[list[tuple[str, str | None]]] = []


@contextlib.contextmanager
def recording():
  """Collects (kernel, note) of each attention call traced inside, as
  `choose` decided it: what a model's layers run, asked of the layers
  themselves (trace the model with jax.eval_shape inside)."""
  calls = []
  _recorders.append(calls)
  try:
    yield calls
  finally:
    _recorders.pop()


_PREFERENCE = {'gpu': ('cudnn', 'pallas'), 'tpu': ('pallas',),
               'cpu': ('query_blocks',)}


def _cannot_serve(kind: str, call: Call, on: str) -> str | None:
  """Why `kind` cannot compute `call` on `on`, or None if it can."""
  if kind in ('xla', 'blockwise'):
    return None
  if kind == 'query_blocks':
    if not (call.causal and call.ordered):
      return 'it computes causal self-attention over positions 0, 1, 2, ...'
    return None
  if kind == 'cudnn':
    if on != 'gpu':
      return 'cuDNN runs on NVIDIA GPUs'
    if call.dtype not in ('bfloat16', 'float16'):
      return f'cuDNN takes bfloat16 or float16, not {call.dtype}'
    if call.head_dim % 8 or call.head_dim > 128:
      return ('cuDNN takes head widths of multiples of 8 up to 128, not '
              f'{call.head_dim}')
    if call.causal and not call.ordered:
      return 'its causal mask needs positions 0, 1, 2, ...'
    return None
  # pallas
  if on == 'cpu':
    return 'Pallas kernels run on GPUs and TPUs'
  if call.causal and not call.ordered:
    return 'its causal mask needs positions 0, 1, 2, ...'
  for name, length in (('query', call.query_len), ('key', call.key_len)):
    if length > _PALLAS_BLOCK and length % _PALLAS_BLOCK:
      return (f'the {name} length {length} is not a multiple of '
              f'{_PALLAS_BLOCK}')
  if on == 'gpu':
    if call.bias:
      return 'the Triton kernel adds no score bias'
    if call.key_mask and call.query_len != call.key_len:
      return 'the Triton kernel masks keys only in self-attention'
  elif call.query_len % _PALLAS_BLOCK or call.key_len % _PALLAS_BLOCK:
    return (f'the TPU kernel tiles lengths in multiples of {_PALLAS_BLOCK}, '
            f'not {call.query_len} and {call.key_len}')
  return None


def attend(q_BLNH, k_BSKH, v_BSKH, q_positions_BL=None, k_positions_BS=None,
           *, causal: bool, key_mask_BS=None, bias_BNLS=None,
           scale: float | None = None, kind: str = 'auto', block: int = 512):
  """Attention of every query to the keys it may see: those `key_mask_BS`
  allows and, if `causal`, those at positions up to the query's. Positions
  None mean 0, 1, 2, ... in every row (queries and keys one sequence)."""
  ordered = q_positions_BL is None and k_positions_BS is None
  call = Call(dtype=jnp.dtype(q_BLNH.dtype).name, head_dim=q_BLNH.shape[-1],
              query_len=q_BLNH.shape[1], key_len=k_BSKH.shape[1],
              causal=causal, ordered=ordered, bias=bias_BNLS is not None,
              key_mask=key_mask_BS is not None)
  chosen, note = choose(kind, call)
  if _recorders:
    _recorders[-1].append((chosen, note))
  scale = scores.default_scale(q_BLNH.shape[-1], scale)
  if chosen == 'cudnn':
    return jax.nn.dot_product_attention(
        q_BLNH, k_BSKH, v_BSKH, bias=bias_BNLS, scale=scale,
        is_causal=causal, implementation='cudnn',
        key_value_seq_lengths=(None if key_mask_BS is None else
                               jnp.sum(key_mask_BS, axis=-1, dtype=jnp.int32)))
  if chosen == 'pallas':
    return _pallas(q_BLNH, k_BSKH, v_BSKH, causal, key_mask_BS, bias_BNLS,
                   scale)
  q_positions_BL, k_positions_BS = _positions(q_BLNH, k_BSKH, q_positions_BL,
                                              k_positions_BS)
  if chosen == 'blockwise':
    return blockwise_attention.blockwise_attention(
        q_BLNH, k_BSKH, v_BSKH, q_positions_BL, k_positions_BS,
        causal=causal, mask_BLS=_query_mask(key_mask_BS, q_BLNH.shape[1]),
        bias_BNLS=bias_BNLS, scale=scale, block=block)
  allowed_BLS = allowed(q_positions_BL, k_positions_BS, causal, key_mask_BS)
  if chosen == 'query_blocks':
    return causal_attention.causal_attention(q_BLNH, k_BSKH, v_BSKH,
                                             bias_BNLS, allowed_BLS, scale)
  return jax.nn.dot_product_attention(
      q_BLNH, k_BSKH, v_BSKH, bias=bias_BNLS,
      mask=None if allowed_BLS is None else allowed_BLS[:, None],
      scale=scale, implementation='xla')


def _pallas(q_BLNH, k_BSKH, v_BSKH, causal, key_mask_BS, bias_BNLS, scale):
  """Pallas flash attention: the Triton kernel on a GPU, Mosaic on a TPU.
  Both take as many key/value heads as query heads. Under a mesh each
  device runs the kernel on its own rows and heads (a shard_map): XLA
  cannot split a kernel's custom call, and would gather its inputs."""
  groups = q_BLNH.shape[2] // k_BSKH.shape[2]
  k_BSNH = jnp.repeat(k_BSKH, groups, axis=2)
  v_BSNH = jnp.repeat(v_BSKH, groups, axis=2)
  kernel = functools.partial(_pallas_kernel, causal=causal, scale=scale)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q_BLNH, k_BSNH, v_BSNH, key_mask_BS, bias_BNLS)
  heads = sharding.spec_for(('batch', 'length', 'heads', 'head_dim'),
                            q_BLNH.shape, mesh)
  rows = P(heads[0], None)
  scores_spec = P(heads[0], heads[2], None, None)
  return jax.shard_map(
      kernel, mesh=mesh,
      in_specs=(heads, heads, heads,
                None if key_mask_BS is None else rows,
                None if bias_BNLS is None else scores_spec),
      out_specs=heads, check_vma=False)(q_BLNH, k_BSNH, v_BSNH, key_mask_BS,
                                        bias_BNLS)


def _pallas_kernel(q_BLNH, k_BSNH, v_BSNH, key_mask_BS, bias_BNLS, *, causal,
                   scale):
  if platform.current() == 'gpu':
    from jax.experimental.pallas.ops.gpu import attention as triton  # pylint: disable=g-import-not-at-top
    segment_ids = (None if key_mask_BS is None
                   else key_mask_BS.astype(jnp.int32))
    return triton.mha(q_BLNH, k_BSNH, v_BSNH, segment_ids, sm_scale=scale,
                      causal=causal)
  from jax.experimental.pallas.ops.tpu import flash_attention as mosaic  # pylint: disable=g-import-not-at-top
  to_heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  segment_ids = None
  if key_mask_BS is not None:
    segment_ids = mosaic.SegmentIds(
        q=jnp.ones(q_BLNH.shape[:2], jnp.int32),
        kv=key_mask_BS.astype(jnp.int32))
  out_BNLH = mosaic.flash_attention(
      to_heads_first(q_BLNH), to_heads_first(k_BSNH), to_heads_first(v_BSNH),
      ab=bias_BNLS, segment_ids=segment_ids, causal=causal, sm_scale=scale)
  return to_heads_first(out_BNLH)


def _positions(q_BLNH, k_BSKH, q_positions_BL, k_positions_BS):
  """Positions 0, 1, 2, ... where they are None."""
  if q_positions_BL is None:
    q_positions_BL = jnp.broadcast_to(jnp.arange(q_BLNH.shape[1]),
                                      q_BLNH.shape[:2])
  if k_positions_BS is None:
    k_positions_BS = jnp.broadcast_to(jnp.arange(k_BSKH.shape[1]),
                                      k_BSKH.shape[:2])
  return q_positions_BL, k_positions_BS


def _query_mask(key_mask_BS, query_len: int):
  """[B, L, S]: the key mask, the same for every query."""
  if key_mask_BS is None:
    return None
  return jnp.broadcast_to(key_mask_BS[:, None, :].astype(bool),
                          (key_mask_BS.shape[0], query_len,
                           key_mask_BS.shape[1]))


def allowed(q_positions_BL, k_positions_BS, causal: bool, key_mask_BS=None):
  """[B, L, S]: which keys each query may see (None: all of them)."""
  allowed_BLS = None
  if causal:
    allowed_BLS = k_positions_BS[:, None, :] <= q_positions_BL[:, :, None]
  if key_mask_BS is not None:
    keys_B1S = key_mask_BS[:, None, :].astype(bool)
    allowed_BLS = (_query_mask(key_mask_BS, q_positions_BL.shape[1])
                   if allowed_BLS is None else allowed_BLS & keys_B1S)
  return allowed_BLS


def cached(q_BLNH, keys_BKHS, values_BKHS, allowed_BLS, bias_BNLS=None,
           scale: float | None = None):
  """This step's queries against every key in the cache, [B, L, N, H]."""
  batch, length, heads, width = q_BLNH.shape
  kv_heads = keys_BKHS.shape[1]
  q_BLKGH = q_BLNH.reshape(batch, length, kv_heads, heads // kv_heads, width)
  scores_BKGLS = jnp.einsum(
      'blkgh,bkhs->bkgls', q_BLKGH, keys_BKHS,
      preferred_element_type=jnp.float32) * scores.default_scale(width, scale)
  if bias_BNLS is not None:
    scores_BKGLS += bias_BNLS.reshape(scores_BKGLS.shape).astype(jnp.float32)
  probs_BKGLS = scores.masked_softmax(
      scores_BKGLS, None if allowed_BLS is None else allowed_BLS[:, None, None])
  out_BLKGH = jnp.einsum('bkgls,bkhs->blkgh',
                         probs_BKGLS.astype(values_BKHS.dtype), values_BKHS)
  return out_BLKGH.reshape(q_BLNH.shape).astype(q_BLNH.dtype)


def probabilities(q_BLNH, k_BSKH, bias_BNLS, allowed_BLS,
                  scale: float | None = None):
  """[B, N, L, S] softmax weights of `attend` (which never holds them)."""
  heads, kv_heads = q_BLNH.shape[2], k_BSKH.shape[2]
  k_BSNH = jnp.repeat(k_BSKH, heads // kv_heads, axis=2)
  scores_BNLS = jnp.einsum(
      'blnh,bsnh->bnls', q_BLNH, k_BSNH,
      preferred_element_type=jnp.float32) * scores.default_scale(
          q_BLNH.shape[-1], scale)
  if bias_BNLS is not None:
    scores_BNLS += bias_BNLS.astype(jnp.float32)
  return scores.masked_softmax(
      scores_BNLS, None if allowed_BLS is None else allowed_BLS[:, None])
