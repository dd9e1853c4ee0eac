"""Matrix products laid out the way XLA:CPU runs them fastest.

`dense`: x @ kernel for the dense layers, with a fast weight gradient.
The weight gradient is x^T dy: both operands contract over their leading
(token) axis. XLA:CPU runs that product as it stands ("tn" layout), slower
than transposing x first and multiplying the plain way; its algebraic
simplifier folds a transpose it can see back into the product, so the
transpose goes behind `jax.lax.optimization_barrier`. Timed alone on this
machine (AMD EPYC, AVX-512), x^T dy at bench-gpt's shapes [tokens, in] x
[tokens, out]: 2048x384x384 1.846 -> 1.497 ms, 2048x384x1536 5.736 -> 5.25,
2048x1536x384 6.919 -> 5.572, 2048x384x8192 33.69 -> 27.74 (medians of 30).

That holds when x is a plain array. Inside a train step x is often the output
of elementwise work that XLA recomputes inside the transposing copy instead of
keeping it, and such a loop does not vectorize: for the MLP's down projection
x is the GELU, and its transpose took ~24 ms a layer at bench-gpt where a plain
copy of the same [2048, 1536] array takes 0.55 ms. So when x is wider than the
output (the down projection) the product stays "tn": one in-process A/B of
bench-gpt's train step, 24 alternating steps, 0.5861 -> 0.5433 s; transposing
d_y instead (the narrower operand) gave 0.5470 s, and "tn" for every layer
0.5515 s (20 steps, against 0.5388 s).

`tied_logits`: logits against a [V, D] table (a tied output layer). When
decoding, a few rows (one token per sequence) meet the whole table, and
XLA:CPU streams a [D, V] operand faster than the [V, D] table read
transposed: bench-gpt's 8 x 384 x 8192 product, four tables alternated 40
times, 0.74 -> 0.48 ms a table. So decoding multiplies by a [D, V] copy
behind the barrier; the copy is loop-invariant, and XLA hoists it out of
the decoding loop, making it once per generate call. In-process A/B of
bench-gpt's generate call, 30 alternating calls under the benchmark's
allocator: 0.4090 -> 0.3943 s.

Elsewhere (GPU, TPU) the products are the plain ones.
"""

import jax
import jax.numpy as jnp


def dense(x, kernel):
  """x [..., in] @ kernel [in, out]."""
  if jax.default_backend() != 'cpu':
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


def tied_logits(x_BLD, table_VD, *, decoding_step: bool = False):
  """x [B, L, D] against every row of table [V, D] -> [B, L, V];
  `decoding_step`: one token per row, in a loop that reuses the table."""
  if decoding_step and jax.default_backend() == 'cpu':
    table_DV = jax.lax.optimization_barrier(table_VD.T)
    return jnp.einsum('bld,dv->blv', x_BLD, table_DV)
  return jnp.einsum('bld,vd->blv', x_BLD, table_VD)
