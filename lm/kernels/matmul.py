"""Matrix products laid out the way XLA:CPU runs them fastest.

`dense`: x @ kernel for the dense layers, with a faster weight gradient.
The weight gradient is x^T dy: both operands contract over their leading
(token) axis, a "tn" product XLA:CPU runs slower than transposing x first
and multiplying the plain way. Its simplifier folds a transpose it can see
back into the product, so the transpose goes behind
`jax.lax.optimization_barrier`. When x is wider than the output (the MLP's
down projection) x is usually elementwise work (the GELU) that XLA would
recompute inside the transposing copy, so that product stays "tn".

`tied_logits`: logits against a [V, D] table (a tied output layer). A
decoding step multiplies a few rows by the whole table, and XLA:CPU streams
a [D, V] operand faster than the [V, D] table read transposed; the copy is
loop-invariant, so XLA hoists it out of the decoding loop. The decoding
loops (lm/infer/) trace their step inside `decoding_loop()`, which is how
this layer knows; a prefill, which would pay for the copy once, does not.

Elsewhere (GPU, TPU) the products are the plain ones. docs/performance.md
has the measurements.
"""

import contextlib

import jax
import jax.numpy as jnp

from lm.kernels import platform

_loops: list[bool] = []


@contextlib.contextmanager
def decoding_loop():
  """Products traced inside are a decoding loop's step: one token per row,
  against weights every step reuses."""
  _loops.append(True)
  try:
    yield
  finally:
    _loops.pop()


def dense(x, kernel, out_dtype=None):
  """x [..., in] @ kernel [in, out]; `out_dtype` (float32 for logits)
  accumulates and returns in that dtype whatever the operands'."""
  if out_dtype is not None and out_dtype != x.dtype:
    return jnp.matmul(x, kernel, preferred_element_type=out_dtype)
  if platform.current() != 'cpu':
    return x @ kernel
  return _transposed_weight_gradient(x, kernel)


@jax.custom_vjp
def _transposed_weight_gradient(x, kernel):
  return x @ kernel


def _forward(x, kernel):
  return x @ kernel, (x, kernel)


def _backward(residuals, d_y):
  x, kernel = residuals
  x_TI = x.reshape(-1, x.shape[-1])
  d_y_TO = d_y.reshape(-1, d_y.shape[-1])
  if x_TI.shape[1] > d_y_TO.shape[1]:
    d_kernel = jax.lax.dot_general(x_TI, d_y_TO, (((0,), (0,)), ((), ())))
  else:
    d_kernel = jax.lax.optimization_barrier(x_TI.T) @ d_y_TO
  return d_y @ kernel.T, d_kernel.astype(kernel.dtype)


_transposed_weight_gradient.defvjp(_forward, _backward)


def tied_logits(x_BLD, table_VD):
  """x [B, L, D] against every row of table [V, D] -> float32 [B, L, V].

  A decoding loop's step multiplies by a [D, V] copy of the table on a
  CPU, made once, before the loop.
  """
  if _loops and x_BLD.shape[1] == 1 and platform.current() == 'cpu':
    table_DV = jax.lax.optimization_barrier(table_VD.T)
    return jnp.einsum('bld,dv->blv', x_BLD, table_DV,
                      preferred_element_type=jnp.float32)
  return jnp.einsum('bld,vd->blv', x_BLD, table_VD,
                    preferred_element_type=jnp.float32)
