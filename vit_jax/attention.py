"""Which attention kernel runs, decided from static facts, and how it is called.

`jax.nn.dot_product_attention(implementation='cudnn')` (cuDNN flash
attention) refuses some shapes, and some of its refusals only surface late:
JAX checks a differentiated call when it builds the backward pass, which
under `jax.checkpoint` (`model.remat`) or `lax.scan` (gradient accumulation)
is after any try/except at the call site has returned. So the choice is made
up front, by `plan_attention`, from facts known before tracing: backend,
compute dtype, head dimension, token count, and whether the call is
differentiated. CPU tests run it with a GPU's facts (tests/test_attention.py).

The rules (JAX 0.10-0.12, `check_is_flash_attention` in
jax/_src/cudnn/fused_attention_stablehlo.py):
  * 16-bit compute only (float16, bfloat16);
  * head_dim a multiple of 8 and at most 128 (256 from Hopper on; 128 is the
    bound that holds on every GPU);
  * differentiated calls with a bias need even query and key lengths, and
    JAX always passes a bias (a zero-size one when the caller gives none), so
    every training call with an odd token count (197 for ViT-B/16 at 224px)
    is refused.
A cuDNN plan therefore pads the tokens to a multiple of 8 (197 -> 200) and
masks the padding with `query_seq_lengths` / `key_value_seq_lengths`. The
lengths are passed even when nothing is padded: on Hopper, cuDNN's backward
pass without a padding mask is known to produce non-finite gradients when
the key length is 64 modulo 128 (NVIDIA/cudnn-frontend #628), exactly the
64-token from-scratch model.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'cudnn', 'explicit')
KERNELS = ('cudnn', 'xla', 'explicit')
CUDNN_DTYPES = ('float16', 'bfloat16')
CUDNN_MAX_HEAD_DIM = 128
CUDNN_LENGTH_MULTIPLE = 8  # Even (JAX's rule) and aligned for tensor cores.


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
  """The kernel for one attention shape, and why it was chosen."""
  kernel: str  # One of KERNELS.
  length: int  # Tokens of the model.
  padded_length: int  # Tokens the kernel sees; the extra ones are masked.
  reason: str

  @property
  def masked(self) -> bool:
    """Whether sequence lengths (a padding mask) are passed to the kernel."""
    return self.kernel == 'cudnn' or self.padded_length != self.length

  def describe(self) -> str:
    pad = (f', padded {self.length} -> {self.padded_length} tokens and masked'
           if self.padded_length != self.length else '')
    return f'attention kernel {self.kernel!r}{pad}: {self.reason}'


def round_up(length: int, multiple: int) -> int:
  return -(-length // multiple) * multiple


def cudnn_refusal(dtype: Any, head_dim: int, length: int,
                  training: bool) -> Optional[str]:
  """Why JAX's cuDNN attention would refuse this shape; None if it accepts.

  `length` is the token count the kernel sees (after any padding).
  """
  name = jnp.dtype(dtype).name
  if name not in CUDNN_DTYPES:
    return (f'cuDNN flash attention computes in float16 or bfloat16 only, '
            f'not {name}')
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return (f'cuDNN flash attention needs head_dim a multiple of 8 and at '
            f'most {CUDNN_MAX_HEAD_DIM}, got {head_dim}')
  if training and length % 2:
    return (f'cuDNN flash attention refuses an odd sequence length ({length}) '
            'in a differentiated call')
  return None


def plan_attention(impl: str, *, backend: str, dtype: Any, head_dim: int,
                   length: int, training: bool, needs_weights: bool = False,
                   probe: Optional[Callable[..., bool]] = None
                   ) -> AttentionPlan:
  """The kernel for `impl` ('auto' or a kernel name) on a given shape.

  needs_weights: the caller needs the attention matrix itself (attention
    dropout, attention maps); only the explicit form materialises it.
  probe: on a real GPU, `cudnn_compiles`; it catches what the rules miss
    (a cuDNN build that refuses a shape) and makes 'auto' fall back to XLA.
  """
  if impl not in IMPLS:
    raise ValueError(f'attention_impl must be one of {IMPLS}, got {impl!r}.')
  plan = functools.partial(AttentionPlan, length=length, padded_length=length)
  if needs_weights:
    return plan('explicit', reason='the attention weights themselves are '
                'needed (attention dropout or attention maps)')
  if impl in ('xla', 'explicit'):
    return plan(impl, reason='asked for')
  padded = round_up(length, CUDNN_LENGTH_MULTIPLE)
  refusal = cudnn_refusal(dtype, head_dim, padded, training)
  if impl == 'cudnn':
    _check_cudnn_request(backend, refusal)
    return plan('cudnn', padded_length=padded, reason='asked for')
  if backend == 'cpu':
    return plan('explicit', reason='on CPU, batch- and head-major matmuls '
                'run fastest')
  if backend != 'gpu':
    return plan('xla', reason=f'XLA fuses attention on {backend}')
  if refusal:
    return plan('xla', reason=refusal)
  if probe is not None and not probe(dtype=jnp.dtype(dtype).name,
                                     head_dim=head_dim, length=padded,
                                     training=training):
    return plan('xla', reason=f'cuDNN failed to compile attention over '
                f'{padded} tokens (head_dim {head_dim}) on this GPU')
  return plan('cudnn', padded_length=padded,
              reason='cuDNN flash attention on GPU with 16-bit compute')


def _check_cudnn_request(backend: str, refusal: Optional[str]):
  """'cudnn' asked for explicitly: refuse early with the way out."""
  if backend != 'gpu':
    raise ValueError(
        f"attention_impl='cudnn' needs a GPU; this backend is {backend}. Use "
        "attention_impl='auto' (picks the best kernel that runs here) or "
        "'xla'.")
  if refusal:
    raise ValueError(
        f"attention_impl='cudnn' cannot run this model: {refusal}. Use "
        "attention_impl='auto' (falls back to XLA's attention for such "
        "shapes) or 'xla', or change the model (dtype=bfloat16, a head "
        "dimension that is a multiple of 8).")


@functools.lru_cache(maxsize=None)
def cudnn_compiles(*, dtype: str, head_dim: int, length: int,
                   training: bool) -> bool:
  """Whether cuDNN attention compiles on this GPU for one head of one image.

  Compiled once per shape and process. Only meaningful on a GPU.
  """
  shape = jax.ShapeDtypeStruct((1, length, 1, head_dim), jnp.dtype(dtype))
  lengths = jax.ShapeDtypeStruct((1,), jnp.int32)

  def attend(q, k, v, seq_lengths):
    return jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=seq_lengths,
        key_value_seq_lengths=seq_lengths, implementation='cudnn')

  fn = attend
  if training:
    fn = jax.grad(lambda *args: attend(*args).astype(jnp.float32).sum(),
                  argnums=(0, 1, 2))
  try:
    jax.jit(fn).lower(shape, shape, shape, lengths).compile()
  except Exception:  # pylint: disable=broad-except
    return False  # Any refusal, from JAX's checks or from cuDNN itself.
  return True


def probe_on(backend: str) -> Optional[Callable[..., bool]]:
  """The compile probe for `plan_attention` when this process runs on
  `backend`: only a real GPU can be probed."""
  return cudnn_compiles if backend == 'gpu' else None


def attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, plan: AttentionPlan) -> jax.Array:
  """softmax(QK^T/sqrt(K))V through `jax.nn.dot_product_attention`.

  With a masked plan, the tokens are zero-padded to `plan.padded_length` and
  the padding is excluded through sequence lengths, so the result (and its
  gradient) is that of the unpadded call; the padded rows are dropped.
  """
  if plan.kernel == 'explicit':
    raise ValueError('attend() runs the fused kernels; the explicit form '
                     'lives in the attention module.')
  if not plan.masked:
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK,
                                        implementation=plan.kernel)
  batch, length = q_BxLxHxK.shape[:2]
  if length != plan.length:
    raise ValueError(f'the plan is for {plan.length} tokens, got {length}.')
  pad = ((0, 0), (0, plan.padded_length - length), (0, 0), (0, 0))
  q, k, v = (jnp.pad(x, pad) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  lengths_B = jnp.full((batch,), length, jnp.int32)
  out = jax.nn.dot_product_attention(
      q, k, v, query_seq_lengths=lengths_B, key_value_seq_lengths=lengths_B,
      implementation=plan.kernel)
  return out[:, :length]
