"""Sparse mixture-of-experts feed-forward layer (Shazeer et al., 2017;
GShard, Lepikhin et al., 2020; Switch Transformer, Fedus et al., 2021).

Each token's router picks its top `experts_per_token` of `num_experts`
feed-forward networks and mixes their outputs by the renormalized router
probabilities. Every expert takes at most `capacity` tokens of each
sequence, capacity = ceil(k * length * capacity_factor / num_experts);
first choices are served before second choices, and a token an expert has
no room for skips it (its residual carries it on). Dispatch and combine are
one-hot einsums, so the whole layer is dense matmuls that shard: the
experts' weights over the 'expert' logical axis, their hidden units over
'mlp'.

Two auxiliary losses keep the router healthy, sown into the 'aux'
collection for the train step to add: the load-balancing loss
num_experts * sum_e(fraction of assignments to e * mean probability of e),
which is 1 when routing is uniform, and the router z-loss, the mean squared
log-sum-exp of the router logits (ST-MoE, Zoph et al., 2022). The fraction
of assignments each expert got is sown as 'expert_load'.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.model import layers

Dtype = Any


class MoeMlp(nn.Module):
  """A drop-in for `layers.Mlp` with `num_experts` experts."""

  num_experts: int
  experts_per_token: int
  capacity_factor: float
  d_ff: int
  activation: str = 'gelu'
  gated: bool = False
  init_std: float = 0.02
  out_init_std: float = 0.02
  aux_loss_weight: float = 0.01
  z_loss_weight: float = 0.001
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def capacity(self, length: int) -> int:
    return max(1, math.ceil(self.experts_per_token * length
                            * self.capacity_factor / self.num_experts))

  @nn.compact
  def __call__(self, x_BLD, deterministic: bool = True):
    del deterministic  # No dropout inside the experts.
    _, length, d_model = x_BLD.shape
    experts, k = self.num_experts, self.experts_per_token
    capacity = self.capacity(length)

    # The router runs in float32: its softmax and top-k decide the routing.
    router = self.param('router', layers.logical(
        nn.initializers.normal(self.init_std), ('embed', 'expert')),
                        (d_model, experts), self.param_dtype)
    logits_BLE = jnp.einsum('bld,de->ble', x_BLD.astype(jnp.float32),
                            router.astype(jnp.float32))
    probs_BLE = jax.nn.softmax(logits_BLE, axis=-1)
    gates_BLK, chosen_BLK = jax.lax.top_k(probs_BLE, k)
    gates_BLK /= jnp.sum(gates_BLK, axis=-1, keepdims=True)

    # Slots: choice rank major, so all first choices come before seconds.
    chosen_BKLE = jax.nn.one_hot(jnp.swapaxes(chosen_BLK, 1, 2), experts,
                                 dtype=jnp.int32)
    flat_BTE = chosen_BKLE.reshape(chosen_BKLE.shape[0], k * length, experts)
    slot_BTE = (jnp.cumsum(flat_BTE, axis=1) - 1) * flat_BTE
    kept_BTE = flat_BTE * (slot_BTE < capacity)
    dispatch_BKLEC = (jax.nn.one_hot(slot_BTE, capacity, dtype=self.dtype)
                      * kept_BTE[..., None].astype(self.dtype)).reshape(
                          chosen_BKLE.shape + (capacity,))
    combine_BLEC = jnp.einsum('bkl,bklec->blec',
                              jnp.swapaxes(gates_BLK, 1, 2).astype(
                                  self.dtype), dispatch_BKLEC)
    dispatch_BLEC = jnp.sum(dispatch_BKLEC, axis=1)

    def expert_param(name, shape, axes, std):
      return self.param(name, layers.logical(nn.initializers.normal(std),
                                             axes),
                        (experts,) + shape, self.param_dtype).astype(
                            self.dtype)

    inputs_EBCD = jnp.einsum('blec,bld->ebcd', dispatch_BLEC,
                             x_BLD.astype(self.dtype))
    inputs_EBCD = nn.with_logical_constraint(
        inputs_EBCD, ('expert', 'batch', 'capacity', 'embed'))
    act = layers.ACTIVATIONS[self.activation]
    wi = expert_param('wi', (d_model, self.d_ff), ('expert', 'embed', 'mlp'),
                      self.init_std)
    h_EBCF = act(jnp.einsum('ebcd,edf->ebcf', inputs_EBCD, wi))
    if self.gated:
      wi_1 = expert_param('wi_1', (d_model, self.d_ff),
                          ('expert', 'embed', 'mlp'), self.init_std)
      h_EBCF *= jnp.einsum('ebcd,edf->ebcf', inputs_EBCD, wi_1)
    h_EBCF = nn.with_logical_constraint(
        h_EBCF, ('expert', 'batch', 'capacity', 'mlp'))
    wo = expert_param('wo', (self.d_ff, d_model), ('expert', 'mlp', 'embed'),
                      self.out_init_std)
    out_EBCD = jnp.einsum('ebcf,efd->ebcd', h_EBCF, wo)
    y_BLD = jnp.einsum('blec,ebcd->bld', combine_BLEC, out_EBCD)

    # Fraction of (token, choice) assignments per expert, before capacity.
    load_E = jnp.mean(jnp.sum(chosen_BKLE, axis=1), axis=(0, 1)) / k
    balance = experts * jnp.sum(load_E * jnp.mean(probs_BLE, axis=(0, 1)))
    z_loss = jnp.mean(jax.nn.logsumexp(logits_BLE, axis=-1) ** 2)
    self.sow('aux', 'router_loss',
             self.aux_loss_weight * balance + self.z_loss_weight * z_loss)
    self.sow('aux', 'expert_load', load_E)
    return y_BLD
